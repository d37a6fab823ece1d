"""prunebench: a benchmark and reproducibility suite for neural-network pruning.

`prunebench.load_run(run_dir)` loads a finished run's pruned network as a timm model."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from prunebench.training.artifact import SavedRun, load_run


def __getattr__(name: str) -> Any:
    # Imported on first use: `import prunebench` (the workflow, the CLI's help) stays torch-free.
    if name in ("load_run", "SavedRun"):
        from prunebench.training import artifact

        return getattr(artifact, name)
    raise AttributeError(f"module 'prunebench' has no attribute {name!r}")


__all__ = ["SavedRun", "__version__", "load_run"]
