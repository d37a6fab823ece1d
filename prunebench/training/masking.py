"""Prunable-set selection, exact top-K masks, weight parametrizations and density accounting.

Every method sees the same prunable set: the `weight` of every Conv2d and Linear (first and last
layer included unless the run's `exclude_layers` leaves them dense), never biases or
normalisation parameters. Grouped and depthwise convolutions, attention projections (timm's
qkv/proj Linear), patch embeddings and classifier heads are Conv2d/Linear like any other. A
method changes how a layer's
effective weight is computed by attaching a parametrization (torch.nn.utils.parametrize);
`fold` bakes the final effective weights into plain tensors so no mask arithmetic is left at
inference.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)
# Attribute of a model naming the Conv2d/Linear layers left out of the prunable set.
EXCLUDED = "prunebench_excluded"
EXCLUDE_CHOICES = {"none": (), "first": ("first",), "last": ("last",),
                   "first_last": ("first", "last")}


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear, in registration order, excluded ones too."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear the run prunes, in registration order."""
    excluded = getattr(model, EXCLUDED, ())
    return [(n, m) for n, m in weight_layers(model) if n not in excluded]


@torch.no_grad()
def forward_order(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """Names of the Conv2d/Linear layers in the order one eval-mode forward pass of a zero
    image of `input_shape` (C, H, W) first calls them."""
    order: list[str] = []
    hooks = [layer.register_forward_hook(lambda *_a, name=name: order.append(name))
             for name, layer in weight_layers(model)]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(dict.fromkeys(order))


def exclude_layers(model: nn.Module, which: str, input_shape: tuple[int, int, int]
                   ) -> list[str]:
    """Leave the first and/or last Conv2d/Linear the input passes through (`which`: none,
    first, last, first_last) dense: out of `prunable_layers`, for every method. Their names."""
    if which not in EXCLUDE_CHOICES:
        raise ValueError(f"exclude_layers={which!r}; allowed: {', '.join(EXCLUDE_CHOICES)}")
    ends = EXCLUDE_CHOICES[which]
    order = forward_order(model, input_shape) if ends else []
    names = list(dict.fromkeys(([order[0]] if "first" in ends else [])
                               + ([order[-1]] if "last" in ends else [])))
    setattr(model, EXCLUDED, tuple(names))
    return names


def stored_weight(layer: nn.Module) -> torch.Tensor:
    """The raw weight tensor a layer stores (under a parametrization, its `original`)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def weight_transform(layer: nn.Module) -> nn.Module | None:
    """The parametrization attached to a layer's weight, or None."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight[0]
    return None


def budget_count(total: int, sparsity: float) -> int:
    """K = round((1 - sparsity) * N): how many prunable weights a budget keeps."""
    return int(round((1.0 - sparsity) * total))


def num_prunable(model: nn.Module) -> int:
    return sum(stored_weight(m).numel() for _, m in prunable_layers(model))


def _top_indices(flat: torch.Tensor, k: int) -> torch.Tensor:
    # A stable descending sort puts equal scores in index order: ties break deterministically.
    order = torch.sort(flat, descending=True, stable=True).indices
    return order[:k]


def global_topk_masks(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Boolean masks keeping exactly the `k` highest scores over all tensors together."""
    total = sum(s.numel() for s in scores)
    if not 0 <= k <= total:
        raise ValueError(f"cannot keep {k} of {total} weights")
    flat = torch.cat([s.detach().flatten().float() for s in scores])
    keep = torch.zeros(total, dtype=torch.bool, device=flat.device)
    keep[_top_indices(flat, k)] = True
    masks, start = [], 0
    for s in scores:
        masks.append(keep[start : start + s.numel()].view_as(s))
        start += s.numel()
    return masks


def topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask keeping exactly the `k` highest entries of one tensor."""
    return global_topk_masks([score], k)[0]


def layer_budgets(numels: list[int], k: int) -> list[int]:
    """Split a global budget over layers in proportion to their size, summing exactly to k
    (largest-remainder rounding, ties to the earlier layer)."""
    total = sum(numels)
    shares = [k * n / total for n in numels]
    counts = [int(s) for s in shares]
    order = sorted(range(len(numels)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[: k - sum(counts)]:
        counts[i] += 1
    return counts


class FixedMask(nn.Module):
    """Effective weight = weight * mask, with the mask a buffer (all ones until set)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def set_mask(self, mask: torch.Tensor, stored: torch.Tensor) -> None:
        """Install `mask` and zero the stored weights it removes (they stay zero after folding)."""
        self.mask.copy_(mask)
        with torch.no_grad():
            stored.mul_(mask)


def attach(model: nn.Module, factory: Callable[[str, nn.Module], nn.Module]) -> None:
    """Register `factory(name, layer)` as the weight parametrization of every prunable layer."""
    for name, layer in prunable_layers(model):
        parametrize.register_parametrization(layer, "weight", factory(name, layer), unsafe=True)


def attach_fixed_masks(model: nn.Module) -> list[FixedMask]:
    """Attach an all-ones FixedMask to every prunable layer and return them in layer order."""
    attach(model, lambda _name, layer: FixedMask(layer.weight))
    return [weight_transform(layer) for _, layer in prunable_layers(model)]


def apply_global_topk(model: nn.Module, scores: list[torch.Tensor], k: int,
                      rescale: bool = False) -> list[float]:
    """Set every layer's FixedMask to the global top-k of `scores` (one tensor per layer).

    With `rescale`, each layer's surviving weights are multiplied by ||w|| / ||w * mask||, so the
    layer keeps its weight norm (and the scale of the signal it passes on); an emptied layer keeps
    factor 1. Returns the factor of every layer (all 1.0 without `rescale`)."""
    layers = prunable_layers(model)
    factors = []
    for (_, layer), mask in zip(layers, global_topk_masks(scores, k), strict=True):
        stored = stored_weight(layer)
        before = float(stored.detach().double().norm())
        weight_transform(layer).set_mask(mask, stored)
        after = float(stored.detach().double().norm())
        factor = before / after if rescale and after > 0 else 1.0
        if factor != 1.0:
            with torch.no_grad():
                stored.mul_(factor)
        factors.append(factor)
    return factors


@torch.no_grad()
def fold(model: nn.Module) -> None:
    """Replace every parametrized weight by its current effective value (in eval mode)."""
    was_training = model.training
    model.eval()
    for _, layer in prunable_layers(model):
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    model.train(was_training)


@torch.no_grad()
def layer_densities(model: nn.Module) -> list[dict[str, float | int | str | bool]]:
    """Per Conv2d/Linear layer: name, shape, size, non-zero count and density of its effective
    weight, and whether it is prunable (False: left dense by `exclude_layers`)."""
    rows = []
    prunable = {name for name, _ in prunable_layers(model)}
    for name, layer in weight_layers(model):
        w = layer.weight
        nonzero = int(torch.count_nonzero(w))
        rows.append({
            "layer": name,
            "kind": type(layer).__name__,
            "shape": "x".join(str(s) for s in w.shape),
            "numel": w.numel(),
            "nonzero": nonzero,
            "density": nonzero / w.numel(),
            "prunable": name in prunable,
        })
    return rows
