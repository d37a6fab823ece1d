"""The GPU-window script (`python -m benchmarks.window`) and the engine changes it relies on:
no host sync per training step, one h_t(w) per reparam step, sync-free batched evaluation, and
magnitude pruning from a shared dense network (`method.dense_from`)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import REPO

from benchmarks import window_runs
from benchmarks.common import PhaseStepper, build, synthetic_prepared
from prunebench import paths
from prunebench.training.registry import list_methods

CPU = torch.device("cpu")
# Tensor methods that force a device-to-host copy (a sync on CUDA) when our code calls them.
SYNCING = ("item", "tolist", "nonzero", "cpu", "numpy", "__float__", "__int__", "__bool__",
           "__index__")


@contextmanager
def host_syncs() -> Iterator[Counter]:
    """Count syncing tensor calls made from the suite's own files (not torch's internals)."""
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def wrap(name, fn):
        def counted(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(str(REPO)) and "/.venv/" not in caller:
                counts[f"{name} in {Path(caller).name}:{sys._getframe(1).f_lineno}"] += 1
            return fn(*args, **kwargs)
        return counted

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _epoch_syncs(method: str, phase: int, steps: int) -> Counter:
    data_cls = __import__("prunebench.data.prepared", fromlist=["DeviceData"]).DeviceData
    data = data_cls(synthetic_prepared(steps * 8, 0, 8), CPU, 0.0)
    built = build("conv4", method, data, CPU, 8)
    stepper = PhaseStepper(built, phase)
    with host_syncs() as counts:
        stepper.step_seconds()
    return counts


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_training_steps_make_no_host_sync(method: str) -> None:
    """An epoch of 6 steps syncs exactly as often as one of 2: nothing in the step loop or in a
    method's per-step hooks (forward, regularizer) waits for the device."""
    phases = range(2) if method == "magnitude_ft" else range(1)
    for phase in phases:
        short, long = _epoch_syncs(method, phase, 2), _epoch_syncs(method, phase, 6)
        assert long == short, (method, phase, long - short)


# -- shared dense phase ------------------------------------------------------------------------
def _run(root: Path, digits_dir: Path, method: str, sparsity: float | None, name: str,
         **options: str) -> tuple[dict, Path]:
    from prunebench.plan.config import resolve
    from prunebench.training.run import execute

    overrides = {"epochs": "2", "data_dir": str(digits_dir), "device": "cpu",
                 **{f"method.{k}": v for k, v in options.items()}}
    run_dir = root / name
    return execute(resolve("digits", "conv4", method, sparsity, 0, overrides=overrides),
                   run_dir), run_dir


def _network(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "network.safetensors")


@pytest.mark.slow
def test_magnitude_from_a_shared_dense_run_equals_the_separate_run(tmp_path: Path,
                                                                   digits_dir: Path) -> None:
    _, dense = _run(tmp_path, digits_dir, "dense", None, "dense")
    for method, options in (("magnitude", {}), ("magnitude_ft", {"ft_epochs": "1"})):
        alone, alone_dir = _run(tmp_path, digits_dir, method, 0.9, f"{method}-alone", **options)
        shared, shared_dir = _run(tmp_path, digits_dir, method, 0.9, f"{method}-shared",
                                  dense_from=str(dense), **options)
        for key in ("test_top1", "test_loss", "val_top1", "kept_prunable"):
            assert shared[key] == alone[key], (method, key)
        a, b = _network(alone_dir), _network(shared_dir)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), method
        # only the fine-tuning epochs ran in the shared run
        assert shared["epochs_run"] == alone["epochs_run"] - 2


@pytest.mark.slow
def test_dense_from_refuses_another_recipe_or_an_unfinished_run(tmp_path: Path,
                                                                digits_dir: Path) -> None:
    from prunebench.errors import PrunebenchError

    _, dense = _run(tmp_path, digits_dir, "dense", None, "dense")
    from prunebench.plan.config import resolve
    from prunebench.training.run import execute

    other = resolve("digits", "conv4", "magnitude", 0.9, 0, overrides={
        "epochs": "3", "data_dir": str(digits_dir), "device": "cpu",
        "method.dense_from": str(dense)})
    with pytest.raises(PrunebenchError, match="train_epochs=2 .this run: 3."):
        execute(other, tmp_path / "other")
    with pytest.raises(PrunebenchError, match="no finished run there"):
        _run(tmp_path, digits_dir, "magnitude", 0.9, "missing", dense_from=str(tmp_path / "x"))


