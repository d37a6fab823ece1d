"""`edgepopup`: find a subnetwork of a frozen random network by learned scores.

Ramanujan, Wortsman, Kembhavi, Farhadi, Rastegari, "What's Hidden in a Randomly Weighted Neural
Network?", CVPR 2020. The weights never train. Every weight has a real score s; the forward pass
uses, in each layer, the weights whose |s| is among the top `density` fraction of that layer
(sec. 3), and the backward pass sends the gradient straight through the top-k to
|s|. The absolute value is taken outside the straight-through function so that autograd applies
sign(s) to the gradient, as in the reference code (`clamped_scores`); taken inside, half the
updates go the wrong way and the network stays at chance (docs/methods/baselines.md#edgepopup).

Defaults are the paper's (sec. 4) and its reference code's conv configs: weights
signed Kaiming constant +-sqrt(2 / fan_in), scores Kaiming uniform (a = sqrt(5)); scores trained by
SGD lr 0.1, momentum 0.9, weight decay 1e-4, cosine schedule. The paper's 100 epochs and batch 128
are train-config settings (schedule, epochs and batch size come from the run's recipe).
Reference code: github allenai/hidden-networks (`utils/conv_type.py` GetSubnet and SubnetConv,
`configs/smallscale/conv*/`); these settings reproduce the `ramanujan2020_edgepopup` rows.

The 2022 paper's edge-popup rows were produced inside ASLP (github N0ciple/ASLP,
`strategies/edge-popup/layer_functions.py`, `main.py`): scores SGD lr 50, momentum 0.9, no
weight decay, constant learning rate (`lr_schedule=constant`), batch 256, up to 1000 epochs with
early stopping (patience 100) and the best-validation checkpoint tested, density 0.5
(`target_sparsity` 0.5). The paper grid runs both recipes as separate variants.

Deviations and decisions:
- A budget `sparsity` s keeps exactly K = round((1 - s) N) weights: per-layer counts from
  masking.layer_budgets (proportional to size, summing exactly to K) instead of the reference
  code's int((1 - k) * numel) removed per layer, which can miss K by a few weights.
- The reference code's `prune_rate` means the kept fraction in the top-k but the removed fraction
  in `scale_fan`; here `density` = 1 - sparsity is the kept fraction everywhere, and option
  `scale_fan` divides the constant by sqrt(density) (std sqrt(2 / (fan_in * density))).
- Biases (if any) stay at their initial values; normalisation affine parameters are set to
  (1, 0) and layer scales to 1 (training/frozen.py; the paper uses non-affine BatchNorm, and the
  suite's own networks start there anyway), and stay frozen; running statistics update as usual.
  `keep_weights` (an extension, off) keeps the network's own weights and norms and no signed
  constant, e.g. those loaded by the run's `init_from`. `frozen_bias` adds ASLP's random,
  never-trained biases; `signed_constant_scope=conv` leaves Linear layers Kaiming normal, as
  ASLP does (its Linear layers are re-initialised after the signed constant is set).
- ASLP's signed constant is sign(w) * std of the Kaiming draw; here it is the exact
  +-sqrt(2 / fan_in) of Ramanujan's code: the same value up to the sampling error of the std.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunebench.training.frozen import (
    KEEP_WEIGHTS_HELP,
    add_frozen_biases,
    in_scope,
    reset_norm_affine,
)
from prunebench.training.masking import (
    attach,
    budget_count,
    layer_budgets,
    prunable_layers,
    stored_weight,
    weight_transform,
)
from prunebench.training.method import MethodHparams, OptimGroup, Phase, PruningMethod, option
from prunebench.training.registry import register_method


@dataclass
class EdgePopupHparams(MethodHparams):
    lr: float = option(0.1, "Ramanujan 2020 reference conv configs: SGD lr 0.1, cosine",
                       bounds="(0, inf)")
    momentum: float = option(0.9, "reference conv configs", bounds="[0, 1)")
    weight_decay: float = option(1e-4, "reference conv configs (applied to the scores)",
                                 bounds="[0, inf)")
    signed_constant: bool = option(
        True, "sec. 4: signed Kaiming constant; False keeps Kaiming normal")
    scale_fan: bool = option(False, "sec. 4 'scaled' variant: constant divided by sqrt(density)")
    signed_constant_scope: str = option(
        "all", "all | conv (ASLP: Linear layers stay Kaiming normal)", choices=('all', 'conv'))
    frozen_bias: bool = option(
        False, "ASLP layer_modules.py: random never-trained bias in every layer")
    keep_weights: bool = option(
        False, "extension: " + KEEP_WEIGHTS_HELP + " (no signed constant)")
    lr_schedule: str = option(
        "run",
        "run: the run's schedule (paper: cosine); ASLP: constant",
        choices=('run', 'constant'))


def fast_topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the `k` largest entries, equal to masking.topk_mask (ties to the lower
    index) but by selection instead of a full sort: it runs at every forward pass."""
    flat = score.detach().flatten()
    if k <= 0 or k >= flat.numel():
        return torch.full_like(score, k > 0, dtype=torch.bool)
    threshold = torch.topk(flat, k, sorted=False).values.min()
    keep = flat > threshold
    # the first (k - kept) ties, counted on the device: no host sync at each forward pass
    ties = flat == threshold
    keep |= ties & (torch.cumsum(ties, 0) <= k - keep.sum())
    return keep.view_as(score)




