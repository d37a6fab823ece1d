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


def budget_text(sparsity: float | None, none: str = "none") -> str:
    """The one text of a budget, everywhere (folders, command lines, tables, figures): `0.9`
    (at most 6 significant digits), or `none` (the caller's word, e.g. "no budget") for no
    budget: None in code, NaN in a table."""
    if sparsity is None or sparsity != sparsity:
        return none
    return f"{float(sparsity):g}"


def sparsity_label(sparsity: float | None) -> str:
    """A budget's run-folder level: `s0.9`, `snone` for no budget (dense, emergent sparsity)."""
    return "s" + budget_text(sparsity)


def method_folder(method: str, variant: str = "") -> str:
    """`gumbel` for a method's own settings, `gumbel@sc-aug` for its variant `sc-aug`."""
    return f"{method}@{variant}" if variant else method


def run_dir(out_root: str | Path, dataset: str, arch: str, method: str,
            sparsity: float | None, seed: int, variant: str = "") -> Path:
    """`{out}/{dataset}/{arch}/{method}[@{variant}]/s{sparsity}/seed{seed}`: built here only."""
    return (Path(out_root) / dataset / arch / method_folder(method, variant)
            / sparsity_label(sparsity) / f"seed{seed}")
