"""A finished run's pruned network as files anyone can load without running code: the folded,
extracted model's state_dict in `network.safetensors` (its header says how to rebuild the model
and normalise its input) and the boolean mask of every prunable layer in `masks.safetensors`.
`load_run(run_dir)` gives them back as a timm model."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from prunebench import fileio, paths
from prunebench.errors import PrunebenchError
from prunebench.training.masking import prunable_layers
from prunebench.training.models import TIMM_PREFIX, create_model

FORMAT = "prunebench-network/1"


@dataclass
class SavedRun:
    """A run's network (timm model, eval mode, CPU), its masks and what its input expects."""

    model: nn.Module
    masks: dict[str, torch.Tensor]  # layer name -> bool tensor shaped like the layer's weight
    mean: tuple[float, ...]  # input = (image / 255 - mean) / std, per channel
    std: tuple[float, ...]
    metadata: dict[str, str]  # the network file's header: arch, timm_model, num_classes, ...

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> the float input the network was trained on."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return torch.addcmul(-mean / std, images.float(), 1.0 / (255.0 * std))  # as DeviceData


def save_network(run_dir: Path, model: nn.Module, arch: str, num_classes: int,
                 image_shape: tuple[int, int, int], mean: list[float], std: list[float]) -> None:
    """Write `network.safetensors` and `masks.safetensors` atomically (after `fold`): a mask is
    True where the folded weight is non-zero, the engine's definition of a kept weight."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    masks = {name: (layer.weight.detach() != 0).to("cpu").contiguous()
             for name, layer in prunable_layers(model)}
    metadata = {
        "format": FORMAT,
        "arch": arch,
        "timm_model": TIMM_PREFIX + arch,
        "num_classes": str(num_classes),
        "image_shape": json.dumps(list(image_shape)),
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
    }
    fileio.atomic_write(run_dir / paths.NETWORK, lambda tmp: save_file(state, tmp, metadata))
    fileio.atomic_write(run_dir / paths.MASKS,
                        lambda tmp: save_file(masks, tmp, {"format": FORMAT}))


def load_run(run_dir: str | Path) -> SavedRun:
    """The pruned network of the finished run in `run_dir` as a timm model (eval mode, CPU) with
    its weights, plus its masks and input normalisation."""
    run_dir = Path(run_dir)
    network, masks_path = run_dir / paths.NETWORK, run_dir / paths.MASKS
    if not (run_dir / paths.METRICS).exists() or not network.exists():
        raise PrunebenchError(
            f"{run_dir} holds no saved network ({paths.NETWORK} is written by every run that "
            f"finishes with {paths.METRICS}); finish or rerun the run first")
    try:
        with safe_open(network, framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(network)
        masks = load_file(masks_path)
    except (OSError, SafetensorError) as e:
        raise PrunebenchError(f"cannot read the saved network of {run_dir}: {e}") from None
    if metadata.get("format") != FORMAT:
        raise PrunebenchError(f"{network}: format {metadata.get('format')!r}, expected "
                              f"{FORMAT!r}")
    c, h, _ = json.loads(metadata["image_shape"])
    model = create_model(metadata["arch"], int(metadata["num_classes"]), c, h)
    _add_saved_biases(model, state)
    model.load_state_dict(state, strict=True)
    model.eval()
    return SavedRun(model, masks, tuple(json.loads(metadata["mean"])),
                    tuple(json.loads(metadata["std"])), metadata)


def _add_saved_biases(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give a bias-free prunable layer the bias the run added to it (frozen-bias methods)."""
    for name, layer in prunable_layers(model):
        key = f"{name}.bias"
        if key in state and layer.bias is None:
            layer.bias = nn.Parameter(torch.empty_like(state[key]))
