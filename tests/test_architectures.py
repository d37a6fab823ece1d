"""Every method runs end to end on every architecture of the paper grid, not only conv4: the
run finishes, keeps exactly K weights when budgeted, leaves no prunable layer empty at half
sparsity, and tests a finite accuracy. One short epoch each on digits."""
from __future__ import annotations

import csv
import math

import pytest

from prunebench.plan.config import resolve
from prunebench.training.masking import budget_count
from prunebench.training.models import ARCHS
from prunebench.training.registry import get_method, list_methods
from prunebench.training.run import execute


def test_resnet18_starts_with_every_batchnorm_scale_at_one() -> None:
    from torch import nn

    from prunebench.training.models import create_model

    model = create_model("resnet18", 10, 3, 32)
    scales = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(scales) == 20 and all(bool((w == 1).all()) for w in scales)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "conv4"])
@pytest.mark.parametrize("method", list_methods())
def test_method_runs_on_every_architecture(method: str, arch: str, digits_dir, tmp_path) -> None:
    cls = get_method(method)
    budgeted = cls(cls.hparams_cls(), None).is_budgeted()
    sparsity = 0.5 if budgeted else None
    overrides = {"data_dir": str(digits_dir), "device": "cpu", "epochs": "1",
                 "batch_size": "256"}
    if method == "magnitude_ft":
        overrides["method.ft_epochs"] = "1"
    metrics = execute(resolve("digits", arch, method, sparsity, 0, overrides=overrides),
                      tmp_path / "run")
    assert math.isfinite(metrics["test_top1"])
    if budgeted:
        assert metrics["kept_prunable"] == budget_count(metrics["num_prunable"], 0.5)
        with open(tmp_path / "run" / "layers.csv") as f:
            empty = [r["layer"] for r in csv.DictReader(f) if int(r["nonzero"]) == 0]
        assert not empty, f"{method} on {arch} emptied {empty} at sparsity 0.5"
