"""GPU-only benchmarks (rows read 'skipped: no CUDA device' elsewhere): epoch time of conv4 and
resnet18 on CIFAR-10-sized data in fp32, with bf16 autocast + channels_last (the engine's
defaults), and with torch.compile on top; and the speed-up of packing several small training
jobs on one GPU as concurrent processes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import torch

from benchmarks.common import (
    SKIP_NO_CUDA,
    Context,
    PhaseStepper,
    build,
    clock_name,
    interleaved,
    median,
    spread,
    synthetic_prepared,
)

VARIANTS = {
    "fp32": {"amp": "false", "channels_last": "false", "compile": "false"},
    "bf16+channels_last": {"amp": "true", "channels_last": "true", "compile": "false"},
    "bf16+channels_last+compile": {"amp": "true", "channels_last": "true", "compile": "true"},
}


def skipped(ctx: Context, benchmark: str, cases: list[str]) -> list[dict[str, Any]]:
    return [ctx.row("cuda", benchmark=benchmark, case=c, status=SKIP_NO_CUDA, repeats=0)
            for c in cases]


def precision(ctx: Context, device: torch.device, archs: list[str], n_images: int,
              batch: int, repeats: int) -> list[dict[str, Any]]:
    """Epoch time of each variant relative to fp32 (interleaved, median), per arch."""
    from prunebench.data.prepared import DeviceData

    prepared = synthetic_prepared(n_images, 0, 32)
    rows = []
    for arch in archs:
        steppers, warm = {}, {}
        for name, over in VARIANTS.items():
            data = DeviceData(prepared, device, 0.0,
                              channels_last=over["channels_last"] == "true"
                              and device.type == "cuda")
            stepper = PhaseStepper(build(arch, "dense", data, device, batch, overrides=over), 0)
            t0 = time.perf_counter()
            stepper.step_seconds()  # compiles where asked
            warm[name] = time.perf_counter() - t0
            steppers[name] = stepper
        names = list(VARIANTS)
        times = interleaved([steppers[n].step_seconds for n in names], repeats)
        fp32 = times[0]
        for name, ts in zip(names, times, strict=True):
            ratios = [t / f for t, f in zip(ts, fp32, strict=True)]
            steps = steppers[name].steps
            rows.append(ctx.row(
                device, benchmark="gpu_precision", case=name, arch=arch, batch_size=batch,
                images_per_epoch=steps * batch, repeats=repeats,
                epoch_s=median(ts) * steps, first_epoch_s=warm[name],
                ratio=median(ratios), ratio_range=spread(ratios),
                ratio_of="epoch_s / fp32 epoch_s", clock=clock_name(device), status="ok",
                note="dense, engine loop; first_epoch_s includes compilation where compiled"))
        del steppers
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _worker_cmd(arch: str, device: torch.device, n_images: int, batch: int, epochs: int,
                seed: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.pack_worker", "--arch", arch, "--device",
            str(device), "--images", str(n_images), "--batch", str(batch), "--epochs",
            str(epochs), "--seed", str(seed)]


def _run_all(cmds: list[list[str]], concurrent: bool) -> tuple[float, list[float]]:
    """Wall seconds of running every command (all at once or one after another) and each
    worker's own training seconds."""
    from benchmarks.workflow import subprocess_env

    t0 = time.perf_counter()
    outs = []
    if concurrent:
        procs = [subprocess.Popen(c, env=subprocess_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c in cmds]
        outs = [p.communicate() + (p.returncode,) for p in procs]
    else:
        for c in cmds:
            p = subprocess.run(c, env=subprocess_env(), capture_output=True, text=True)
            outs.append((p.stdout, p.stderr, p.returncode))
    wall = time.perf_counter() - t0
    train = []
    for out, err, rc in outs:
        if rc != 0:
            raise RuntimeError(f"pack worker exited {rc}: {(err.strip().splitlines() or [''])[-1]}")
        train.append(json.loads(out.strip().splitlines()[-1])["train_s"])
    return wall, train


def packing(ctx: Context, device: torch.device, archs: list[str], jobs: int, n_images: int,
            batch: int, epochs: int) -> list[dict[str, Any]]:
    """`jobs` small training runs (different seeds) one after another vs all at once on the
    device: speed-up = sequential wall / concurrent wall (whole processes, start-up included)."""
    rows = []
    for arch in archs:
        cmds = [_worker_cmd(arch, device, n_images, batch, epochs, s) for s in range(jobs)]
        seq_wall, seq_train = _run_all(cmds, concurrent=False)
        conc_wall, conc_train = _run_all(cmds, concurrent=True)
        rows.append(ctx.row(
            device, benchmark="gpu_packing", case=f"{jobs} concurrent processes", arch=arch,
            batch_size=batch, images_per_epoch=n_images, epochs=epochs, jobs=jobs, repeats=1,
            sequential_wall_s=seq_wall, concurrent_wall_s=conc_wall,
            sequential_train_s=sum(seq_train), concurrent_train_s_max=max(conc_train),
            ratio=seq_wall / conc_wall, ratio_of="sequential wall / concurrent wall (speed-up)",
            status="ok",
            note="dense runs with seeds 0..jobs-1 as separate processes; the workflow gets "
                 "this by giving each train job a fraction of a GPU (resources.gpu)"))
    return rows
