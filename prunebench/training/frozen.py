"""Initialisation helpers shared by the frozen-weight methods (weights never train).

The 2022 paper's code (github N0ciple/ASLP, `layer_modules.py` and `strategies/*/
layer_functions.py`) builds every layer with Kaiming-normal (fan_in, ReLU) weights, optionally
replaced by the signed constant sign(w) * std(layer); its Linear layers are re-initialised after
the signed constant is set, so only convolutions keep it (scope "conv"). Every layer also carries
a bias drawn uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) that is never trained.

Frozen networks keep every normalisation layer's affine at (1, 0) and every layer scale (timm's
`gamma`, 1e-6 at init in ConvNeXt) at 1: a frozen residual branch scaled by 1e-6 passes no
signal, as a zero-initialised last BatchNorm scale would. `keep_weights` (an option of every
frozen-weight method) skips all of this and learns the mask over the network as built or loaded
(`init_from`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from prunebench.training.masking import prunable_layers, stored_weight

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
KEEP_WEIGHTS_HELP = ("learn the mask over the network's own weights (init_from's, or its "
                     "architecture's init), norms included, instead of re-drawing them")


def is_norm(module: nn.Module) -> bool:
    """torch's normalisation layers and timm's own (RmsNorm, SimpleNorm, ..., by class name)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm2d"))


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
    """Normalisation layers' affine parameters to (1, 0) and layer scales (parameters named
    `gamma*`: timm's LayerScale, ConvNeXt blocks) to 1, where a frozen network keeps them."""
    for module in model.modules():
        if is_norm(module) and isinstance(getattr(module, "weight", None), torch.Tensor):
            module.weight.fill_(1.0)
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.zero_()
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1].startswith("gamma"):
            param.fill_(1.0)


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
