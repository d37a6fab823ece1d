"""`python -m benchmarks.window_worker ...`: one dense training job of the packing measurement
in `benchmarks.window`. It builds its model and warms up, says it is ready, then for each phase
trains one epoch of `--steps` steps through the engine's loop when the phase includes it, and
waits for the controller's go file between phases, so every packing level is timed on warm
processes started once. The controller watches its workers (`wait_all`): one that dies ends
the wait at once, with how it ended and its stderr file named."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from benchmarks.common import PhaseStepper, build, synthetic_prepared


class WorkerDied(RuntimeError):
    """A worker ended before writing a file the controller waits for."""


def wait_for(path: Path, timeout_s: float) -> str:
    """The text of `path` once it exists (polled every 5 ms)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(0.005)
    return path.read_text()


def wait_all(expected: dict[Path, tuple[int, subprocess.Popen]], timeout_s: float,
             stderr_of: dict[int, Path]) -> None:
    """Until every file of `expected` (file -> (worker index, its process)) exists. A worker
    that has ended without writing its file raises WorkerDied at once, saying how it ended and
    where its stderr is; TimeoutError after `timeout_s`."""
    from benchmarks.window_runs import ended_how

    deadline = time.monotonic() + timeout_s
    while True:
        missing = [(path, i, proc) for path, (i, proc) in expected.items() if not path.exists()]
        if not missing:
            return
        for path, i, proc in missing:
            if proc.poll() is not None and not path.exists():
                raise WorkerDied(f"worker {i} {ended_how(proc.returncode)} before writing "
                                 f"{path.name}; its stderr: {stderr_of[i]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{missing[0][0].name} did not appear within {timeout_s:.0f} s")
        time.sleep(0.005)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--size", type=int, required=True, help="image side")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, required=True, help="steps per phase")
    p.add_argument("--index", type=int, required=True, help="this worker's number")
    p.add_argument("--levels", required=True, help="workers per phase, e.g. 1,2,4")
    p.add_argument("--dir", required=True, help="folder of the ready/go/done files")
    p.add_argument("--timeout-s", type=float, default=300.0)
    p.add_argument("--die-at-phase", type=int, default=-1,
                   help="SIGKILL itself when this phase starts (the window's --tiny exercise of "
                   "a worker lost to the OOM killer)")
    a = p.parse_args()
    from prunebench.data.prepared import DeviceData

    folder = Path(a.dir)
    device = torch.device(a.device)
    data = DeviceData(synthetic_prepared(a.steps * a.batch, 0, a.size, seed=a.index), device,
                      0.0, channels_last=device.type == "cuda")
    stepper = PhaseStepper(build(a.arch, "dense", data, device, a.batch, seed=a.index), 0)
    stepper.step_seconds()  # warm-up: allocator, cuDNN autotuning
    (folder / f"ready-{a.index}").write_text("")
    for phase, workers in enumerate(int(n) for n in a.levels.split(",")):
        wait_for(folder / f"go-{phase}", a.timeout_s)
        if phase == a.die_at_phase:
            os.kill(os.getpid(), signal.SIGKILL)
        if a.index < workers:
            stepper.step_seconds()
            (folder / f"done-{phase}-{a.index}").write_text("")


if __name__ == "__main__":
    main()
