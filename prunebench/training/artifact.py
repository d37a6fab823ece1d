"""A finished run's pruned network as files anyone can load without running code: the folded,
extracted model's state_dict in `network.safetensors` (its header says how to rebuild the model
and normalise its input) and the boolean mask of every prunable layer in `masks.safetensors`.
`load_run(run_dir)` gives them back as a timm model.

Both files are written byte-for-byte deterministically (the header's keys in one order, so
identical runs write identical files) with the mode of every other output, and `metrics.json`
records their sha256 (`network_sha256`, `masks_sha256`). Loading checks everything before it
is used: the checksums, the header's values (bounded before any allocation), every tensor
against the network it belongs to (keys, shapes, dtypes, finite values) and every mask against
its folded weights. Each error names the file."""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save
from torch import nn

from prunebench import fileio, paths
from prunebench.errors import PrunebenchError
from prunebench.plan.config import ARCH_HELP, arch_problem
from prunebench.training.masking import prunable_layers
from prunebench.training.models import create_model, timm_name

FORMAT = "prunebench-network/1"
# What a header may ask the loader to build, checked before any allocation.
MAX_CLASSES = 100_000
MAX_IMAGE_SIDE = 4096
CHANNELS = (1, 3)
# metrics.json keys holding the sha256 of the two files.
SHA256_KEYS = {paths.NETWORK: "network_sha256", paths.MASKS: "masks_sha256"}


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


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors file of `tensors` with its JSON header in one fixed order (the library
    writes the metadata in hash order, so identical runs would write different bytes)."""
    blob = save(tensors, metadata)
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    tensors_order = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"])
    text = json.dumps({"__metadata__": dict(sorted(meta.items())), **dict(tensors_order)},
                      separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    return struct.pack("<Q", len(text)) + text + blob[8 + n:]


def save_network(run_dir: Path, model: nn.Module, arch: str, num_classes: int,
                 image_shape: tuple[int, int, int], mean: list[float], std: list[float]
                 ) -> dict[str, str]:
    """Write `network.safetensors` and `masks.safetensors` atomically (after `fold`): a mask is
    True where the folded weight is non-zero, the engine's definition of a kept weight. Return
    their sha256 under the metrics.json keys that record them."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    masks = {name: (layer.weight.detach() != 0).to("cpu").contiguous()
             for name, layer in prunable_layers(model)}
    metadata = {
        "format": FORMAT,
        "arch": arch,
        "timm_model": timm_name(arch),
        "num_classes": str(num_classes),
        "image_shape": json.dumps(list(image_shape)),
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
    }
    digests = {}
    for name, blob in ((paths.NETWORK, canonical_safetensors(state, metadata)),
                       (paths.MASKS, canonical_safetensors(masks, {"format": FORMAT}))):
        fileio.atomic_write(run_dir / name, lambda tmp, b=blob: tmp.write_bytes(b))
        digests[SHA256_KEYS[name]] = hashlib.sha256(blob).hexdigest()
    return digests


def read_safetensors(path: Path, expected_sha256: str | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of a safetensors file, read as data only; a file that
    is unreadable, fails `expected_sha256` or holds a non-finite value is refused, naming it."""
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise PrunebenchError(f"{path} cannot be read: {e.strerror or e}") from None
    if expected_sha256 is not None and hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise PrunebenchError(f"{path} fails its sha256 recorded in {paths.METRICS}: it was "
                              "changed or damaged after the run finished")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load(blob)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PrunebenchError(f"{path} is not a readable safetensors file: "
                              f"{' '.join(str(e).split())[:200]}") from None
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PrunebenchError(f"{path}: tensor {key!r} holds NaN or infinite values")
    return tensors, metadata


def check_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """`state` fits `model` exactly: the same keys, and each tensor's shape and dtype."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise PrunebenchError(f"{path} does not fit the network: missing {missing[:5] or 'none'},"
                              f" unexpected {extra[:5] or 'none'}")
    for key, t in state.items():
        if t.shape != own[key].shape or t.dtype != own[key].dtype:
            raise PrunebenchError(
                f"{path}: tensor {key!r} is {t.dtype} {list(t.shape)}, the network's is "
                f"{own[key].dtype} {list(own[key].shape)}")


def _header(metadata: dict[str, str], path: Path) -> tuple[str, int, list[int], list[float],
                                                           list[float]]:
    """arch, num_classes, image_shape, mean, std from a network header, each checked and
    bounded before anything is built from them."""
    def refuse(what: str) -> PrunebenchError:
        return PrunebenchError(f"{path}: header {what}")

    if metadata.get("format") != FORMAT:
        raise refuse(f"format {str(metadata.get('format'))[:40]!r}, expected {FORMAT!r}")
    arch = metadata.get("arch", "")
    if not isinstance(arch, str) or len(arch) > 200 or arch_problem(arch):
        raise refuse(f"arch {str(arch)[:40]!r} is not one of {ARCH_HELP}")
    try:
        num_classes = int(metadata["num_classes"])
        shape, mean, std = (json.loads(metadata[k]) for k in ("image_shape", "mean", "std"))
    except (KeyError, ValueError, TypeError) as e:
        raise refuse(f"is incomplete or malformed ({' '.join(str(e).split())[:80]})") from None
    if not 1 <= num_classes <= MAX_CLASSES:
        raise refuse(f"num_classes {num_classes} is outside 1..{MAX_CLASSES}")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(v, int) for v in shape) or shape[0] not in CHANNELS
            or not all(1 <= v <= MAX_IMAGE_SIDE for v in shape[1:])):
        raise refuse(f"image_shape {str(shape)[:40]} is not [C, H, W] with C in {CHANNELS} and "
                     f"sides in 1..{MAX_IMAGE_SIDE}")
    for name, values in (("mean", mean), ("std", std)):
        if (not isinstance(values, list) or len(values) != shape[0]
                or not all(isinstance(v, int | float) and math.isfinite(v) for v in values)
                or (name == "std" and not all(v > 0 for v in values))):
            raise refuse(f"{name} {str(values)[:60]} is not {shape[0]} finite number(s)"
                         + (" > 0" if name == "std" else ""))
    return arch, num_classes, shape, mean, std


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / paths.METRICS
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PrunebenchError(f"{path} cannot be read: {' '.join(str(e).split())[:120]}"
                              ) from None
    if not isinstance(metrics, dict):
        raise PrunebenchError(f"{path} holds a {type(metrics).__name__}, not a run's metrics")
    return metrics


