"""Data augmentation of training batches, on the training device, without torchvision.

The paper's Appendix E augments the conv nets' images with random horizontal flips,
rotations of up to 10 degrees and translations of up to 0.2 of the image size. Here that is
``augment="paper"``; each sample of a batch ``x`` of shape ``(B, C, H, W)`` gets, drawn
independently,

* a horizontal flip with probability ``flip`` (0.5), done exactly by reversing the width
  axis;
* a rotation by ``a ~ U[-rotate, rotate]`` degrees (``rotate`` = 10) about the centre and a
  shift by ``(s_x W, s_y H)`` with ``s_x, s_y ~ U[-translate, translate]``
  (``translate`` = 0.2), resampled bilinearly by ``F.affine_grid``/``F.grid_sample``.
  In ``affine_grid``'s normalised coordinates ``u = 2 p / (W, H)`` the map from output to
  input points is ``u_in = D^-1 R(a) D u_out + 2 s`` with ``D = diag(W, H)``, so rotations
  are true rotations on non-square images too. Points that fall outside the image take the
  nearest border pixel (``fill="border"``, Keras' default ``'nearest'``) or zero
  (``fill="zeros"``).

``strength`` (1.0) multiplies ``flip``, ``rotate`` and ``translate`` at once, for sweeps;
at strength 0 (or all three 0) the batch is returned unchanged, bit for bit. Resampling
is a convex combination of input pixels (or zero), so values stay within
``[min(x, 0), max(x)]`` and labels are untouched.

The random draws come from a CPU generator seeded per epoch (:meth:`Augment.for_epoch`),
a fixed number per sample, so the augmented batches of an epoch are a pure function of
``(seed, epoch)`` and a resumed run sees exactly the batches of an uninterrupted one.
Only image data (``(C, H, W)`` samples) can be augmented.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from sharpminima.errors import ConfigError

BatchFn = Callable[[Tensor], Tensor]

#: Augmentations by name, with their options and defaults.
AUGMENTS: dict[str, dict[str, Any]] = {
    "none": {},
    "paper": {"flip": 0.5, "rotate": 10.0, "translate": 0.2, "strength": 1.0, "fill": "border"},
}


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass(frozen=True)
class Augment:
    """Random flips, rotations and translations of image batches (see module docstring).

    Attributes:
        flip: Probability of a horizontal flip.
        rotate: Largest rotation in degrees.
        translate: Largest shift as a fraction of the image side.
        fill: ``"border"`` or ``"zeros"``: what points outside the image take.
    """

    flip: float = 0.0
    rotate: float = 0.0
    translate: float = 0.0
    fill: str = "border"

    @property
    def is_identity(self) -> bool:
        """Whether this augmentation leaves every batch unchanged."""
        return self.flip == 0 and self.rotate == 0 and self.translate == 0

    def for_epoch(self, seed: int) -> BatchFn:
        """Return the function that augments the batches of one epoch, in order.

        Args:
            seed: The epoch's seed (e.g. a function of the run seed and the epoch).
        """
        if self.is_identity:
            return _identity
        gen = torch.Generator().manual_seed((int(seed) * 2_654_435_761 + 97) % (2**63 - 1))
        return lambda x: self.apply(x, gen)

    def apply(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Augment a batch ``x`` of shape ``(B, C, H, W)`` with draws from ``gen``.

        Draws ``4 B`` uniform numbers from ``gen`` (flip, angle, two shifts per sample)
        whatever the options, so the stream does not depend on them.

        Raises:
            ConfigError: If ``x`` is not a 4-D image batch.
        """
        if x.dim() != 4:
            raise ConfigError(f"augmentation needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
        if self.is_identity:
            return x
        b, _, h, w = x.shape
        u = torch.rand(b, 4, generator=gen, dtype=torch.float64)  # (B, 4) on CPU
        flips = (u[:, 0] < self.flip).to(x.device)
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)  # (B, C, H, W)
        if self.rotate == 0 and self.translate == 0:
            return x
        angle = (2 * u[:, 1] - 1) * math.radians(self.rotate)
        shift = (2 * u[:, 2:] - 1) * self.translate  # (B, 2) fractions of (W, H)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([cos, -sin * h / w, 2 * shift[:, 0]], dim=1),
                torch.stack([sin * w / h, cos, 2 * shift[:, 1]], dim=1),
            ],
            dim=1,
        ).to(device=x.device, dtype=x.dtype)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.fill, align_corners=False)


def make_augment(name: str, args: tuple[tuple[str, Any], ...], input_shape: tuple[int, ...]) -> Augment:
    """Build the augmentation ``name`` with options ``args`` for samples of ``input_shape``.

    Args:
        name: ``"none"`` or ``"paper"`` (see :data:`AUGMENTS`).
        args: ``(option, value)`` pairs overriding the defaults.
        input_shape: One sample's shape; must be ``(C, H, W)`` unless ``name == "none"``.

    Raises:
        ConfigError: For an unknown name or option, an option out of range, or non-image data.
    """
    if name not in AUGMENTS:
        raise ConfigError(f"unknown augmentation {name!r}; choose one of {', '.join(sorted(AUGMENTS))}")
    opts = {**AUGMENTS[name], **dict(args)}
    unknown = sorted(set(opts) - set(AUGMENTS[name]))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} for augmentation {name!r}; it takes {sorted(AUGMENTS[name])}"
        )
    if name == "none":
        return Augment()
    if len(input_shape) != 3:
        raise ConfigError(
            f"augmentation {name!r} needs image data (C, H, W), got samples of shape {tuple(input_shape)}"
        )
    for key in ("flip", "rotate", "translate", "strength"):
        value = opts[key]
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            raise ConfigError(f"augmentation option {key!r} must be a number >= 0, got {value!r}")
    if opts["fill"] not in ("border", "zeros"):
        raise ConfigError(f"augmentation option 'fill' must be 'border' or 'zeros', got {opts['fill']!r}")
    s = float(opts["strength"])
    if opts["flip"] * s > 1:
        raise ConfigError(f"augmentation flip probability {opts['flip'] * s} exceeds 1")
    return Augment(opts["flip"] * s, opts["rotate"] * s, opts["translate"] * s, opts["fill"])
