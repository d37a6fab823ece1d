"""Synthetic run folders in the engine's format (training/run.py), for aggregation and report
tests. Their numbers are made up: they test the plumbing and never stand for a result."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from prunebench import paths
from prunebench.plan.config import resolve

LAYERS = [("features.0", 576, 36864), ("features.2", 36864, 2359296),
          ("classifier.1", 131072, 131072), ("classifier.3", 2560, 2560)]


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def make_run(root: Path, *, dataset: str = "digits", arch: str = "conv4",
             method: str = "random", sparsity: float | None = 0.5, seed: int = 0,
             top1: float = 80.0, achieved: float | None = None, status: str = "ok",
             epochs: int = 3, reason: str = "loss became nan in epoch 2 (phase train)",
             variant: str = "", overrides: dict[str, str] | None = None,
             run_dir: Path | None = None, data_origin: str = "official",
             macs_dense: float = 2529792) -> Path:
    """One run folder: status `ok` (metrics, history, layers), `failed` or `incomplete`.
    `data_origin` "local" records a dataset read from a local copy (the offline JPEG archive)."""
    cfg = resolve(dataset, arch, method, sparsity, seed, variant=variant,
                  overrides={"epochs": str(epochs), **(overrides or {})})
    folder = run_dir or paths.run_dir(root, dataset, arch, method, sparsity, seed,
                                      variant=variant)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / paths.CONFIG).write_text(json.dumps({"digest": cfg.digest(),
                                                   "config": cfg.to_dict()}))
    history = [{"epoch": e, "phase": "train", "train_loss": 2.0 / e,
                "train_top1": top1 * e / epochs - 5, "lr_factor": 1.0, "epoch_seconds": 0.5,
                "val_top1": top1 * e / epochs, "val_loss": 1.0 / e}
               for e in range(1, epochs + 1)]
    if status == "failed":
        (folder / paths.FAILED).write_text(json.dumps(
            {"reason": reason, "config": cfg.to_dict(), "history": history[:1]},
            sort_keys=True, default=str))
        return folder
    if status == "incomplete":
        (folder / paths.CHECKPOINT).write_bytes(b"not a real checkpoint")
        return folder
    s = achieved if achieved is not None else (sparsity or 0.0)
    layers = [{"layer": name, "kind": "Conv2d" if name.startswith("f") else "Linear",
               "shape": "x", "numel": n, "nonzero": round(n * (1 - s) * (0.6 + 0.2 * i)),
               "density": (1 - s) * (0.6 + 0.2 * i), "macs_dense": macs}
              for i, (name, n, macs) in enumerate(LAYERS)]
    total = sum(n for _, n, _ in LAYERS)
    kept = round(total * (1 - s))
    metrics = {
        **{k: v for k, v in cfg.to_dict().items() if k not in ("train", "method_options")},
        **{f"train_{k}": v for k, v in cfg.train.__dict__.items()},
        **{f"hp_{k}": v for k, v in cfg.method_options.items()},
        "sparsity_target": sparsity, "budgeted": sparsity is not None,
        "paper": f"paper of {method}", "frozen_weights": False,
        "test_top1": top1, "test_top5": None, "test_loss": 0.5, "val_top1": top1 - 1,
        "selection": "final", "epoch_selected": epochs, "epochs_run": epochs,
        "num_prunable": total, "kept_prunable": kept, "density_achieved": 1 - s,
        "sparsity_achieved": s, "params_total": total + 100, "params_nonzero": kept + 100,
        "macs_dense": macs_dense, "macs_effective": macs_dense * (1 - s), "layers_collapsed": "",
        "num_layers_collapsed": 0, "train_seconds": 10.0 + seed, "wall_seconds": 11.0 + seed,
        "prunebench_version": "0.1.0", "git_commit": "0123456789abcdef0123",
        "python_version": "3.11.7", "torch_version": "2.14.1", "timm_version": "1.0.31",
        "device": "cpu", "device_name": "x86_64", "hostname": "test", "num_threads": 1,
        "config_digest": cfg.digest(), "run_dir": str(folder), "data_origin": data_origin,
        "data_source": ("local archive cifar10-jpeg.tar.gz" if data_origin == "local"
                        else "official download"),
        "data_source_sha256": "ab" * 32 if data_origin == "local" else "cd" * 32,
    }
    (folder / paths.HISTORY).write_text(_csv(history))
    (folder / paths.LAYERS).write_text(_csv(layers))
    (folder / paths.METRICS).write_text(json.dumps(metrics, sort_keys=True, default=str))
    return folder


PUBLISHED_HEADER = "source,method,arch,dataset,sparsity,accuracy,setting,certainty"


def write_published(path: Path, rows: list[str], variant: bool = False) -> Path:
    """A published-results CSV; with `variant`, each row ends with its variant column."""
    header = PUBLISHED_HEADER + (",variant" if variant else "")
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path