def read_trained_state(run_dir: Path, expected: dict[str, Any], where: str
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checked network state of the finished run in `run_dir`, for a run that starts from
    it (a shared dense phase), refusing one whose metrics.json differs from `expected` in any
    key (method, dataset, arch, seed, every train_* setting); and what the starting run records
    of it: its folder, config digest, network sha256 and recipe."""
    metrics_path, network = run_dir / paths.METRICS, run_dir / paths.NETWORK
    if not metrics_path.is_file() or not network.is_file():
        raise PrunebenchError(f"{where}: no finished run there ({paths.METRICS} and "
                              f"{paths.NETWORK} are needed); run the dense run first")
    metrics = _read_metrics(run_dir)
    differ = [f"{k}={metrics.get(k)!r} (this run: {v!r})" for k, v in expected.items()
              if metrics.get(k) != v]
    if differ:
        raise PrunebenchError(f"{where}: that run differs from this one's dense phase in "
                              f"{', '.join(differ)}")
    state, _ = read_safetensors(network, metrics.get(SHA256_KEYS[paths.NETWORK]))
    recipe = {k: metrics[k] for k in sorted(expected) if k != "method"}
    return state, {"dense_run_dir": str(run_dir.resolve()),
                   "dense_config_digest": metrics.get("config_digest"),
                   "dense_network_sha256": hashlib.sha256(network.read_bytes()).hexdigest(),
                   "dense_recipe": json.dumps(recipe, sort_keys=True)}


def load_run(run_dir: str | Path) -> SavedRun:
    """The pruned network of the finished run in `run_dir` as a timm model (eval mode, CPU) with
    its weights, plus its masks and input normalisation, every part checked (module docstring).
    """
    run_dir = Path(run_dir)
    network, masks_path = run_dir / paths.NETWORK, run_dir / paths.MASKS
    if not (run_dir / paths.METRICS).exists() or not network.exists():
        raise PrunebenchError(
            f"{run_dir} holds no saved network ({paths.NETWORK} is written by every run that "
            f"finishes with {paths.METRICS}); finish or rerun the run first")
    metrics = _read_metrics(run_dir)
    state, metadata = read_safetensors(network, metrics.get(SHA256_KEYS[paths.NETWORK]))
    masks, _ = read_safetensors(masks_path, metrics.get(SHA256_KEYS[paths.MASKS]))
    arch, num_classes, (c, h, _), mean, std = _header(metadata, network)
    model = create_model(arch, num_classes, c, h)
    _add_saved_biases(model, state)
    check_state(model, state, network)
    model.load_state_dict(state, strict=True)
    model.eval()
    check_masks(model, masks, masks_path)
    return SavedRun(model, masks, tuple(mean), tuple(std), metadata)


def check_masks(model: nn.Module, masks: dict[str, torch.Tensor], path: Path) -> None:
    """One bool mask per prunable layer, shaped like its weight and True exactly where the
    folded weight is non-zero."""
    layers = dict(prunable_layers(model))
    missing, extra = sorted(set(layers) - set(masks)), sorted(set(masks) - set(layers))
    if missing or extra:
        raise PrunebenchError(f"{path}: masks do not match the network's prunable layers: "
                              f"missing {missing[:5] or 'none'}, unexpected {extra[:5] or 'none'}")
    for name, mask in masks.items():
        weight = layers[name].weight.detach()
        if mask.dtype != torch.bool or mask.shape != weight.shape:
            raise PrunebenchError(f"{path}: mask {name!r} is {mask.dtype} {list(mask.shape)}, "
                                  f"expected torch.bool {list(weight.shape)}")
        if not torch.equal(mask, weight != 0):
            raise PrunebenchError(f"{path}: mask {name!r} disagrees with the network's weights "
                                  f"at {int((mask != (weight != 0)).sum())} position(s)")


def _add_saved_biases(model: nn.Module, state: dict[str, Any]) -> None:
    """Give a bias-free prunable layer the bias the run added to it (frozen-bias methods)."""
    for name, layer in prunable_layers(model):
        key = f"{name}.bias"
        if key in state and layer.bias is None and isinstance(state[key], torch.Tensor):
            out_features = layer.weight.shape[0]
            if state[key].shape != (out_features,):
                continue  # check_state names the mismatch
            layer.bias = nn.Parameter(torch.empty_like(state[key]))
