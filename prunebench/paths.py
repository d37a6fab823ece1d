"""Every file name the suite reads or writes, in one place."""
from __future__ import annotations

from pathlib import Path

METRICS = "metrics.json"  # written last: its presence means the run finished
HISTORY = "history.csv"
LAYERS = "layers.csv"
LOG = "log.txt"
CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
FAILED = "failed.json"  # a run that stopped on an error (e.g. NaN loss) and why
LOCK = ".lock"  # held (flock) by the one process writing the run folder
NETWORK = "network.safetensors"  # state_dict of the folded, extracted model
MASKS = "masks.safetensors"  # boolean mask of every prunable layer, keyed by layer name


def dataset_tensors(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / f"{name}.pt"


def dataset_manifest(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / f"{name}.json"


def sparsity_label(sparsity: float | None) -> str:
    """`s0.9` for a budget; `snone` for methods without one (dense, emergent sparsity)."""
    return "snone" if sparsity is None else f"s{sparsity:g}"


def run_dir(out_root: str | Path, dataset: str, arch: str, method: str,
            sparsity: float | None, seed: int, suffix: str = "") -> Path:
    """`{out}/{dataset}/{arch}/{method}/s{sparsity}/seed{seed}[-{suffix}]`."""
    leaf = f"seed{seed}" + (f"-{suffix}" if suffix else "")
    return Path(out_root) / dataset / arch / method / sparsity_label(sparsity) / leaf
