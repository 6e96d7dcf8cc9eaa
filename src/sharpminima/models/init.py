"""Weight initialisation schemes for the initialisation study (``config.init``).

:func:`initialize` re-draws, in module order from the global RNG (so the weights follow
``torch.manual_seed``), the weight ``W`` of every ``nn.Linear`` and ``nn.Conv{1,2,3}d``,
with ``fan_in = in_features`` (or ``in_channels / groups * kernel area``) and ``fan_out``
likewise, and multiplies it by ``scale``:

* ``default``: PyTorch's own initialisation, left as built, times ``scale`` (biases and
  BatchNorm untouched; at ``scale = 1`` nothing happens at all);
* ``kaiming``: ``W ~ N(0, 2 / fan_in)`` (He et al. 2015; normal, fan-in, ReLU gain);
* ``xavier``: ``W ~ N(0, 2 / (fan_in + fan_out))`` (Glorot and Bengio 2010);
* ``orthogonal``: ``W`` reshaped to ``(fan_out_rows, rest)`` has orthonormal rows (or
  columns, whichever are fewer) times ``scale``, so ``W W^T = scale^2 I`` for square and
  wide matrices (Saxe et al. 2014).

For the three non-default schemes biases are set to 0, and every BatchNorm layer gets
weight 1 and bias 0. Other parameters (e.g. a residual branch's scalar gate) are left
alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sharpminima.errors import ConfigError

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _scaled(fill: Callable[[Tensor], object]) -> Callable[[Tensor, float], None]:
    def init(weight: Tensor, scale: float) -> None:
        fill(weight)
        weight.mul_(scale)

    return init


#: Scheme name -> ``init(weight, scale)`` (``None``: keep PyTorch's draw).
INITS: dict[str, Callable[[Tensor, float], None] | None] = {
    "default": None,
    "kaiming": _scaled(lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")),
    "xavier": _scaled(nn.init.xavier_normal_),
    "orthogonal": lambda w, scale: nn.init.orthogonal_(w, gain=scale),
}


@torch.no_grad()
def initialize(model: nn.Module, scheme: str = "default", scale: float = 1.0) -> nn.Module:
    """Re-initialise ``model`` in place by ``scheme``, weights times ``scale``; return it.

    Args:
        model: The freshly built network.
        scheme: A name in :data:`INITS`.
        scale: Factor on every linear and conv weight (``> 0``).

    Returns:
        ``model`` itself.

    Raises:
        ConfigError: For an unknown scheme or a scale that is not positive.
    """
    if scheme not in INITS:
        raise ConfigError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INITS)}")
    if not scale > 0:
        raise ConfigError(f"init scale must be positive, got {scale}")
    fill = INITS[scheme]
    for module in model.modules():
        if isinstance(module, _LAYERS):
            if fill is None:
                if scale != 1.0:
                    module.weight.mul_(scale)
                continue
            fill(module.weight, scale)
            if module.bias is not None:
                module.bias.zero_()
        elif fill is not None and isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            module.weight.fill_(1.0)
            module.bias.zero_()
    return model
