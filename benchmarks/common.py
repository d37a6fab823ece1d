"""Shared plumbing of the benchmarks: provenance columns, paired timing, CSV output, synthetic
data and building a method's model and trainer exactly as `prunebench run` does."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SKIP_NO_CUDA = "skipped: no CUDA device"
PENDING_GPU = "pending: needs a GPU run (python -m benchmarks.run on a CUDA machine)"
BUDGET_SPARSITY = 0.9  # the budget every budgeted method is benchmarked at


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores)"


def load_avg() -> float:
    """1-minute load average of the machine (how many runnable processes shared the cores)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


@dataclass
class Context:
    """One benchmark run: its mode, output folder and the provenance every row carries."""

    mode: str
    out: Path
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S"))
    commit: str = field(default_factory=git_commit)
    loads: list[float] = field(default_factory=list)

    def row(self, device: torch.device | str, **values: Any) -> dict[str, Any]:
        """A CSV row: the measured values first, then device, versions and the current load."""
        dev = torch.device(device) if isinstance(device, str) else device
        load = load_avg()
        self.loads.append(load)
        return {
            **values,
            "device": dev.type,
            "device_name": (device_name(dev) if dev.type != "cuda" or torch.cuda.is_available()
                            else "none"),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_1min": load,
            "mode": self.mode,
            "run_id": self.run_id,
            "git_commit": self.commit,
        }


def cuda_available() -> bool:
    return torch.cuda.is_available()


_clock: Callable[[], float] = time.perf_counter


def clock_name(device: torch.device) -> str:
    """What the timings of `device` read: process CPU time (CPU, see cpu_clock) or wall time."""
    if device.type == "cpu" and _clock is time.process_time:
        return "process CPU time, 1 torch thread"
    return "wall time" + (", device-synchronised" if device.type == "cuda" else "")


@contextmanager
def cpu_clock(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """On CPU: one torch thread, and every timer (ours and the training loop's own
    epoch_seconds) reads this process's CPU time instead of wall time. Other users' load on a
    shared machine then barely enters the numbers (measured on 2 cores at load 10: conv4 step
    CPU time within +-5 %, wall time +-15 % and 2.5x longer); a ratio of CPU times is the ratio
    an idle machine would show."""
    global _clock
    if device.type != "cpu" or not enabled:
        yield
        return
    import prunebench.training.train as train_module

    threads, module_time = torch.get_num_threads(), train_module.time
    torch.set_num_threads(1)
    train_module.time = SimpleNamespace(perf_counter=time.process_time)
    _clock = time.process_time
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        train_module.time = module_time
        _clock = time.perf_counter


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of `fn` takes (wall, or CPU time inside cpu_clock), with the device
    drained before and after."""
    sync(device)
    t0 = _clock()
    fn()
    sync(device)
    return _clock() - t0


def interleaved(fns: list[Callable[[], float]], repeats: int) -> list[list[float]]:
    """Call every fn once per repeat, the order rotating each repeat (A B C, B C A, ...); each
    returns the seconds it measured. Returns the times per fn. Measurements of one repeat are
    adjacent in time and share the machine's load of the moment, so per-repeat ratios cancel
    most of a shared machine's noise."""
    times: list[list[float]] = [[] for _ in fns]
    n = len(fns)
    for r in range(repeats):
        for j in range(n):
            k = (j + r) % n
            times[k].append(fns[k]())
    return times


def paired(a: Callable[[], float], b: Callable[[], float], repeats: int
           ) -> tuple[list[float], list[float], list[float]]:
    """A B, B A, A B, ... (`repeats` pairs). Returns (a times, b times, per-pair b/a ratios)."""
    ta, tb = interleaved([a, b], repeats)
    return ta, tb, [y / x if x > 0 else float("nan") for x, y in zip(ta, tb, strict=True)]


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def spread(ratios: list[float]) -> str:
    """min-max of the per-pair ratios, for the reader to judge the noise."""
    if not ratios:
        return ""
    return f"{min(ratios):.3f}-{max(ratios):.3f}"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write `rows` (union of keys, first-seen order, values formatted) atomically."""
    from prunebench.fileio import write_csv as write_rows

    write_rows(path, [{k: _fmt(v) for k, v in r.items()} for r in rows])


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def synthetic_prepared(n_train: int, n_test: int, size: int, num_classes: int = 10,
                       seed: int = 0):
    """A prepared dataset of random uint8 images (augmentation and training cost do not depend
    on the pixel values), in the engine's format, with no validation split."""
    from prunebench.data.prepared import PreparedData

    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "train_x": torch.randint(0, 256, (n_train, 3, size, size), dtype=torch.uint8,
                                 generator=gen),
        "train_y": torch.randint(0, num_classes, (n_train,), generator=gen),
        "test_x": torch.randint(0, 256, (n_test, 3, size, size), dtype=torch.uint8,
                                generator=gen),
        "test_y": torch.randint(0, num_classes, (n_test,), generator=gen),
        "val_idx": torch.zeros(0, dtype=torch.int64),
    }
    manifest = {"num_classes": num_classes, "image_shape": [3, size, size],
                "val_fraction": 0.0, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
                "num_train": n_train, "num_test": n_test}
    return PreparedData(tensors, manifest)


