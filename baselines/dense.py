"""`dense`: no pruning, the same recipe as every method (the accuracy ceiling)."""
from __future__ import annotations

from prunebench.training.method import MethodHparams, PruningMethod
from prunebench.training.registry import register_method


@register_method("dense")
class Dense(PruningMethod):
    """Plain training of every parameter; the engine's defaults are exactly this."""

    hparams_cls = MethodHparams
    budgeted = False
    paper = "control: unpruned network"
