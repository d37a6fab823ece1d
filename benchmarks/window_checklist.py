"""The first-GPU checklist, the first thing the GPU window (`benchmarks.window`) runs: six checks
of what only a GPU can show, each a row of `window_checklist.csv` (docs/development.md lists them).

1. `prunebench doctor` (the window stops here if a run would fail);
2. SIGTERM + resume: a run stopped mid-epoch and rerun ends equal to an uninterrupted twin
   (both deterministic), which proves the resume on this device;
3. two packed runs visible at once: the twin runs of step 2 train side by side on one device;
4. fp32 vs bf16 final evaluation: the twin's saved network evaluated both ways (predictions that
   flip, top-1 of each) and against the number the run recorded;
5. compile on gumbel, edge-popup and reparam: first-compilation seconds, compiled / eager step
   time, graphs compiled after the first epoch (must be 0);
6. cudnn.benchmark on / off (and deterministic) step time of dense conv4 and resnet18.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO, PhaseStepper, build, interleaved, median, synthetic_prepared
from benchmarks.window_runs import ended_how

COMPILED_METHODS = ("gumbel", "edgepopup", "reparam")
VOLATILE = {"train_seconds", "wall_seconds", "run_dir", "git_commit", "hostname", "device_slot"}


def row(step: int, check: str, status: str, result: str, seconds: float) -> dict[str, Any]:
    return {"step": step, "check": check, "status": status, "result": result,
            "seconds": round(seconds, 1)}


def doctor(device: torch.device, env: dict[str, str], log: Path) -> dict[str, Any]:
    """1. `prunebench doctor --device <device>`: its report in `log`, its verdict in the row."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "prunebench", "doctor", "--device", device.type]
    if device.type == "cpu":  # --tiny: inductor's first C++ build and the probes take minutes
        cmd += ["--no-compile", "--no-probe"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log.write_text(res.stdout + res.stderr)
    last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or [""]
    status = "ok" if res.returncode == 0 else f"failed: {ended_how(res.returncode)}"
    return row(1, "prunebench doctor", status, last[0][:300], time.perf_counter() - t0)


def _run_cmd(run_dir: Path, dataset: str, data_dir: Path, device: torch.device) -> list[str]:
    cmd = [sys.executable, "-m", "prunebench", "run", "--dataset", dataset, "--arch", "conv4",
           "--method", "dense", "--seed", "0", "--run-dir", str(run_dir), "epochs=2",
           f"data_dir={data_dir}", f"device={device.type}", "deterministic=true",
           "checkpoint_every_s=0"]
    return cmd + (["train_images=400"] if device.type == "cpu" else [])  # --tiny: a short run


def _training(log: Path) -> bool:
    return log.exists() and " run " in log.read_text()


def _stable(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in VOLATILE}


def resume_and_packing(folder: Path, dataset: str, data_dir: Path, device: torch.device,
                       env: dict[str, str], timeout_s: float) -> tuple[list[dict[str, Any]],
                                                                        Path | None]:
    """2 and 3. Twin conv4 dense runs (2 epochs, deterministic) started together with the
    window's slots; both must train at once; one gets SIGTERM a second after its training
    starts (mid-epoch: the signal is acted on after the next step), is rerun, and must end
    equal to the other. Returns the rows and the twin's run folder."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    twin, stopped = folder / "uninterrupted", folder / "stopped"
    logs = {d: folder / f"{d.name}.log" for d in (twin, stopped)}
    procs = {}
    for d in (twin, stopped):
        with open(logs[d], "w") as out:
            procs[d] = subprocess.Popen(_run_cmd(d, dataset, data_dir, device), cwd=REPO,
                                        env=env, stdout=out, stderr=subprocess.STDOUT)
    together = ""
    while time.monotonic() < deadline and not together:
        if all(_training(logs[d]) for d in procs) and all(p.poll() is None
                                                         for p in procs.values()):
            together = f"both training at {time.perf_counter() - t0:.1f} s"
            together += _gpu_processes(procs.values(), device)
        elif any(p.poll() is not None for p in procs.values()):
            break
        time.sleep(0.05)
    while (time.monotonic() < deadline and procs[stopped].poll() is None
           and not _training(logs[stopped])):
        time.sleep(0.02)
    time.sleep(1.0)  # inside the training loop, whose handler checkpoints
    if procs[stopped].poll() is None:
        procs[stopped].send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    stop_rc = procs[stopped].returncode
    packed = row(3, "two packed runs visible at once", "ok" if together else "failed",
                 together or "the two runs never trained at the same time "
                 f"(exits: {', '.join(ended_how(p.returncode) for p in procs.values())})",
                 time.perf_counter() - t0)
    where = "not stopped"
    ckpt = stopped / "checkpoint.pt"
    if stop_rc == 75 and ckpt.exists():
        mid = torch.load(ckpt, weights_only=True, map_location="cpu")["mid_epoch"]
        where = f"mid-epoch at step {mid['step']}" if mid else "at an epoch end"
    with open(logs[stopped], "a") as out:
        rerun = subprocess.run(_run_cmd(stopped, dataset, data_dir, device), cwd=REPO, env=env,
                               stdout=out, stderr=subprocess.STDOUT,
                               timeout=max(deadline - time.monotonic(), timeout_s))
    if procs[twin].returncode != 0 or rerun.returncode != 0 or stop_rc != 75:
        status = (f"failed: twin {ended_how(procs[twin].returncode)}, stopped run "
                  f"{ended_how(stop_rc)}, rerun {ended_how(rerun.returncode)} (logs in {folder})")
        return [row(2, "SIGTERM + resume", status, where, time.perf_counter() - t0), packed], None
    a, b = _stable(twin), _stable(stopped)
    differ = sorted(k for k in a if a[k] != b.get(k))
    status = "ok" if not differ else "failed: the resumed run differs"
    result = (f"stopped {where}, resumed: " + ("equal to the uninterrupted run (test_top1 "
              f"{a['test_top1']:.2f})" if not differ else f"differs in {', '.join(differ[:8])}"))
    return [row(2, "SIGTERM + resume", status, result, time.perf_counter() - t0), packed], twin


def _gpu_processes(procs: Any, device: torch.device) -> str:
    """'; nvidia-smi lists both' when nvidia-smi shows the runs' pids on the device."""
    if device.type != "cuda" or shutil.which("nvidia-smi") is None:
        return ""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    pids = [str(p.pid) for p in procs]
    return f"; nvidia-smi lists {sum(p in out for p in pids)} of the 2 run processes"


def precision_of_evaluation(run_dir: Path | None, dataset: str, data_dir: Path,
                            device: torch.device) -> dict[str, Any]:
    """4. The twin's saved network on the test split in fp32 and under bf16 autocast over
    channels_last (how runs evaluated before): top-1 of each, predictions that differ, and
    whether fp32 reproduces the recorded number on the device and on the CPU."""
    import prunebench
    from prunebench.data.prepared import DeviceData, load_prepared

    t0 = time.perf_counter()
    if run_dir is None:
        return row(4, "fp32 vs bf16 final evaluation", "skipped: no finished run (step 2)",
                   "", 0.0)
    saved = prunebench.load_run(run_dir)
    recorded = json.loads((run_dir / "metrics.json").read_text())["test_top1_extracted"]
    prepared = load_prepared(dataset, data_dir)
    preds = {}
    for name, dev, amp in (("fp32", device, False), ("bf16", device, True),
                           ("cpu fp32", torch.device("cpu"), False)):
        model = saved.model.to(dev)
        data = DeviceData(prepared, dev, 0.1, channels_last=amp)
        if amp:
            model = model.to(memory_format=torch.channels_last)
        out = []
        with torch.no_grad():
            for x, _ in data.eval_batches("test", 1024):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    out.append(model(x).float().argmax(1).cpu())
        model.to(memory_format=torch.contiguous_format)
        preds[name] = torch.cat(out)
    labels = prepared.tensors["test_y"]
    top1 = {k: 100.0 * float((v == labels).double().mean()) for k, v in preds.items()}
    flips = int((preds["fp32"] != preds["bf16"]).sum())
    same = top1["fp32"] == recorded and top1["cpu fp32"] == recorded
    result = (f"fp32 {top1['fp32']:.2f}, bf16 {top1['bf16']:.2f} ({flips} of {len(labels)} "
              f"predictions differ); recorded {recorded:.2f}, CPU fp32 {top1['cpu fp32']:.2f}")
    return row(4, "fp32 vs bf16 final evaluation",
               "ok" if same else "failed: fp32 does not reproduce the recorded number", result,
               time.perf_counter() - t0)


def compile_methods(device: torch.device, size: int, batch: int, steps: int, cap_s: float
                    ) -> dict[str, Any]:
    """5. torch.compile on gumbel, edge-popup and reparam (conv4, the run's precision): the
    first compiled epoch's seconds, compiled / eager step time, and the graphs compiled in two
    later epochs (must be 0: no recompilation per step)."""
    from torch._dynamo.utils import counters

    t0 = time.perf_counter()
    parts, failed, skipped = [], [], []
    for method in COMPILED_METHODS:
        if time.perf_counter() - t0 > cap_s:
            parts.append(f"{method}: skipped (cap {cap_s:.0f} s)")
            skipped.append(method)
            continue
        try:
            data = _data(steps, batch, size, device)
            eager = PhaseStepper(build("conv4", method, data, device, batch), 0)
            torch._dynamo.reset()
            counters.clear()
            t1 = time.perf_counter()
            compiled = PhaseStepper(build("conv4", method, data, device, batch,
                                          overrides={"compile": "true"}), 0)
            compiled.step_seconds()
            first = time.perf_counter() - t1
            graphs = counters["stats"]["unique_graphs"]
            eager.step_seconds()
            ce, ee = interleaved([compiled.step_seconds, eager.step_seconds], 2)
            again = counters["stats"]["unique_graphs"] - graphs
            parts.append(f"{method}: first epoch {first:.1f} s, step {median(ce) / median(ee):.2f}"
                         f"x eager, {again} graphs compiled after the first epoch")
            if again:
                failed.append(method)
        except Exception as e:  # noqa: BLE001 - a method this torch cannot compile is a result
            parts.append(f"{method}: {type(e).__name__}: {str(e)[:150]}")
            failed.append(method)
    torch._dynamo.reset()
    status = (f"failed: {', '.join(failed)}" if failed else "skipped: time cap" if skipped
              == list(COMPILED_METHODS) else "ok")
    return row(5, "compile on gumbel/edgepopup/reparam", status, "; ".join(parts),
               time.perf_counter() - t0)


def cudnn_timing(device: torch.device, size: int, batch: int, steps: int, repeats: int,
                 archs: tuple[str, ...]) -> dict[str, Any]:
    """6. Step time of dense conv4 and resnet18 with cudnn.benchmark on (the default), off,
    and deterministic (the papers' grid setting), interleaved; ratios to benchmark on."""
    from prunebench.training import cuda

    t0 = time.perf_counter()
    parts = []
    for arch in archs:
        data = _data(steps, batch, size, device)
        fast = build(arch, "dense", data, device, batch)
        exact = build(arch, "dense", data, device, batch, overrides={"deterministic": "true"})
        off = build(arch, "dense", data, device, batch)
        a = off.trainer.accel
        off.trainer.accel = cuda.Accel(a.amp, a.channels_last, None, False, False)
        fns = [_timed_with(PhaseStepper(b, 0)) for b in (fast, off, exact)]
        for f in fns:
            f()  # warm-up: cuDNN autotuning where on
        on_t, off_t, det_t = interleaved(fns, repeats)
        parts.append(f"{arch}: benchmark off {median(off_t) / median(on_t):.2f}x, deterministic "
                     f"{median(det_t) / median(on_t):.2f}x of benchmark on "
                     f"({1e3 * median(on_t):.1f} ms/step)")
    note = "" if device.type == "cuda" else " (CPU: cuDNN absent, the code path only)"
    return row(6, "cudnn.benchmark on/off timing", "ok", "; ".join(parts) + note,
               time.perf_counter() - t0)


def _timed_with(stepper: PhaseStepper) -> Callable[[], float]:
    """The stepper's step seconds with its trainer's switches applied, as in a run."""
    from prunebench.training import cuda

    def go() -> float:
        with cuda.applied(stepper.trainer.accel):
            return stepper.step_seconds()
    return go


def _data(steps: int, batch: int, size: int, device: torch.device) -> Any:
    from prunebench.data.prepared import DeviceData
    from prunebench.training.cuda import gpu_paths

    return DeviceData(synthetic_prepared(steps * batch, 0, size), device, 0.0,
                      channels_last=gpu_paths(device))


def run(out: Path, dataset: str, data_dir: Path, device: torch.device, env: dict[str, str],
        sizes: tuple[int, int, int, int], cap_s: float, say: Callable[[str], None]
        ) -> list[dict[str, Any]]:
    """Steps 2-6 (step 1, the doctor, runs before the data is prepared), within about `cap_s`
    seconds; each step's row as it ends."""
    size, batch, steps, repeats = sizes
    t_end = time.perf_counter() + cap_s
    rows, twin = resume_and_packing(out / "checklist", dataset, data_dir, device, env,
                                    timeout_s=max(0.5 * cap_s, 120.0))
    for r in rows:
        say(f"[checklist] {r['step']}. {r['check']}: {r['status']}: {r['result']}")
    steps_of = [lambda: precision_of_evaluation(twin, dataset, data_dir, device),
                lambda: compile_methods(device, size, batch, steps,
                                        max(0.6 * (t_end - time.perf_counter()), 30.0)),
                lambda: cudnn_timing(device, size, batch, steps, repeats,
                                     ("conv4",) if device.type == "cpu" else
                                     ("conv4", "resnet18"))]
    for step in steps_of:
        forced = env.get("PRUNEBENCH_GPU_PATHS_ON_CPU")
        before = os.environ.get("PRUNEBENCH_GPU_PATHS_ON_CPU")
        if forced:
            os.environ["PRUNEBENCH_GPU_PATHS_ON_CPU"] = forced
        try:
            r = step()
        finally:
            if forced:
                if before is None:
                    os.environ.pop("PRUNEBENCH_GPU_PATHS_ON_CPU")
                else:
                    os.environ["PRUNEBENCH_GPU_PATHS_ON_CPU"] = before
        say(f"[checklist] {r['step']}. {r['check']}: {r['status']}: {r['result']}")
        rows.append(r)
    return sorted(rows, key=lambda r: r["step"])