# -- reparam: h_t(w) once per step -------------------------------------------------------------
def test_reparam_computes_the_gate_once_per_step_with_the_same_loss(monkeypatch) -> None:
    import prunebench.methods.reparam as reparam
    from prunebench.data.prepared import DeviceData

    calls = Counter()
    gate = reparam.gate
    monkeypatch.setattr(reparam, "gate", lambda *a: calls.update(["gate"]) or gate(*a))
    data = DeviceData(synthetic_prepared(16, 0, 8), CPU, 0.0)
    built = build("conv4", "reparam", data, CPU, 8)
    x, y = next(data.train_batches_from(8, torch.Generator().manual_seed(0), 0, False)[0])
    layers = len(built.method._gates)
    calls.clear()
    out = built.model(x)
    reg = built.method.regularizer(built.model)
    assert calls["gate"] == layers  # forward only: the budget loss reused its sums
    with torch.no_grad():
        recomputed = built.method.hp.lam * reparam.budget_loss(
            built.method.soft_cost(built.model), built.method.k, built.method.c_init)
    assert torch.equal(reg.detach(), recomputed)
    (torch.nn.functional.cross_entropy(out, y) + reg).backward()
    assert all(r.t_raw.grad is not None for r in built.method._gates)
    # a regularizer without a forward of its own (taken already) computes the cost afresh
    assert torch.equal(built.method.regularizer(built.model).detach(), recomputed)


# -- evaluation --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dense", "reparam", "gumbel"])
def test_evaluation_equals_the_per_batch_synced_version(method: str) -> None:
    from benchmarks.engine_changes import previous_evaluate
    from prunebench.data.prepared import DeviceData
    from prunebench.training.metrics import evaluate

    data = DeviceData(synthetic_prepared(16, 70, 8), CPU, 0.0)
    model = build("conv4", method, data, CPU, 8).model
    for batch in (16, 70, 1000):
        assert (evaluate(model, data.eval_batches("test", batch), False)
                == previous_evaluate(model, data.eval_batches("test", batch), False))


