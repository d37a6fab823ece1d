"""`random`: a uniformly random global mask at initialisation keeping exactly K weights, then
the masked network is trained with the mask fixed (the usual prune-at-init control).

Option `rescale` (off by default, like the other prune-at-init baselines) keeps each layer's
weight norm at pruning time (see masking.apply_global_topk); without it a random mask of density
d shrinks each layer's output by about sqrt(d), and on the BatchNorm-free conv nets the logits
start near 0 and SGD barely moves them. Measured on digits conv4 (20 epochs, lr 0.01, seed 0):
random 80 % / 90 % 10.0 / 10.0 % without, 98.9 / 97.8 % with it; magnitude_init 90 % 96.1 -> 98.6;
snip 90 % 98.3 -> 23.1 (its mask already carries the signal; rescaling then blows it up).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunebench.training.masking import (
    apply_global_topk,
    attach_fixed_masks,
    budget_count,
    prunable_layers,
    stored_weight,
)
from prunebench.training.method import MethodHparams, PruningMethod, option
from prunebench.training.registry import register_method


@dataclass
class RandomHparams(MethodHparams):
    rescale: bool = option(False, "no rescaling, as the prune-at-init papers' random controls")


@register_method("random")
class RandomMask(PruningMethod):
    """Scores are i.i.d. uniform, so the global top-K is a uniformly random K-subset."""

    hparams_cls = RandomHparams
    paper = "control: random mask at init"

    def prepare(self, model: nn.Module) -> None:
        attach_fixed_masks(model)
        gen = torch.Generator().manual_seed(self.ctx.seed)
        scores = [torch.rand(stored_weight(layer).shape, generator=gen).to(self.ctx.device)
                  for _, layer in prunable_layers(model)]
        total = sum(s.numel() for s in scores)
        self.rescale_factors = apply_global_topk(
            model, scores, budget_count(total, self.ctx.sparsity), self.hp.rescale)

    def extract(self, model: nn.Module) -> dict[str, Any]:
        return {"rescale_factors": ";".join(f"{f:.4g}" for f in self.rescale_factors)}