class _TopKStraightThrough(torch.autograd.Function):
    """Forward: 0/1 mask of the `k` largest entries; backward: the gradient unchanged."""

    @staticmethod
    def forward(ctx, score: torch.Tensor, k: int) -> torch.Tensor:
        return fast_topk_mask(score, k).to(score.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class PopupMask(nn.Module):
    """Effective weight = weight * topk(|score|, k): the top `k` scores of this layer."""

    def __init__(self, weight: torch.Tensor, k: int) -> None:
        super().__init__()
        self.k = k
        self.scores = nn.Parameter(torch.empty_like(weight))
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))

    def mask(self) -> torch.Tensor:
        return _TopKStraightThrough.apply(self.scores.abs(), self.k)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask()


def signed_kaiming_constant(weight: torch.Tensor, density: float = 1.0) -> None:
    """Replace `weight` by sign(weight) * sqrt(2 / (fan_in * density)) in place (+ for zeros)."""
    fan_in = weight[0].numel()
    std = math.sqrt(2.0 / (fan_in * density))
    with torch.no_grad():  # a block, not a decorator: mutmut mutates no decorated function
        weight.copy_(torch.where(weight >= 0, std, -std))


@register_method("edgepopup")
class EdgePopup(PruningMethod):
    """Frozen random weights; per-layer top-k of learned |scores|, straight-through gradient."""

    hparams_cls = EdgePopupHparams
    frozen_weights = True
    paper = "Ramanujan et al., What's hidden in a randomly weighted neural network?, CVPR 2020"

    def redraws_weights(self) -> bool:
        return self.hp.signed_constant and not self.hp.keep_weights

    def prepare(self, model: nn.Module) -> None:
        layers = prunable_layers(model)
        density = 1.0 - self.ctx.sparsity
        numels = [layer.weight.numel() for _, layer in layers]
        counts = layer_budgets(numels, budget_count(sum(numels), self.ctx.sparsity))
        if not self.hp.keep_weights:
            reset_norm_affine(model)
        if self.hp.signed_constant and not self.hp.keep_weights:
            for _, layer in layers:
                if in_scope(layer, self.hp.signed_constant_scope):
                    signed_kaiming_constant(layer.weight, density if self.hp.scale_fan else 1.0)
        if self.hp.frozen_bias:
            add_frozen_biases(model, self.ctx.seed)
        per_layer = dict(zip([name for name, _ in layers], counts, strict=True))
        attach(model, lambda name, layer: PopupMask(layer.weight, per_layer[name]))

    def param_groups(self, model: nn.Module, phase: Phase) -> list[OptimGroup]:
        scores = [weight_transform(layer).scores for _, layer in prunable_layers(model)]
        schedule = None if self.hp.lr_schedule == "run" else self.hp.lr_schedule
        return [OptimGroup(scores, "scores", "sgd", self.hp.lr, self.hp.momentum,
                           self.hp.weight_decay, schedule)]

    def extract(self, model: nn.Module) -> dict[str, Any]:
        layers = prunable_layers(model)
        init = ("network" if self.hp.keep_weights  # no signed constant over kept weights
                else "signed_constant" + ("_scaled" if self.hp.scale_fan else "")
                if self.hp.signed_constant else "kaiming_normal")
        return {"init": init,
                "weights_nonzero": all(bool(stored_weight(layer).ne(0).all())
                                       for _, layer in layers)}
