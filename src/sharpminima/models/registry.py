"""Registry of the paper's networks: ``build("f1")`` and friends."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from sharpminima.errors import ConfigError
from sharpminima.models.networks import MLP, DeepConv, ResNet18, ShallowConv


@dataclass(frozen=True)
class NetSpec:
    """A named network of the paper.

    Attributes:
        name: Registry name (``"f1"``...).
        dataset: The dataset the paper trains it on.
        input_shape: Input shape on that dataset.
        num_classes: Classes on that dataset.
        description: One line for tables and reports.
        factory: ``factory(input_shape, num_classes) -> nn.Module``.
        needs_image: Whether it only takes image inputs ``(C, H, W)``.
    """

    name: str
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    description: str
    factory: Callable[[tuple[int, ...], int], nn.Module]
    needs_image: bool = False


def _mlp(depth: int) -> Callable[[tuple[int, ...], int], nn.Module]:
    return lambda shape, classes: MLP(math.prod(shape), classes, depth=depth)


def _resnet(width: int, batch_norm: bool) -> Callable[[tuple[int, ...], int], nn.Module]:
    return lambda shape, classes: ResNet18(shape, classes, width=width, batch_norm=batch_norm)


NETS: dict[str, NetSpec] = {
    s.name: s
    for s in [
        NetSpec("f1", "mnist", (1, 28, 28), 10, "5 x [FC 512, BN, ReLU], MNIST", _mlp(5)),
        NetSpec("f2", "timit", (360,), 1973, "7 x [FC 512, BN, ReLU], TIMIT", _mlp(7)),
        NetSpec("c1", "cifar10", (3, 32, 32), 10, "shallow conv (AlexNet-like), CIFAR-10", ShallowConv, True),
        NetSpec("c2", "cifar10", (3, 32, 32), 10, "deep conv (VGG-16-like), CIFAR-10", DeepConv, True),
        NetSpec(
            "c3", "cifar100", (3, 32, 32), 100, "shallow conv (AlexNet-like), CIFAR-100", ShallowConv, True
        ),
        NetSpec("c4", "cifar100", (3, 32, 32), 100, "deep conv (VGG-16-like), CIFAR-100", DeepConv, True),
        NetSpec("resnet18", "cifar10", (3, 32, 32), 10, "ResNet-18 (3x3 stem, BN), CIFAR-10",
                _resnet(64, True), True),
        NetSpec("resnet18-nobn", "cifar10", (3, 32, 32), 10,
                "ResNet-18 without BatchNorm (zero-init residual gates), CIFAR-10", _resnet(64, False), True),
        NetSpec("resnet18-w16", "cifar10", (3, 32, 32), 10, "ResNet-18 at width 16 (BN), CIFAR-10",
                _resnet(16, True), True),
        NetSpec("resnet18-nobn-w16", "cifar10", (3, 32, 32), 10,
                "ResNet-18 at width 16 without BatchNorm, CIFAR-10", _resnet(16, False), True),
    ]
}


def build(
    name: str,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Build a network by name, for the paper's dataset or any other input shape.

    Args:
        name: ``f1``, ``f2``, ``c1``, ``c2``, ``c3``, ``c4``, ``resnet18``,
            ``resnet18-nobn``, ``resnet18-w16``, ``resnet18-nobn-w16`` (case-insensitive), or
            ``"module:function"`` naming a user factory called as
            ``function(input_shape, num_classes)``.
        input_shape: Input shape without the batch dimension; defaults to the paper's
            dataset (e.g. ``(1, 28, 28)`` to run a conv net on MNIST as a stand-in).
        num_classes: Number of classes; defaults to the paper's dataset.

    Returns:
        A freshly initialised ``nn.Module`` (PyTorch default initialisation, drawn from the
        global RNG: call ``torch.manual_seed`` first for reproducible weights).

    Raises:
        ConfigError: For an unknown name, a factory that cannot be imported, or an image
            network given a non-image input shape.
    """
    key = name.lower()
    if ":" in name:
        return _build_user(name, input_shape, num_classes)
    if key not in NETS:
        raise ConfigError(
            f"unknown network {name!r}; choose one of {', '.join(NETS)} or give module:function"
        )
    spec = NETS[key]
    shape = tuple(input_shape) if input_shape is not None else spec.input_shape
    classes = num_classes if num_classes is not None else spec.num_classes
    if spec.needs_image and len(shape) != 3:
        raise ConfigError(f"network {key} needs image inputs (C, H, W), got input shape {shape}")
    return spec.factory(shape, classes)


def _build_user(name: str, input_shape: tuple[int, ...] | None, num_classes: int | None) -> nn.Module:
    from sharpminima.factories import call_factory

    return call_factory(name, "network factory", lambda m: isinstance(m, nn.Module), "a torch.nn.Module",
                        input_shape, num_classes)


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def has_batchnorm(model: nn.Module) -> bool:
    """Return whether the model contains any BatchNorm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
