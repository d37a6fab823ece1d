"""Every finished run saves its pruned network (network.safetensors + masks.safetensors) before
metrics.json, and `prunebench.load_run` gives it back: the loaded timm model scores exactly the
run's recorded test accuracy."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli_env

import prunebench
from prunebench import paths
from prunebench.data.prepared import DeviceData, load_prepared
from prunebench.errors import PrunebenchError
from prunebench.plan.config import resolve
from prunebench.training.metrics import evaluate
from prunebench.training.run import execute

# The same torch thread count in this process as in the runs it starts (cli_env sets
# OMP_NUM_THREADS=1): CPU reductions then sum in the same order, bit for bit.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _finished_run(digits_dir: Path, tmp_path: Path, method: str, sparsity: float | None,
                  **options: str) -> tuple[Path, dict]:
    overrides = {"epochs": "1", "device": "cpu", "data_dir": str(digits_dir), **options}
    cfg = resolve("digits", "conv4", method, sparsity, 0, overrides=overrides)
    run_dir = tmp_path / method
    return run_dir, execute(cfg, run_dir)


def _test_accuracy(saved: prunebench.SavedRun, digits_dir: Path, normalize: bool) -> float:
    data = DeviceData(load_prepared("digits", digits_dir), torch.device("cpu"), 0.1,
                      normalize=normalize)
    return evaluate(saved.model, data.eval_batches("test", 1024), amp=False)["top1"]


@pytest.mark.parametrize(("method", "sparsity", "options"), [
    ("reparam", 0.5, {"epochs": "2"}),
    pytest.param("edgepopup", 0.5, {"epochs": "2", "method.frozen_bias": "true",
                                    "normalize": "false"}, marks=pytest.mark.slow),
])
def test_loaded_network_reproduces_the_recorded_accuracy(
        digits_dir: Path, tmp_path: Path, method: str, sparsity: float | None,
        options: dict[str, str]) -> None:
    run_dir, metrics = _finished_run(digits_dir, tmp_path, method, sparsity, **options)
    saved = prunebench.load_run(run_dir)
    assert saved.metadata["timm_model"] == "pb_conv4"
    top1 = _test_accuracy(saved, digits_dir, normalize=options.get("normalize") != "false")
    assert top1 == metrics["test_top1_extracted"]
    assert top1 > 50  # far from chance (10 %): the equality says something about the weights
    biases = [k for k in saved.model.state_dict() if k.endswith(".bias")]
    assert bool(biases) == ("method.frozen_bias" in options)  # conv4 itself has none
    kept = sum(int(m.sum()) for m in saved.masks.values())
    assert kept == metrics["kept_prunable"]
    layers = dict(saved.model.named_modules())
    for name, mask in saved.masks.items():
        assert mask.dtype == torch.bool
        assert torch.equal(layers[name].weight != 0, mask)


def test_preprocess_matches_the_runs_input(digits_dir: Path, tmp_path: Path) -> None:
    run_dir, _ = _finished_run(digits_dir, tmp_path, "random", 0.5)
    saved = prunebench.load_run(run_dir)
    prepared = load_prepared("digits", digits_dir)
    data = DeviceData(prepared, torch.device("cpu"), 0.1)
    x, _ = next(data.eval_batches("test", 64))
    assert torch.equal(saved.preprocess(prepared.tensors["test_x"][:64]), x)


def test_network_is_written_before_metrics(digits_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The order of the atomic renames, recorded as they happen (equal mtimes made the old
    `<=` check pass in any order: red when metrics.json is written before the network)."""
    renamed: list[str] = []
    replace = os.replace

    def recording_replace(src: str | Path, dst: str | Path) -> None:
        replace(src, dst)
        renamed.append(Path(dst).name)

    monkeypatch.setattr(os, "replace", recording_replace)
    run_dir, _ = _finished_run(digits_dir, tmp_path, "dense", None)
    assert renamed[-1] == paths.METRICS and renamed.count(paths.METRICS) == 1
    assert renamed.index(paths.NETWORK) < renamed.index(paths.MASKS) < len(renamed) - 1
    assert not list(run_dir.glob(".*.tmp"))


def test_unfinished_run_has_no_network_to_load(tmp_path: Path) -> None:
    (tmp_path / paths.CONFIG).write_text(json.dumps({"digest": "x", "config": {}}))
    with pytest.raises(PrunebenchError, match="holds no saved network"):
        prunebench.load_run(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("file", "when"), [(paths.NETWORK, "mid"),
                                            (paths.MASKS, "after_rename")])
def test_run_killed_while_saving_its_network_finishes_unchanged(
        digits_dir: Path, tmp_path: Path, file: str, when: str) -> None:
    """SIGKILL inside the network's atomic write (tests/faultlaunch.py): no metrics.json, and
    the rerun resumes from the last checkpoint to the uninterrupted run's network and result."""
    _, reference = _finished_run(digits_dir, tmp_path / "reference", "random", 0.5)
    run_dir = tmp_path / "killed"
    argv = ["run", "--dataset", "digits", "--arch", "conv4", "--method", "random",
            "--sparsity", "0.5", "--seed", "0", "--run-dir", str(run_dir), "epochs=1",
            "device=cpu", f"data_dir={digits_dir}"]
    faults = [{"at": "write", "file": file, "n": 1, "when": when, "action": "kill"}]
    killed = subprocess.run([sys.executable, str(REPO / "tests/faultlaunch.py"),
                             json.dumps(faults), *argv], cwd=REPO, env=cli_env(),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (run_dir / paths.METRICS).exists() and (run_dir / paths.CHECKPOINT).exists()
    done = subprocess.run([sys.executable, "-m", "prunebench", *argv], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / paths.METRICS).read_text())
    assert metrics["test_top1"] == reference["test_top1"]
    saved, ref_saved = prunebench.load_run(run_dir), prunebench.load_run(tmp_path / "reference"
                                                                          / "random")
    for key, value in ref_saved.model.state_dict().items():
        assert torch.equal(saved.model.state_dict()[key], value), key
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_every_workflow_run_folder_holds_a_loadable_network(tmp_path: Path) -> None:
    """Through the workflow (train_run jobs): each finished run folder has its network, and the
    loaded network scores the run's recorded accuracy on the workflow's prepared data."""
    from test_workflow import _copy_workflow, _snakemake, _tiny_config, _write_config

    workdir = _copy_workflow(tmp_path)
    config = _tiny_config(["dense", "magnitude", "supermask"])
    out = _snakemake("aggregate_runs", "--configfile", _write_config(workdir, config),
                     cwd=workdir)
    assert out.returncode == 0, out.stderr[-4000:]
    folders = sorted(p.parent for p in (workdir / "results/runs").rglob(paths.METRICS))
    assert len(folders) == 3, folders
    for folder in folders:
        metrics = json.loads((folder / paths.METRICS).read_text())
        saved = prunebench.load_run(folder)
        top1 = _test_accuracy(saved, workdir / "results/data", normalize=True)
        assert top1 == metrics["test_top1_extracted"], folder


def _timm_cases() -> list:
    """Every registered method on every timm test model: the slow tier; reparam on the ViT
    (a budget, attention projections, a patch embedding) in the fast one."""
    from conftest import TIMM_TEST_ARCHS

    from prunebench.training.registry import list_methods

    return [pytest.param(method, arch, marks=() if (method, arch) == ("reparam", "timm/test_vit")
                         else pytest.mark.slow)
            for arch in TIMM_TEST_ARCHS for method in list_methods()]


@pytest.mark.parametrize(("method", "arch"), _timm_cases())
def test_timm_network_reloads_to_the_recorded_accuracy(method: str, arch: str,
                                                       small_images_dir: Path,
                                                       tmp_path: Path) -> None:
    """A timm model's saved network (load_run) scores the run's recorded test accuracy and
    loss on its test split, with its masks where its weights are non-zero."""
    from prunebench.training.registry import get_method

    cls = get_method(method)
    sparsity = 0.5 if cls(cls.hparams_cls(), None).is_budgeted() else None
    overrides = {"epochs": "2", "batch_size": "32", "device": "cpu",
                 "data_dir": str(small_images_dir)}
    if method == "magnitude_ft":
        overrides["method.ft_epochs"] = "1"
    metrics = execute(resolve("imagefolder", arch, method, sparsity, 0, overrides=overrides),
                      tmp_path / "run")
    saved = prunebench.load_run(tmp_path / "run")
    assert saved.metadata["timm_model"] == arch.removeprefix("timm/")
    data = DeviceData(load_prepared("imagefolder", small_images_dir), torch.device("cpu"), 0.1)
    test = evaluate(saved.model, data.eval_batches("test", 1024), amp=False)
    assert (test["top1"], test["loss"]) == (metrics["test_top1_extracted"], metrics["test_loss"])
    layers = dict(saved.model.named_modules())
    assert sum(int(m.sum()) for m in saved.masks.values()) == metrics["kept_prunable"]
    for name, mask in saved.masks.items():
        assert torch.equal(layers[name].weight != 0, mask), name
