"""The benchmark script works and writes its CSVs with the expected columns (tiny sizes; no timed
assertion: performance claims live in benchmarks/, never in tests)."""
from __future__ import annotations

import csv
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, REPO, cli_env

from benchmarks import data_path, engine_changes, gpu, grid, methods, workflow
from benchmarks.common import Context, interleaved, no_parametrizations_left, paired

PROVENANCE = {"device", "device_name", "torch_version", "repeats", "load_avg_1min", "run_id",
              "git_commit", "status"}
CPU = torch.device("cpu")


def _ctx(tmp_path: Path) -> Context:
    return Context("test", tmp_path)


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "ok"]


def test_interleaving_rotates_order_and_pairs_ratios() -> None:
    calls = []

    def fn(name: str, t: float):
        return lambda: calls.append(name) or t

    times = interleaved([fn("a", 1.0), fn("b", 2.0), fn("c", 3.0)], 3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == [[1.0] * 3, [2.0] * 3, [3.0] * 3]
    _, _, ratios = paired(fn("a", 2.0), fn("b", 3.0), 4)
    assert ratios == [1.5] * 4


def test_data_path_rows(tmp_path: Path) -> None:
    rows = data_path.run(_ctx(tmp_path), n_images=64, batch_size=16, repeats=1)
    ok = _ok(rows)
    assert ok and all(r["device"] == "cpu" for r in ok)
    for r in ok:
        assert PROVENANCE | {"engine_images_per_s", "dataloader_images_per_s", "ratio",
                             "target", "target_met", "dataloader_workers"} <= set(r)
        assert r["ratio"] > 0
    if not torch.cuda.is_available():
        assert [r["status"] for r in rows if r["device"] == "cuda"] == ["skipped: no CUDA device"]


def test_method_rows_overhead_inference_memory(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    names = ["dense", "random", "magnitude_ft"]
    rows = methods.overhead(ctx, CPU, "conv4", 8, 8, 1, 1, names)
    assert [r["method"] for r in rows][:1] == ["dense"]
    assert {"random", "magnitude_ft"} <= {r["method"] for r in _ok(rows)}
    # every training phase of a multi-phase method gets its own row
    assert {r["phase"] for r in rows if r["method"] == "magnitude_ft"} == {"dense", "finetune"}
    for r in _ok(rows):
        assert PROVENANCE | {"method_step_ms", "dense_step_ms", "ratio", "parametrization",
                             "target_met"} - ({"target_met"} if r["method"] == "dense" else
                                              set()) <= set(r)
    inf = methods.inference(ctx, CPU, "conv4", 8, 4, 1, names)
    assert {r["method"] for r in _ok(inf)} == {"random", "magnitude_ft"}
    assert all(r["parametrizations_left"] is False and 0 < r["density"] < 1 for r in _ok(inf))
    mem = methods.measure_memory("conv4", "random", CPU, 8, 8, 1)
    assert mem["state_bytes"] > 0 and mem["phase"] == "train"


def test_extracted_network_has_no_parametrization(tmp_path: Path) -> None:
    from prunebench.training.masking import prunable_layers

    data = methods._device_data(CPU, 8, 8)
    model = methods.extracted("conv4", "random", data, CPU, 8)
    assert no_parametrizations_left(model)
    assert all(type(layer.weight) is torch.nn.Parameter for _, layer in prunable_layers(model))


def test_a_method_that_fails_to_build_is_skipped_with_a_note(tmp_path: Path) -> None:
    from prunebench.training import registry
    from prunebench.training.method import PruningMethod

    class Broken(PruningMethod):
        budgeted = False

        def prepare(self, model: torch.nn.Module) -> None:
            raise RuntimeError("not finished yet")

    registry.register_method("zzbenchbroken")(Broken)
    try:
        rows = methods.overhead(_ctx(tmp_path), CPU, "conv4", 8, 8, 1, 1,
                                ["dense", "zzbenchbroken"])
    finally:
        registry._METHODS.pop("zzbenchbroken")
    broken = [r for r in rows if r["method"] == "zzbenchbroken"]
    assert len(broken) == 1
    assert broken[0]["status"].startswith("skipped: failed to build: RuntimeError: not finished")


def test_grid_estimate_from_measured_rows_only(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    epoch = grid.epoch_times(ctx, CPU, ["conv4"], {"conv4": 8}, 8, 1, 1)
    assert epoch[0]["cifar10_epoch_s"] > 0 and epoch[0]["checkpoint_s"] > 0
    overhead = [{"status": "ok", "device": "cpu", "arch": "conv4", "method": "random",
                 "phase": "train", "ratio": 1.5}]
    jobs = [workflow.Job("cifar10", "conv4", "dense", None, 0, 128, 0.1, [("train", 2)]),
            workflow.Job("cifar10", "conv4", "random", 0.9, 0, 128, 0.1, [("train", 2)])]
    rows = grid.estimate(ctx, CPU, jobs, epoch, overhead, 1.0, "test")
    total, dense, random = rows
    assert total["jobs"] == 2 and total["epochs"] == 4
    assert total["device_hours"] == pytest.approx(dense["device_hours"] + random["device_hours"])
    assert random["device_hours"] > dense["device_hours"]
    # no measurement on a device: no row for it
    assert grid.estimate(ctx, torch.device("cuda"), jobs, epoch, overhead, 1.0, "t")[0][
        "jobs"] == 0


def test_job_list_resolves_like_the_cli() -> None:
    jobs = workflow.parse_jobs([
        ["--dataset", "cifar10", "--arch", "conv4", "--method", "magnitude_ft", "--sparsity",
         "0.9", "--seed", "1", "--run-dir", "x", "method.ft_epochs=7", "epochs=3"]])
    assert jobs[0].phases == [("dense", 3), ("finetune", 7)]
    assert jobs[0].batch_size == 128 and jobs[0].sparsity == 0.9


@pytest.mark.parametrize("tail", [" >> log 2>&1 || [ $? -eq 3 ]", " > log 2>&1", " 2> log", ""])
def test_run_arguments_stop_at_the_shell_redirection(tail: str) -> None:
    """The train rule appends its log with `>>`: the job's arguments end before any redirect
    (a `>>` taken as an override made the grid-cost section report "job list unavailable")."""
    line = ("Shell command: trap '' TERM; python -m prunebench run --dataset digits --arch conv2"
            " --method dense --seed 0 --run-dir 'r d' epochs=1" + tail)
    match = workflow.RUN_LINE.search(line)
    assert match and shlex.split(match.group(1))[1:] == [
        "--dataset", "digits", "--arch", "conv2", "--method", "dense", "--seed", "0",
        "--run-dir", "r d", "epochs=1"]


def test_dry_run_of_a_missing_config_is_pending(tmp_path: Path) -> None:
    rows = workflow.dry_run(_ctx(tmp_path), "config/does-not-exist.yaml", 1)
    assert rows[0]["status"].startswith("pending:")


def test_engine_change_baselines(tmp_path: Path) -> None:
    from prunebench.data.prepared import augment

    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    for p, flip in ((4, True), (0, True), (2, False)):
        old = engine_changes.previous_augment(x, p, flip, torch.Generator().manual_seed(3))
        assert torch.equal(old, augment(x, p, flip, torch.Generator().manual_seed(3)))
    rows = engine_changes.augmentation(_ctx(tmp_path), CPU, 64, 16, 1)
    rows += engine_changes.fixed_mask(_ctx(tmp_path), CPU, "conv4", 8, 8, 1, 1)
    assert all(r["status"] == "ok" and r["ratio"] > 0 for r in rows)


def test_gpu_code_paths_run_on_cpu(tmp_path: Path) -> None:
    """Each variant's ratio is its own epoch time over fp32's (one repeat: the median of one
    ratio). Mutation that defeated `rows[0]["ratio"] == 1.0` (fp32 over itself): every ratio
    computed as a time over itself."""
    rows = gpu.precision(_ctx(tmp_path), CPU, ["conv4"], 32, 16, 1)
    assert [r["case"] for r in rows] == list(gpu.VARIANTS)
    assert len({r["epoch_s"] for r in rows}) == len(rows)  # three separately timed variants
    for r in rows:
        assert r["status"] == "ok" and r["epoch_s"] > 0
        assert r["ratio"] == pytest.approx(r["epoch_s"] / rows[0]["epoch_s"], rel=1e-9)


EXPECTED = {
    "data_path.csv": {"engine_images_per_s", "dataloader_images_per_s", "ratio"},
    "engine_changes.csv": {"case", "ratio", "ratio_of", "clock"},
    "method_overhead.csv": {"method", "phase", "method_step_ms", "dense_step_ms", "ratio"},
    "inference.csv": {"method", "subnet_forward_ms", "dense_forward_ms", "ratio",
                      "parametrizations_left"},
    "memory.csv": {"method", "peak_mib", "dense_peak_mib", "ratio", "state_mib", "peak_measure"},
    "epoch_time.csv": {"arch", "dense_step_ms", "cifar10_epoch_s", "checkpoint_s", "ratio"},
    "workflow.csv": {"case", "wall_s", "cpu_s", "ratio"},
    "gpu.csv": {"case", "ratio"},
    "grid_cost.csv": {"dataset", "arch", "method", "jobs", "device_hours"},
}


@pytest.mark.slow
def test_tiny_run_writes_every_csv(tmp_path: Path) -> None:
    res = subprocess.run([PYTHON, "-m", "benchmarks.run", "--tiny", "--methods", "dense,random",
                          "--out", str(tmp_path), "--exercise-gpu-code-on-cpu"],
                         cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "engine_vs_torchvision_dataloader" in res.stdout
    for name, columns in EXPECTED.items():
        with open(tmp_path / name) as f:
            rows = list(csv.DictReader(f))
        assert rows, name
        header = set(rows[0])
        assert PROVENANCE | columns <= header, (name, (PROVENANCE | columns) - header)
        assert all(r["torch_version"] == torch.__version__ for r in rows)
        assert any(r["status"].startswith("ok") for r in rows), name
    with open(tmp_path / "grid_cost.csv") as f:
        grid_rows = list(csv.DictReader(f))
    if not torch.cuda.is_available():
        assert any(r["device"] == "cuda" and r["status"].startswith("pending") for r in grid_rows)


def test_engine_change_rows_for_the_window_speed_ups(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    rows = [r for m in ("reparam", "edgepopup")
            for r in engine_changes.method_step(ctx, CPU, m, "conv4", 8, 8, 1, 1)]
    rows += engine_changes.evaluation(ctx, CPU, "reparam", "conv4", 8, 32, 8, 1)
    assert all(r["status"] == "ok" and r["ratio"] > 0 for r in rows)
    assert all(r["before_vs_dense"] > 0 and r["after_vs_dense"] > 0 for r in rows[:2])
    with pytest.raises(ValueError, match="no previous code"):
        with engine_changes.previous_code("dense"):
            pass