def is_budgeted(method: str) -> bool:
    """Whether `method` at its default options needs a budget (as the workflow decides it)."""
    from prunebench.training.registry import get_method

    cls = get_method(method)
    return cls(cls.hparams_cls.from_dict({}, f"method {method}"), None).is_budgeted()


@dataclass
class Built:
    """A method's model, trainer and config, built as `prunebench run` builds them."""

    model: nn.Module
    method: Any
    trainer: Any
    cfg: Any


def build(arch: str, method: str, data: Any, device: torch.device, batch_size: int,
          seed: int = 0, overrides: dict[str, str] | None = None) -> Built:
    """Model + method (prepared) + Trainer on `data` (a DeviceData), with the CIFAR-10 recipe
    for `arch` (plus `overrides`), the method's default options and a 0.9 budget when it needs
    one; the Trainer saves and logs nothing."""
    from prunebench.plan.config import resolve
    from prunebench.training.cuda import accel_for
    from prunebench.training.models import create_model
    from prunebench.training.run import build_method
    from prunebench.training.train import Trainer

    sparsity = BUDGET_SPARSITY if is_budgeted(method) else None
    cfg = resolve("cifar10", arch, method, sparsity, seed, {},
                  {"val_fraction": "0", "batch_size": str(batch_size), "device": str(device),
                   **(overrides or {})})
    accel = accel_for(cfg.train, device)
    torch.manual_seed(seed)
    _, size, _ = data.splits["train"][0].shape[1:]
    model = create_model(arch, data.num_classes, 3, size).to(device)
    if accel.channels_last:
        model = model.to(memory_format=torch.channels_last)
    m = build_method(cfg, data, device)
    m.prepare(model)
    trainer = Trainer(model, m, data, cfg.train, seed, device, save=lambda _ckpt: None,
                      log=lambda _line: None, accel=accel)
    return Built(model, m, trainer, cfg)


class PhaseStepper:
    """Times epochs of one training phase of a built method through the engine's own loop
    (Trainer.train_epoch): every per-step cost of a real run is inside the timing."""

    def __init__(self, built: Built, phase_index: int) -> None:
        from prunebench.training.train import SignalFlag

        tr = built.trainer
        for phase in tr.phases[:phase_index]:
            tr.setup_phase(phase)
            built.method.on_phase_end(built.model, phase)
        tr.state.phase = phase_index
        self.trainer = tr
        self.phase = tr.phases[phase_index]
        self.optimizers = tr.setup_phase(self.phase)
        self.flag = SignalFlag()
        self.steps = max(tr.data.size("train") // tr.cfg.batch_size, 1)

    def step_seconds(self) -> float:
        """Run one epoch; seconds per optimizer step (the loop's own timing, device-synced)."""
        tr = self.trainer
        tr.train_epoch(self.phase, self.optimizers, self.flag)
        tr.state.epoch = 0  # keep the lr schedule at its start: every epoch does the same work
        return tr.state.history[-1]["epoch_seconds"] / self.steps


def timed_phases(built: Built) -> list[int]:
    """Indices of the phases that train at least one epoch in the recipe."""
    return [i for i, p in enumerate(built.trainer.phases) if p.epochs > 0]


def no_parametrizations_left(model: nn.Module) -> bool:
    from torch.nn.utils import parametrize

    return not any(parametrize.is_parametrized(m) for m in model.modules())
