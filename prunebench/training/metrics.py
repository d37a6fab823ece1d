"""Accuracy, parameter and FLOP counting."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunebench.training.masking import weight_layers


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
             amp: bool, cached: bool = True) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy over `batches`, in eval mode.

    Counts stay on the device (one host sync at the end, not per batch) and every parametrized
    weight is computed once for the whole pass (`parametrize.cached`), not once per batch;
    `cached=False` recomputes it per batch (masks sampled at every forward pass)."""
    model.eval()
    correct1 = correct5 = loss_sum = None
    total = 0
    with parametrize.cached() if cached else contextlib.nullcontext():
        for x, y in batches:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            out = out.float()
            hits = out.topk(min(5, out.shape[1]), dim=1).indices == y[:, None]
            batch = (nn.functional.cross_entropy(out, y, reduction="sum").double(),
                     hits[:, 0].sum(), hits.any(dim=1).sum())
            if loss_sum is None:
                loss_sum, correct1, correct5 = batch
            else:
                loss_sum, correct1, correct5 = (loss_sum + batch[0], correct1 + batch[1],
                                                correct5 + batch[2])
            total += len(y)
    if total == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan")}
    loss, c1, c5 = torch.stack([loss_sum, correct1.double(), correct5.double()]).tolist()
    return {"top1": 100.0 * c1 / total, "top5": 100.0 * c5 / total, "loss": loss / total}


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) over every parameter and buffer-free tensor of the model."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p))
    return total, nonzero


@torch.no_grad()
def layer_macs(model: nn.Module, input_shape: tuple[int, int, int], device: torch.device
               ) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d/Linear (prunable or left dense) for one input of
    `input_shape` (C, H, W): weights times the output positions each is applied at (a grouped
    convolution's weight holds only its in_channels / groups, a Linear over tokens counts each
    token). Other operations (attention's products, norms, pooling) are not counted."""
    macs: dict[str, int] = {}
    hooks = []
    for name, layer in weight_layers(model):
        def hook(mod, _inp, out, name=name):
            positions = out[0].numel() // out.shape[1 if isinstance(mod, nn.Conv2d) else -1]
            macs[name] = macs.get(name, 0) + int(positions * mod.weight.numel())
        hooks.append(layer.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs
