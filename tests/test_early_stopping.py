"""Early stopping as in ASLP's main.py: `patience` epochs without a better validation accuracy
end training, and the best-validation network is the one extracted and tested."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from prunebench.data.prepared import DeviceData, load_prepared
from prunebench.errors import PrunebenchError
from prunebench.plan.config import resolve
from prunebench.training.run import execute


@pytest.mark.slow
def test_patience_stops_gumbel_before_its_epochs(digits_dir, tmp_path) -> None:
    cfg = resolve("digits", "conv2", "gumbel", None, 0, overrides={
        "data_dir": str(digits_dir), "device": "cpu", "epochs": "40", "patience": "2",
        "selection": "val"})
    metrics = execute(cfg, tmp_path / "run")
    assert metrics["stopped_early"] is True
    assert metrics["epochs_run"] < metrics["epochs_planned"] == 40
    assert metrics["epochs_run"] - metrics["best_epoch"] == 2
    with open(tmp_path / "run" / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert len(history) == metrics["epochs_run"]
    vals = [float(r["val_top1"]) for r in history]
    best = max(range(len(vals)), key=lambda i: (vals[i], -i))  # first epoch reaching the max
    assert metrics["best_epoch"] == best + 1
    assert metrics["val_top1"] == pytest.approx(vals[best])  # the best-val network is tested
    assert "early stopping after epoch" in (tmp_path / "run" / "log.txt").read_text()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["epochs_run"] == metrics["epochs_run"]


def test_patience_needs_best_validation_selection(digits_dir) -> None:
    with pytest.raises(PrunebenchError, match="patience > 0 needs selection=val"):
        resolve("digits", "conv2", "gumbel", None, 0, overrides={"patience": "5"})


def test_without_normalisation_inputs_are_raw_pixels_in_unit_range(digits_dir) -> None:
    prepared = load_prepared("digits", digits_dir)
    raw = DeviceData(prepared, torch.device("cpu"), 0.1, normalize=False)
    x, _ = next(raw.eval_batches("test", 64))
    expected = prepared.tensors["test_x"][:64].float() / 255.0
    assert torch.allclose(x, expected)
    normalised, _ = next(DeviceData(prepared, torch.device("cpu"), 0.1).eval_batches("test", 64))
    assert not torch.allclose(normalised, expected)
