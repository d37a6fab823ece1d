"""Dense epoch time of every architecture of a config's grid, and from it (with the measured
per-method step-time ratios, checkpoint cost and per-job start-up) the estimated device-hours of
the whole grid. Only measured numbers go in: a device that was not measured gets a 'pending'
row, never a guess."""
from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    Context,
    PhaseStepper,
    build,
    clock_name,
    interleaved,
    median,
    synthetic_prepared,
)

# Training images before the validation split, and image side, of each dataset (published sizes).
DATASET_SIZES = {"cifar10": (50_000, 32), "cifar100": (50_000, 32),
                 "tinyimagenet": (100_000, 64), "digits": (1_437, 8)}
# Whose measured method ratios an architecture borrows: the BatchNorm-free conv nets conv4's,
# the BatchNorm nets resnet18's.
RATIO_FROM = {"conv2": "conv4", "conv4": "conv4", "conv6": "conv4", "vgg19": "resnet18",
              "resnet18": "resnet18"}
CIFAR_EPOCH_IMAGES = 45_000  # CIFAR-10 training images after the 10 % validation split
EVAL_COST = 1 / 3  # an eval forward costs about a third of a training step (fwd + 2x bwd)


def epoch_times(ctx: Context, device: torch.device, archs: list[str], sizes: dict[str, int],
                batch: int, steps: int, repeats: int) -> list[dict[str, Any]]:
    """Dense training-step time of each arch (engine defaults for the device), interleaved
    across archs, scaled to a CIFAR-10 epoch; plus the time to save one epoch's checkpoint."""
    from prunebench.data.prepared import DeviceData
    from prunebench.fileio import save_torch

    steppers, ckpt_s = {}, {}
    with tempfile.TemporaryDirectory(prefix="pb-bench-") as tmp:
        for arch in archs:
            data = DeviceData(synthetic_prepared(steps * batch, 0, sizes[arch]), device, 0.0,
                              channels_last=device.type == "cuda")
            stepper = PhaseStepper(build(arch, "dense", data, device, batch), 0)
            stepper.step_seconds()
            steppers[arch] = stepper
            saves = []
            for _ in range(max(repeats // 2, 1)):
                t0 = time.perf_counter()
                save_torch(Path(tmp) / "checkpoint.pt",
                           stepper.trainer.checkpoint(stepper.optimizers))
                saves.append(time.perf_counter() - t0)
            ckpt_s[arch] = median(saves)
        times = interleaved([steppers[a].step_seconds for a in archs], repeats)
    rows = []
    ref = None
    for arch, ts in zip(archs, times, strict=True):
        step = median(ts)
        size = sizes[arch]
        epoch_s = CIFAR_EPOCH_IMAGES / batch * step * (32 * 32) / (size * size)
        ref = ref or (epoch_s if arch == "conv4" else None)
        rows.append(ctx.row(
            device, benchmark="epoch_time", arch=arch, method="dense", batch_size=batch,
            image_size=size, repeats=repeats, steps_per_measurement=steps,
            dense_step_ms=1e3 * step, images_per_s=batch / step,
            cifar10_epoch_s=epoch_s, checkpoint_s=ckpt_s[arch], clock=clock_name(device),
            status="ok",
            note="engine defaults for the device (CUDA: bf16 autocast + channels_last); "
                 "cifar10_epoch_s = 45,000 images at the measured rate; checkpoint_s: wall "
                 "time of one epoch's checkpoint (model + optimizer, atomic write + fsync)"
                 + (f", scaled by pixels from {size}x{size} to 32x32" if size != 32 else "")))
    for r in rows:
        r["ratio"] = r["cifar10_epoch_s"] / ref if ref else float("nan")
        r["ratio_of"] = "cifar10_epoch_s / conv4 cifar10_epoch_s" if ref else ""
    return rows


def _ratio_table(overhead_rows: list[dict[str, Any]], device: str
                 ) -> dict[tuple[str, str, str], float]:
    table = {}
    for r in overhead_rows:
        if r.get("status") == "ok" and r.get("device") == device and "phase" in r:
            table[(r["arch"], r["method"], r["phase"])] = float(r["ratio"])
    return table


def estimate(ctx: Context, device: torch.device, jobs: list[Any],
             epoch_rows: list[dict[str, Any]], overhead_rows: list[dict[str, Any]],
             fixed_s: float, source: str) -> list[dict[str, Any]]:
    """Device-hours of every job of the grid, summed per (dataset, arch, method) and in total.

    job seconds = start-up + sum over phases of epochs x (train images x seconds per image x
    method ratio + validation images x seconds per image / 3 + checkpoint save). Epochs are
    each job's planned maximum: a run with early stopping (`patience` > 0: gumbel, supermask
    and ASLP's edge-popup in config/paper.yaml, 1000 epochs at patience 100) stops when its
    validation accuracy has not improved for `patience` epochs, which no CIFAR run has measured
    yet, so the figure is an upper bound for those jobs."""
    dev = device.type
    per_image = {r["arch"]: (1.0 / r["images_per_s"], r["image_size"], r["checkpoint_s"])
                 for r in epoch_rows if r.get("device") == dev and r.get("status") == "ok"}
    ratios = _ratio_table(overhead_rows, dev)
    repeats = max((int(r["repeats"]) for r in epoch_rows if r.get("device") == dev
                   and r.get("status") == "ok"), default=0)
    groups: dict[tuple[str, str, str], dict[str, float]] = defaultdict(
        lambda: {"jobs": 0, "epochs": 0, "seconds": 0.0})
    missing: set[str] = set()
    for job in jobs:
        if job.dataset not in DATASET_SIZES or job.arch not in per_image:
            missing.add(f"{job.dataset}/{job.arch}")
            continue
        n, side = DATASET_SIZES[job.dataset]
        s_img, size, ckpt = per_image[job.arch]
        s_img *= (side * side) / (size * size)
        seconds = fixed_s if fixed_s == fixed_s else 0.0
        epochs = 0
        for phase, ep in job.phases:
            if ep <= 0:
                continue
            key = (RATIO_FROM.get(job.arch, job.arch), job.method, phase)
            ratio = 1.0 if job.method == "dense" else ratios.get(key)
            if ratio is None:
                missing.add(f"ratio {key[1]}:{key[2]} on {key[0]}")
                ratio = 1.0
            train = n * (1 - job.val_fraction)
            val = n * job.val_fraction
            seconds += ep * (train * s_img * ratio + val * s_img * EVAL_COST + ckpt)
            epochs += ep
        g = groups[(job.dataset, job.arch, job.method)]
        g["jobs"] += 1
        g["epochs"] += epochs
        g["seconds"] += seconds
    note = ("estimate from this run's measurements: dense images/s per arch (epoch_time.csv), "
            "method/dense step-time ratios (method_overhead.csv; conv2/conv6 use conv4's, vgg19 "
            "resnet18's), checkpoint save per epoch, validation pass at 1/3 of a training step "
            "per image, start-up per job (workflow.csv); time scales with images x pixels; "
            "epochs are each job's planned maximum, an upper bound for runs with early stopping")
    if missing:
        note += "; missing (counted at ratio 1 or left out): " + ", ".join(sorted(missing))
    if fixed_s != fixed_s:
        note += "; per-job start-up not measured (counted as 0)"
    clocks = {r.get("clock") for r in epoch_rows if r.get("device") == dev}
    label = ("GPU-hours" if dev == "cuda" else
             "CPU core-hours (single-thread CPU time)" if any("CPU time" in str(c) for c in clocks)
             else "CPU wall-hours at the measured thread count and load")
    rows = []
    for (dataset, arch, method), g in sorted(groups.items()):
        rows.append(ctx.row(device, benchmark="grid_cost", source=source, dataset=dataset,
                            arch=arch, method=method, repeats=repeats, jobs=g["jobs"],
                            epochs=g["epochs"],
                            device_hours=g["seconds"] / 3600, hours=label, status="ok",
                            note="estimate"))
    total = sum(g["seconds"] for g in groups.values()) / 3600
    rows.insert(0, ctx.row(device, benchmark="grid_cost", source=source, dataset="all",
                           arch="all", method="all", repeats=repeats,
                           jobs=sum(int(g["jobs"]) for g in groups.values()),
                           epochs=sum(int(g["epochs"]) for g in groups.values()),
                           device_hours=total, hours=label,
                           per_job_startup_s=fixed_s if fixed_s == fixed_s else "",
                           status="ok", note=note))
    return rows
