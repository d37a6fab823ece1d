"""Initialisation helpers shared by the frozen-weight methods (weights never train).

The 2022 paper's code (github N0ciple/ASLP, `layer_modules.py` and `strategies/*/
layer_functions.py`) builds every layer with Kaiming-normal (fan_in, ReLU) weights, optionally
replaced by the signed constant sign(w) * std(layer); its Linear layers are re-initialised after
the signed constant is set, so only convolutions keep it (scope "conv"). Every layer also carries
a bias drawn uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) that is never trained.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from prunebench.training.masking import prunable_layers, stored_weight

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def in_scope(layer: nn.Module, scope: str) -> bool:
    """Whether the signed constant applies to `layer` under `scope` ("all" or "conv")."""
    return scope == "all" or isinstance(layer, nn.Conv2d)


@torch.no_grad()
def reinitialise(model: nn.Module, init: str, seed: int, scope: str = "all") -> None:
    """Fresh Kaiming-normal weights for every prunable layer, drawn on the CPU from `seed` (the
    same frozen weights on any device); `signed_constant` then sets sign(w) * std(layer) on the
    layers in `scope`."""
    gen = torch.Generator().manual_seed(seed)
    for _, layer in prunable_layers(model):
        w = stored_weight(layer)
        fresh = torch.empty(w.shape, dtype=torch.float32)
        nn.init.kaiming_normal_(fresh, mode="fan_in", nonlinearity="relu", generator=gen)
        if init == "signed_constant" and in_scope(layer, scope):
            fresh = torch.sign(fresh) * fresh.std()
        w.copy_(fresh.to(w.device, w.dtype))


@torch.no_grad()
def reset_norm_affine(model: nn.Module) -> None:
    """Normalisation layers' affine parameters to (1, 0), where a frozen network keeps them."""
    for module in model.modules():
        if isinstance(module, NORM_TYPES) and getattr(module, "weight", None) is not None:
            module.weight.fill_(1.0)
            if module.bias is not None:
                module.bias.zero_()


@torch.no_grad()
def add_frozen_biases(model: nn.Module, seed: int) -> None:
    """Give every prunable layer a bias uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) (ASLP's random,
    never-trained biases), replacing any it had. Create before parametrizations are attached."""
    gen = torch.Generator().manual_seed(seed + 7_919)
    for _, layer in prunable_layers(model):
        w = stored_weight(layer)
        bound = 1.0 / math.sqrt(w[0].numel())
        bias = torch.empty(w.shape[0]).uniform_(-bound, bound, generator=gen)
        layer.bias = nn.Parameter(bias.to(w.device, w.dtype))
