"""prunebench: a benchmark and reproducibility suite for neural-network pruning.

`prunebench.load_run(run_dir)` loads a finished run's pruned network as a timm model;
`prunebench.__version__` is the version from git (prunebench/provenance.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunebench.training.artifact import SavedRun, load_run

    __version__: str


def __getattr__(name: str) -> Any:
    # Computed or imported on first use: `import prunebench` (the workflow, the CLI's help)
    # stays torch-free and asks git nothing.
    if name == "__version__":
        from prunebench import provenance

        return provenance.current().version
    if name in ("load_run", "SavedRun"):
        from prunebench.training import artifact

        return getattr(artifact, name)
    raise AttributeError(f"module 'prunebench' has no attribute {name!r}")


__all__ = ["SavedRun", "__version__", "load_run"]
