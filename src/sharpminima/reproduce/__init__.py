"""The paper's experiments end to end: ``reproduce(preset, store=..., out=...)``."""

from sharpminima.reproduce.experiments import EXPERIMENTS
from sharpminima.reproduce.presets import PAPER, PRESETS, QUICK, Preset, get_preset
from sharpminima.reproduce.runner import reproduce, resolve_experiments

__all__ = [
    "EXPERIMENTS",
    "PAPER",
    "PRESETS",
    "QUICK",
    "Preset",
    "get_preset",
    "reproduce",
    "resolve_experiments",
]
