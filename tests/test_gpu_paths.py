"""The GPU paths run on the CPU: bf16 autocast (on "cpu"), channels_last and torch.compile,
selected as on CUDA by the run's settings plus the test-only switch PRUNEBENCH_GPU_PATHS_ON_CPU
(prunebench/training/cuda.py). Every registered method on conv2 and resnet18 (digits): finite
loss, exact K, a mid-epoch SIGTERM then resume identical to the uninterrupted run, no
recompilation per step and no host sync inside a step. Also the engine's checkpoint policy and
the fp32 final evaluation that makes the saved network reproduce the recorded number."""
from __future__ import annotations

import gc
import json
import os
import signal
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

import prunebench
from benchmarks.common import PhaseStepper, build, synthetic_prepared
from prunebench import paths
from prunebench.data.prepared import DeviceData, load_prepared
from prunebench.errors import Preempted
from prunebench.plan.config import resolve
from prunebench.training import cuda
from prunebench.training import run as run_module
from prunebench.training import train as train_module
from prunebench.training.metrics import evaluate
from prunebench.training.registry import list_methods
from prunebench.training.run import execute

CPU = torch.device("cpu")
ARCHS = ("conv2", "resnet18")
TRAIN_IMAGES = 480  # a class-stratified subset of digits: about 15 steps of 32 per epoch
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def gpu_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test-only switch: a CPU run takes the GPU paths (compile: inductor)."""
    monkeypatch.setenv(cuda.FORCE_ENV, "1")


def _run(digits_dir: Path, run_dir: Path, method: str = "dense", sparsity: float | None = None,
         arch: str = "conv2", **train: str) -> dict[str, Any]:
    overrides = {"epochs": "1", "device": "cpu", "data_dir": str(digits_dir), **train}
    return execute(resolve("digits", arch, method, sparsity, 0, overrides=overrides), run_dir)


# -- defect 3: the saved network reproduces the recorded number --------------------------------
def test_saved_network_reproduces_the_number_a_bf16_run_records(
        digits_dir: Path, tmp_path: Path, gpu_paths: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that trains in bf16 over channels_last (what CUDA does) records fp32 numbers of the
    contiguous network: the network `load_run` gives back scores exactly them on the CPU. The
    recorded test accuracy came from bf16 autocast before (its loss differs in every run)."""
    real_init = train_module.Trainer.__init__

    def bf16_trainer(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self.amp = True  # as on a CUDA device with native bf16

    monkeypatch.setattr(train_module.Trainer, "__init__", bf16_trainer)
    metrics = _run(digits_dir, tmp_path / "run", selection="val")
    saved = prunebench.load_run(tmp_path / "run")
    data = DeviceData(load_prepared("digits", digits_dir), CPU, 0.1)
    again = evaluate(saved.model, data.eval_batches("test", 1024), amp=False)
    assert (again["top1"], again["loss"]) == (metrics["test_top1_extracted"], metrics["test_loss"])
    assert metrics["precision"] == "bf16" and metrics["eval_precision"] == "fp32"
    assert metrics["channels_last_used"] is True


# -- defects 4, 5: the run's switches while it computes ----------------------------------------
def test_run_applies_its_switches_while_it_computes(digits_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """deterministic=true sets PyTorch's three switches for the run (and the run records it);
    fp32 is IEEE fp32 (no TF32) in every run; the process's switches come back after."""
    seen: list[tuple[Any, ...]] = []
    real_run = train_module.Trainer.run

    def spy(self: Any) -> Any:
        seen.append((torch.are_deterministic_algorithms_enabled(),
                     torch.backends.cudnn.deterministic, os.environ.get(cuda.CUBLAS_ENV),
                     torch.backends.cudnn.conv.fp32_precision,
                     torch.backends.cuda.matmul.fp32_precision))
        return real_run(self)

    monkeypatch.setattr(train_module.Trainer, "run", spy)
    monkeypatch.delenv(cuda.CUBLAS_ENV, raising=False)
    before = torch.backends.cudnn.conv.fp32_precision
    metrics = _run(digits_dir, tmp_path / "exact", deterministic="true")
    assert seen == [(True, True, ":4096:8", "ieee", "ieee")]
    assert metrics["deterministic_algorithms"] is True and metrics["cudnn_benchmark"] is False
    assert not torch.are_deterministic_algorithms_enabled() and cuda.CUBLAS_ENV not in os.environ
    assert torch.backends.cudnn.conv.fp32_precision == before
    _run(digits_dir, tmp_path / "fast")
    assert seen[1] == (False, False, None, "ieee", "ieee")


# -- defect 7: checkpoints at most every N seconds, at phase ends, always on SIGTERM -----------
def _saves(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, bool]]:
    """(phase, global epoch, mid-epoch) of every checkpoint the runs of this test save."""
    saved: list[tuple[int, int, bool]] = []
    real = run_module.save_torch

    def spy(path: Path, obj: Any) -> None:
        saved.append((obj["loop"]["phase"], obj["loop"]["global_epoch"],
                      obj["mid_epoch"] is not None))
        real(path, obj)

    monkeypatch.setattr(run_module, "save_torch", spy)
    return saved


@pytest.mark.slow
def test_checkpoints_at_most_every_interval_and_at_phase_ends(
        digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """magnitude_ft, 2 dense epochs then 1 fine-tuning epoch, checkpoint_every_s=3600: the
    first epoch end of the process and the phase end save, the second epoch does not (every
    epoch saved before: 90 MB and an fsync per sub-second epoch on a GPU)."""
    saves = _saves(monkeypatch)
    _run(digits_dir, tmp_path / "sparse", "magnitude_ft", 0.8, epochs="2",
         checkpoint_every_s="3600", **{"method.ft_epochs": "1"})
    assert saves == [(0, 1, False), (1, 2, False)]


@pytest.mark.slow
def test_sigterm_always_saves_whatever_the_interval(
        digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from faultlaunch import steps_per_epoch

    saves = _saves(monkeypatch)
    steps = Counter()
    real_set_lr = train_module.Trainer._set_lr
    at = steps_per_epoch(digits_dir) + 5  # in the second epoch

    def term_at_step(self: Any, *args: Any) -> float:
        steps["n"] += 1
        if steps["n"] == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_set_lr(self, *args)

    monkeypatch.setattr(train_module.Trainer, "_set_lr", term_at_step)
    with pytest.raises(Preempted, match="checkpoint saved at step 5 of epoch 2"):
        _run(digits_dir, tmp_path / "run", epochs="3", checkpoint_every_s="3600")
    assert saves == [(0, 1, False), (0, 1, True)]


# -- defect 7: nothing of the loaded checkpoint stays referenced -----------------------------
@pytest.mark.slow
def test_resumed_run_holds_no_reference_to_the_loaded_checkpoint(
        digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loaded checkpoint (weights, optimiser state, the best state, generator states) was
    kept referenced for the whole resumed run: a second copy of the model on the host. Its
    weight tensors are freed before training continues; Adam's step counters stay on the CPU
    (a CUDA step counter would cost a host sync per parameter and step)."""
    run_dir = tmp_path / "run"
    monkeypatch.setattr(run_module.Trainer, "run", _preempt_after_first_epoch(
        run_module.Trainer.run))
    with pytest.raises(Preempted):
        _run(digits_dir, run_dir, "reparam", 0.8, epochs="2", checkpoint_every_s="0")
    monkeypatch.undo()
    loaded: list[weakref.ref] = []
    real_load = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        ckpt = real_load(*args, **kwargs)
        if "config_digest" in ckpt:  # the checkpoint (the dataset file is loaded too)
            loaded.extend(weakref.ref(t) for t in ckpt["model"].values())
        return ckpt

    alive: list[int] = []
    steps: list[str] = []
    real_run, real_setup = train_module.Trainer.run, train_module.Trainer.setup_phase

    def run(self: Any) -> Any:
        gc.collect()
        alive.append(sum(r() is not None for r in loaded))
        return real_run(self)

    def setup_phase(self: Any, phase: Any) -> Any:
        optimizers = real_setup(self, phase)
        steps.extend(str(st["step"].device) for o in optimizers for st in o.state.values()
                     if "step" in st)
        return optimizers

    monkeypatch.setattr(torch, "load", load)
    monkeypatch.setattr(train_module.Trainer, "run", run)
    monkeypatch.setattr(train_module.Trainer, "setup_phase", setup_phase)
    _run(digits_dir, run_dir, "reparam", 0.8, epochs="2", checkpoint_every_s="0")
    assert "resumed from" in (run_dir / paths.LOG).read_text()
    assert loaded and alive == [0]
    assert steps and set(steps) == {"cpu"}


def _preempt_after_first_epoch(real_run: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(self: Any) -> Any:
        real_end = self.end_epoch

        def end_epoch(epoch: Any, optimizers: Any, flag: Any) -> None:
            flag.signum = signal.SIGTERM
            real_end(epoch, optimizers, flag)

        self.end_epoch = end_epoch
        return real_run(self)
    return run


# -- every method on the GPU paths --------------------------------------------------------------
SYNCING = {"item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__float__", "__int__",
           "__index__", "equal", "allclose", "is_nonzero", "masked_select", "unique",
           "_local_scalar_dense"}


class HostSyncs(TorchFunctionMode):
    """Counts the tensor operations that make the host wait for a CUDA device (a value or a
    data-dependent shape read back), on every tensor but `host` (tensors a CUDA run keeps on the
    CPU: the optimisers' step counters). A TorchFunctionMode sees the calls of torch's own Python
    (optimisers, parametrizations) as well as ours."""

    def __init__(self, host: set[int]) -> None:
        super().__init__()
        self.host = host
        self.counts: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        name = getattr(func, "__name__", "")
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and id(first) not in self.host:
            bool_index = (name == "__getitem__" and len(args) > 1
                          and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool)
            to_host = name == "to" and any(str(a) == "cpu" for a in (*args[1:],
                                                                     *(kwargs or {}).values()))
            if name in SYNCING or bool_index or to_host:
                self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def _stepper(method: str, arch: str, phase: int, steps: int) -> PhaseStepper:
    data = DeviceData(synthetic_prepared(steps * 8, 0, 8), CPU, 0.0, channels_last=True)
    return PhaseStepper(build(arch, method, data, CPU, 8), phase)


def _phases(method: str) -> range:
    return range(2) if method == "magnitude_ft" else range(1)


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_no_host_sync_inside_a_training_step(method: str, gpu_paths: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every method, every phase, on the GPU paths (bf16 autocast, channels_last): zero
    operations that read a device value back inside `Trainer.train_step` (forward, regulariser,
    backward, optimiser steps), over several steps after the first."""
    counts: Counter[str] = Counter()
    real_step = train_module.Trainer.train_step

    def counted(self: Any, x: Any, y: Any, optimizers: Any, epoch: Any) -> None:
        host = {id(st["step"]) for o in optimizers for st in o.state.values() if "step" in st}
        if epoch.record.step == 0:  # the first step creates the optimisers' state
            return real_step(self, x, y, optimizers, epoch)
        with HostSyncs(host) as mode:
            real_step(self, x, y, optimizers, epoch)
        counts.update(mode.counts)

    monkeypatch.setattr(train_module.Trainer, "train_step", counted)
    for phase in _phases(method):
        stepper = _stepper(method, "conv2", phase, 4)
        assert stepper.trainer.amp and stepper.trainer.accel.channels_last
        stepper.step_seconds()
    assert counts == Counter(), (method, counts)


def test_the_host_sync_counter_sees_a_sync() -> None:
    """Control: a step that reads its loss back, or masks by a device condition, is counted."""
    x = torch.randn(8)
    with HostSyncs(set()) as mode:
        float(x.sum())
        x[x > 0]
        bool((x > 0).any())
        x.to("cpu")
    assert mode.counts == Counter({"__float__": 1, "__getitem__": 1, "__bool__": 1, "to": 1})


@contextmanager
def compilations() -> Iterator[Counter]:
    """A torch.compile backend that counts every graph it is handed (first compilations,
    recompilations and graph-break pieces alike) and runs it eagerly."""
    counts: Counter = Counter()

    def backend(gm: torch.fx.GraphModule, _inputs: Any) -> Callable[..., Any]:
        counts["graphs"] += 1
        return gm.forward

    real = cuda.accel_for

    def accel_for(cfg: Any, device: torch.device) -> cuda.Accel:
        accel = real(cfg, device)
        return cuda.Accel(accel.amp, accel.channels_last, backend, accel.deterministic,
                          accel.cudnn_benchmark, accel.note)

    torch._dynamo.reset()
    cuda.accel_for = accel_for
    try:
        yield counts
    finally:
        cuda.accel_for = real
        torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(list_methods()))
def test_no_recompilation_per_step(method: str, gpu_paths: None) -> None:
    """compile=true on the GPU paths: the graphs are compiled in the first epoch; a second and
    third epoch (a validation pass between, the lr changing every step) compile nothing."""
    for phase in _phases(method):
        with compilations() as counts:
            data = DeviceData(synthetic_prepared(6 * 8, 16, 8), CPU, 0.25, channels_last=True)
            built = build("conv2", method, data, CPU, 8, overrides={"compile": "true"})
            stepper = PhaseStepper(built, phase)
            stepper.step_seconds()
            first = counts["graphs"]
            stepper.step_seconds()
            stepper.step_seconds()
        assert first > 0 and counts["graphs"] == first, (method, phase, first, counts)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("method", ["gumbel", "edgepopup", "reparam"])
def test_inductor_compiles_the_methods_of_the_checklist(method: str, gpu_paths: None) -> None:
    """The first-GPU checklist's compile step on the CPU: inductor compiles the training step
    of gumbel, edge-popup and reparam once, and a compiled epoch trains (finite loss)."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    data = DeviceData(synthetic_prepared(3 * 8, 0, 8), CPU, 0.0, channels_last=True)
    stepper = PhaseStepper(build("conv2", method, data, CPU, 8, overrides={"compile": "true"}),
                           0)
    stepper.step_seconds()
    graphs = counters["stats"]["unique_graphs"]
    stepper.step_seconds()
    assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs
    assert all(torch.isfinite(torch.tensor(r["train_loss"]))
               for r in stepper.trainer.state.history)
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def gpu_launcher() -> Iterator[Any]:
    """tests/faultlaunch.py's forking launcher, its runs on the GPU paths (the switch set)."""
    from faultlaunch import Launcher

    before = os.environ.get(cuda.FORCE_ENV)
    os.environ[cuda.FORCE_ENV] = "1"
    try:
        launch = Launcher()
    finally:
        if before is None:
            os.environ.pop(cuda.FORCE_ENV)
        else:
            os.environ[cuda.FORCE_ENV] = before
    yield launch
    launch.close()


def _gpu_run_args(method: str, arch: str, digits_dir: Path, run_dir: Path) -> list[str]:
    from faultlaunch import SETTINGS

    _, sparsity, _ = SETTINGS[method]
    argv = ["run", "--dataset", "digits", "--arch", arch, "--method", method, "--seed", "1",
            "epochs=1", f"data_dir={digits_dir}", "device=cpu", "checkpoint_every_s=0",
            f"train_images={TRAIN_IMAGES}", "--run-dir", str(run_dir)]
    if method == "magnitude_ft":
        argv.append("method.ft_epochs=1")
    return argv + (["--sparsity", sparsity] if sparsity else [])


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", sorted(list_methods()))
def test_every_method_on_the_gpu_paths_resumes_exactly(
        method: str, arch: str, gpu_launcher: Any, digits_dir: Path, tmp_path: Path) -> None:
    """bf16 autocast + channels_last on digits: finite loss, exact K, and a SIGTERM in the middle
    of the last epoch then a rerun end with exactly the uninterrupted run's result."""
    from faultlaunch import PREEMPTED, log_text, outcome

    ref_dir, run_dir, log = tmp_path / "ref", tmp_path / "run", tmp_path / "run.log"
    assert gpu_launcher.attempt(_gpu_run_args(method, arch, digits_dir, ref_dir), log) == 0, \
        log_text(log)[-3000:]
    ref = outcome(ref_dir)
    metrics = json.loads((ref_dir / paths.METRICS).read_text())
    assert metrics["precision"] == "bf16" and metrics["channels_last_used"] is True
    assert all(torch.isfinite(torch.tensor(float(r["train_loss"]))) for r in ref["history"])
    if metrics["budgeted"]:
        from prunebench.training.masking import budget_count

        assert metrics["kept_prunable"] == budget_count(metrics["num_prunable"],
                                                        metrics["sparsity_target"])
    phases = 2 if method == "magnitude_ft" else 1
    train = DeviceData(load_prepared("digits", digits_dir), CPU, 0.1, train_images=TRAIN_IMAGES)
    per_epoch = train.size("train") // 32
    term = [{"at": "step", "n": (phases - 1) * per_epoch + 7, "action": "term"}]
    argv = _gpu_run_args(method, arch, digits_dir, run_dir)
    assert gpu_launcher.attempt(argv, log, term) == PREEMPTED, log_text(log)[-3000:]
    ckpt = torch.load(run_dir / paths.CHECKPOINT, weights_only=True)
    assert ckpt["mid_epoch"]["step"] == 7
    assert gpu_launcher.attempt(argv, log) == 0, log_text(log)[-3000:]
    assert "resumed from" in (run_dir / paths.LOG).read_text()
    assert outcome(run_dir) == ref