# -- the window script ---------------------------------------------------------------------------
def _no_snakemake_env(tmp_path: Path) -> dict[str, str]:
    """cli_env with a `snakemake` package that refuses to be imported: the window script and
    the runs it starts must work on a GPU box's Python without Snakemake."""
    from conftest import cli_env

    fake = tmp_path / "fake"
    (fake / "snakemake").mkdir(parents=True)
    (fake / "snakemake" / "__init__.py").write_text(
        "raise ImportError('benchmarks.window must not import snakemake')\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{fake}{os.pathsep}{env['PYTHONPATH']}"
    return env


def _tiny(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    from conftest import PYTHON

    return subprocess.run([PYTHON, "-m", "benchmarks.window", "--tiny", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def _rows(out: Path, name: str) -> list[dict[str, str]]:
    with open(out / f"window_{name}.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_tiny_window_end_to_end_and_again(tmp_path: Path) -> None:
    """`--tiny` on the CPU, without Snakemake: the six-step checklist, packing with a worker
    that dies (reported at once, with its signal and stderr file), runs started as on a GPU
    (device slots over a fake two-device list, bf16 autocast + channels_last) two at a time, a
    run stopped at the budget with its checkpoint; the same command again resumes it."""
    from benchmarks import window

    out = tmp_path / "out"
    env = _no_snakemake_env(tmp_path)
    res = _tiny(out, env)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    checklist = _rows(out, "checklist")
    assert [(r["step"], r["status"]) for r in checklist] == [(str(i), "ok") for i in range(1, 7)]
    assert "equal to the uninterrupted run" in checklist[1]["result"]
    packs = _rows(out, "packing")
    assert [r["runs"] for r in packs if r["status"] == "ok"] == ["1", "2"]
    (dead,) = [r for r in packs if r["status"] != "ok"]
    assert "worker 1 killed by signal 9 (SIGKILL)" in dead["status"], dead
    assert float(dead["wall_s"]) < 60  # not the remaining budget (the old wait)
    err = Path(dead["status"].split("its stderr: ")[1].strip())
    assert err.exists()
    finished, others = _rows(out, "finished"), _rows(out, "unfinished")
    labels = [s.label for s in window.priority(tiny=True)]
    assert "conv4 dense" in [r["run"] for r in finished]
    assert sorted(r["run"] for r in finished + others) == sorted(labels)
    stopped = [r for r in others if r["reason"].startswith("stopped at the budget; checkpoint")]
    assert stopped, others  # at least the endless run, stopped at the budget
    long_run = stopped[0]
    metrics = [json.loads((Path(r["run_dir"]) / "metrics.json").read_text()) for r in finished]
    assert all(m["precision"] in ("bf16", "fp32") and m["channels_last_used"] for m in metrics)
    assert any(m["precision"] == "bf16" for m in metrics)
    slots = {m["device_slot"] for m in metrics}
    assert None not in slots and len(slots) == 2, slots  # each run held one of two slots
    assert _overlapping(out) >= 2  # two runs trained at the same time
    text = (out / "window_summary.md").read_text()
    assert torch.__version__ in text and "First-GPU checklist" in text and "fp32 vs bf16" in text
    precision = _rows(out, "precision")
    assert [r["setting"] for r in precision] == ["conv4 reparam@paper-sgd-t s=0.9"]
    stamp = {r["run"]: (Path(r["run_dir"]) / "metrics.json").stat().st_mtime_ns
             for r in finished}
    again = _tiny(out, env)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (Path(long_run["run_dir"]) / "log.txt").read_text()
    assert "resumed from" in log
    for r in _rows(out, "finished"):
        if r["run"] in stamp:  # a finished run is skipped, untouched
            assert (Path(r["run_dir"]) / "metrics.json").stat().st_mtime_ns == stamp[r["run"]]


def _overlapping(out: Path) -> int:
    """The most runs whose logs show them training at one moment (start: the `run ...` line,
    end: `done` or `preempted`)."""
    import datetime

    def when(line: str) -> float:
        return datetime.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()

    spans = []
    for log in (out / "runs").rglob("log.txt"):
        lines = log.read_text().splitlines()
        starts = [when(ln) for ln in lines if " run " in ln]
        ends = [when(ln) for ln in lines if " done: " in ln or " preempted: " in ln]
        if starts and ends:
            spans.append((starts[0], ends[0]))
    return max((sum(s <= t < e for s, e in spans) for t, _ in spans), default=0)


def test_plan_lists_the_runs_in_order_without_training(tmp_path: Path, capsys) -> None:
    from benchmarks import window

    assert window.main(["--plan", "--tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| order")]
    labels = [s.label for s in window.priority(tiny=True)]
    assert [ln.split(" | ")[1] for ln in rows] == labels
    assert "first-GPU checklist" in out and "1 at once" in out
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_window_runs_get_the_slots_they_pack(tmp_path: Path, monkeypatch) -> None:
    """Defect 2: the window's runs claimed slots the machine sized for one run per GPU, so runs
    2..N waited for run 1. The window gives its runs the slots it packs: 4 runs at once on two
    devices all hold a slot of their own."""
    from prunebench.training import gpus

    env = window_runs.run_env(tmp_path, 4, ["0", "1"], tiny=False)
    assert env[gpus.JOBS_PER_GPU_ENV] == "2" and env[gpus.LOCK_DIR_ENV] == str(tmp_path
                                                                             / "gpu-locks")
    monkeypatch.setenv(gpus.JOBS_PER_GPU_ENV, env[gpus.JOBS_PER_GPU_ENV])
    folder = Path(env[gpus.LOCK_DIR_ENV])
    folder.mkdir()
    claims = [gpus.try_claim(["0", "1"], gpus.jobs_per_gpu(), folder) for _ in range(4)]
    assert None not in claims and sorted(c.device for c in claims) == ["0", "0", "1", "1"]
    for claim in claims:
        os.close(claim.fd)


@pytest.mark.slow
def test_a_dead_packing_worker_ends_the_wait_at_once(tmp_path: Path) -> None:
    """Defect 6: a worker that died at start-up left the window waiting for its ready file for
    the whole remaining budget, its stderr in an unread pipe. Now the wait ends at once, saying
    how the worker ended and where its stderr is."""
    from benchmarks import window
    from benchmarks.common import Context

    (tmp_path / "logs").mkdir()
    started = time.monotonic()
    rows = window.packing(Context("test", tmp_path), CPU, "no_such_arch", 8, 8, 2, [1, 2],
                          timeout_s=600, logs=tmp_path / "logs")
    assert time.monotonic() - started < 120
    (row,) = rows
    assert row["status"].startswith("failed: worker ") and " exit 1 before writing ready-" \
        in row["status"], row
    err = Path(row["status"].split("its stderr: ")[1])
    assert "unknown arch 'no_such_arch'" in err.read_text()


def test_a_run_killed_by_a_signal_the_window_did_not_send_is_failed(tmp_path: Path) -> None:
    """Defect 6: a run killed by the OOM killer (SIGKILL) was listed as "stopped at the budget".
    Only the window's own SIGTERM makes a run unfinished."""
    import signal as signals

    job = window_runs.Job(window_runs.Spec("conv4", "dense", None), [], tmp_path / "run", 1, 8)
    job.log = tmp_path / "run.log"
    job.log.write_text("2026-01-01 00:00:00 run digits/conv4/dense ...\n")
    for stopped_by_window, expected in ((False, "failed"), (True, "unfinished")):
        job.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        job.stop_sent = stopped_by_window
        job.proc.send_signal(signals.SIGKILL)
        job.proc.wait()
        window_runs.finish(job)
        assert job.status == expected, job.reason
    job.stop_sent = False
    job.proc = subprocess.Popen([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"])
    job.proc.wait()
    window_runs.finish(job)
    assert job.reason.startswith("killed by signal 9 (SIGKILL) (the kernel's OOM killer?)")


@pytest.mark.slow
def test_the_budget_stops_runs_cleanly_and_lists_them_unfinished(tmp_path: Path,
                                                                 digits_dir: Path) -> None:
    """A run still going at the deadline gets SIGTERM, keeps a checkpoint and is listed as
    unfinished; the magnitude run waiting for it is listed as not run; neither is a result."""
    from benchmarks import window

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    specs = [window.Spec("conv4", "dense", None), window.Spec("conv4", "magnitude", 0.9,
                                                              needs_dense=True)]
    config = window.PAPER_CONFIG
    extra = ["epochs=100000"]
    dense_dir = window.make_job(specs[0], tmp_path, "digits", digits_dir, config, CPU, extra,
                                None).run_dir
    jobs = [window.make_job(s, tmp_path, "digits", digits_dir, config, CPU, extra, dense_dir)
            for s in specs]
    (tmp_path / "logs").mkdir()
    started = time.perf_counter()

    def trained_an_epoch() -> bool:
        log = dense_dir / "log.txt"
        return log.exists() and "epoch=1 " in log.read_text()

    # stop once the run has trained an epoch (its start-up time varies with the load)
    env = window_runs.run_env(tmp_path, 1, ["0"], tiny=False)
    window.schedule(jobs, started + 600, 1, tmp_path / "logs", env, lambda j: 1.0, poll_s=0.2,
                    stop=trained_an_epoch)
    dense, magnitude = jobs
    assert dense.status == "unfinished" and (dense_dir / "checkpoint.pt").exists()
    assert not (dense_dir / "metrics.json").exists()
    assert magnitude.status == "not run" or magnitude.reason == "its dense run did not finish"
    finished, others = window.result_rows(jobs)
    assert finished == [] and [r["status"] for r in others][0] == "unfinished"


class _Clock:
    """A fake `time` for the scheduler: `sleep` advances `perf_counter`, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _FakeRun:
    """A run process on the fake clock: it finishes (metrics.json, exit 0) `seconds` after its
    start, or exits as preempted at the next poll after SIGTERM."""

    def __init__(self, clock: _Clock, seconds: float, run_dir: Path) -> None:
        self.clock, self.end, self.run_dir = clock, clock.now + seconds, run_dir
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.clock.now >= self.end:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "metrics.json").write_text("{}")
            self.returncode = 0
        return self.returncode

    def send_signal(self, signum: int) -> None:
        assert signum == signal.SIGTERM
        if self.returncode is None:
            self.returncode = paths.EXIT_PREEMPTED

    def wait(self, timeout: float | None = None) -> int | None:
        return self.poll()


def test_a_run_that_does_not_fit_fills_an_idle_slot_and_yields_it(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Slots go to runs that fit first; a run that does not fit only fills an idle slot, gives
    it back (SIGTERM) when runs that fit become ready, and resumes in a free slot later. On a
    fake clock (runs of 1 s, 60 s and 0.5 s, a 12 s budget), so a loaded machine's process
    start-up cannot reorder them. Red when a filler never yields its slot."""
    from benchmarks import window

    clock = _Clock()
    seconds = {"dense": 1.0, "reparam": 60.0, "magnitude": 0.5}
    started: list[str] = []

    def fake_launch(job: window.Job, logs: Path, env: dict[str, str]) -> None:
        started.append(job.spec.label)
        job.log = logs / "log"
        job.proc = _FakeRun(clock, seconds[job.spec.method], job.run_dir)
        job.started, job.status = clock.perf_counter(), "running"

    monkeypatch.setattr(window_runs, "launch", fake_launch)
    monkeypatch.setattr(window_runs, "time", clock)
    specs = [window.Spec("conv4", "dense", None), window.Spec("conv4", "reparam", 0.9),
             window.Spec("conv4", "magnitude", 0.9, needs_dense=True),
             window.Spec("conv4", "magnitude", 0.95, needs_dense=True)]
    jobs = [window.Job(s, [], tmp_path / str(i), 1, 128) for i, s in enumerate(specs)]
    estimates = {"dense": 2.0, "reparam": 1e6, "magnitude": 1.0}
    deadline = clock.perf_counter() + 12
    window.schedule(jobs, deadline, 2, tmp_path, {}, lambda j: estimates[j.spec.method],
                    poll_s=0.05)
    assert [j.status for j in jobs] == ["finished", "unfinished", "finished", "finished"]
    assert started == ["conv4 dense", "conv4 reparam s=0.9", "conv4 magnitude s=0.9",
                       "conv4 magnitude s=0.95", "conv4 reparam s=0.9"]
    assert jobs[0].ended <= min(jobs[2].started, jobs[3].started)
    assert clock.now >= deadline and jobs[1].ended >= deadline  # stopped by the budget


def test_sync_free_topk_equals_the_previous_masks() -> None:
    from benchmarks.engine_changes import _previous_fast_topk_mask
    from prunebench.baselines.edgepopup import fast_topk_mask

    gen = torch.Generator().manual_seed(0)
    for n, k, levels in ((100, 30, 4), (257, 100, 3), (64, 63, 2), (50, 1, 50), (40, 0, 5),
                         (40, 40, 5)):
        score = torch.randint(0, levels, (n,), generator=gen).float()  # many ties
        assert torch.equal(fast_topk_mask(score, k), _previous_fast_topk_mask(score, k))


def test_reparam_gradients_match_the_twice_computed_gate() -> None:
    """The one-gate step's gradients equal those of the previous code (h_t(w) computed again
    by the budget loss) up to float summation order."""
    from benchmarks.engine_changes import previous_code
    from prunebench.data.prepared import DeviceData

    data = DeviceData(synthetic_prepared(16, 0, 8), CPU, 0.0)
    x, y = next(data.train_batches_from(8, torch.Generator().manual_seed(0), 0, False)[0])
    grads = []
    for old in (False, True):
        built = build("conv4", "reparam", data, CPU, 8)
        if old:
            with previous_code("reparam"):
                loss = (torch.nn.functional.cross_entropy(built.model(x), y)
                        + built.method.regularizer(built.model))
        else:
            loss = (torch.nn.functional.cross_entropy(built.model(x), y)
                    + built.method.regularizer(built.model))
        loss.backward()
        grads.append([p.grad.clone() for p in built.model.parameters()])
    for new, old in zip(*grads, strict=True):
        assert torch.allclose(new, old, rtol=1e-4, atol=1e-7)  # t's: a float32 sum of ~2k
