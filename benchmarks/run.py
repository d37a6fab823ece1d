"""`python -m benchmarks.run [--quick | --tiny]`: every engine benchmark, as ratios measured in
one run (absolute times on shared machines are noise; ratios of interleaved measurements hold).

Writes benchmarks/results/{data_path,engine_changes,method_overhead,inference,memory,epoch_time,
workflow,gpu,grid_cost}.csv and prints a table. GPU rows read 'skipped: no CUDA device' without one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks import data_path, engine_changes, gpu, grid, methods, workflow
from benchmarks.common import (
    PENDING_GPU,
    RESULTS,
    SKIP_NO_CUDA,
    Context,
    cpu_clock,
    cuda_available,
    load_avg,
    write_csv,
)
from prunebench.training.cuda import FORCE_ENV

SECTIONS = ("data", "changes", "overhead", "inference", "memory", "epoch", "workflow", "gpu",
            "grid")
CSV_NAMES = {"data": "data_path", "changes": "engine_changes", "overhead": "method_overhead",
             "inference": "inference", "memory": "memory", "epoch": "epoch_time",
             "workflow": "workflow", "gpu": "gpu", "grid": "grid_cost"}


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark measures; (cpu, cuda) pairs where the devices differ."""

    data_images: int
    data_repeats: int
    batch: int
    image_size: dict[str, tuple[int, int]]  # arch -> (cpu, cuda) input side
    steps: dict[str, tuple[int, int]]  # arch -> optimizer steps per measurement
    repeats: dict[str, tuple[int, int]]  # arch -> paired repeats
    infer_batch: tuple[int, int]
    infer_repeats: tuple[int, int]
    dry_run_repeats: int
    startup_repeats: int
    startup_cifar_images: int
    gpu_epoch_images: int
    gpu_repeats: int
    pack_jobs: int
    pack_images: int
    pack_epochs: int
    archs: tuple[str, ...] = ("conv4", "resnet18")
    configfile: str = "config/paper.yaml"
    grid_archs: tuple[str, ...] = field(default=("conv2", "conv4", "conv6", "vgg19", "resnet18"))


FULL = Sizes(
    data_images=25_600, data_repeats=5, batch=128,
    image_size={"conv2": (32, 32), "conv4": (32, 32), "conv6": (32, 32), "vgg19": (32, 32),
                "resnet18": (32, 32)},
    steps={"conv4": (2, 50), "resnet18": (1, 50), "other": (1, 30)},
    repeats={"conv4": (9, 9), "resnet18": (5, 9), "other": (3, 5)},
    infer_batch=(128, 1024), infer_repeats=(5, 20), dry_run_repeats=3, startup_repeats=3,
    startup_cifar_images=50_000, gpu_epoch_images=45_000, gpu_repeats=3, pack_jobs=4,
    pack_images=45_000, pack_epochs=2)
QUICK = Sizes(
    data_images=10_240, data_repeats=3, batch=128,
    image_size={**FULL.image_size, "vgg19": (16, 32), "resnet18": (16, 32)},
    steps={"conv4": (1, 20), "resnet18": (1, 20), "other": (1, 10)},
    repeats={"conv4": (3, 5), "resnet18": (2, 5), "other": (2, 3)},
    infer_batch=(128, 1024), infer_repeats=(5, 10), dry_run_repeats=1, startup_repeats=2,
    startup_cifar_images=10_000, gpu_epoch_images=20_000, gpu_repeats=2, pack_jobs=4,
    pack_images=10_000, pack_epochs=1)
TINY = Sizes(
    data_images=512, data_repeats=2, batch=16,
    image_size={a: (8, 8) for a in FULL.image_size},
    steps={"conv4": (1, 2), "resnet18": (1, 2), "other": (1, 2)},
    repeats={"conv4": (2, 2), "resnet18": (2, 2), "other": (2, 2)},
    infer_batch=(16, 16), infer_repeats=(2, 2), dry_run_repeats=1, startup_repeats=1,
    startup_cifar_images=500, gpu_epoch_images=256, gpu_repeats=1, pack_jobs=2,
    pack_images=64, pack_epochs=1, archs=("conv4",), configfile="config/config.yaml",
    grid_archs=("conv4",))


def _pick(pair: tuple[int, int], device: torch.device) -> int:
    return pair[1] if device.type == "cuda" else pair[0]


def _per_arch(table: dict[str, tuple[int, int]], arch: str, device: torch.device) -> int:
    return _pick(table.get(arch, table.get("other", (1, 1))), device)


def devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if cuda_available() else [])


def _reduced_note(size: int) -> str:
    return f"; input {size}x{size} (reduced from 32x32 to keep CPU time affordable)" \
        if size != 32 else ""


def run_sections(ctx: Context, sz: Sizes, sections: list[str], method_names: list[str],
                 archs: list[str], configfile: str, gpu_on_cpu: bool, cpu_time: bool = True
                 ) -> dict[str, list]:
    """Run the chosen sections; write each section's CSV as soon as it is done."""
    out: dict[str, list[dict[str, Any]]] = {}

    def done(section: str, rows: list[dict[str, Any]]) -> None:
        out[section] = rows
        write_csv(ctx.out / f"{CSV_NAMES[section]}.csv", rows)
        _print_rows(rows)

    if "data" in sections:
        done("data", data_path.run(ctx, sz.data_images, sz.batch, sz.data_repeats))
    if "changes" in sections:
        rows = []
        for dev in devices():
            with cpu_clock(dev, cpu_time):
                rows += engine_changes.augmentation(ctx, dev, sz.data_images, sz.batch,
                                                    sz.data_repeats)
        cpu = torch.device("cpu")
        with cpu_clock(cpu, cpu_time):
            for arch in archs:
                rows += engine_changes.fixed_mask(
                    ctx, cpu, arch, _per_arch(sz.image_size, arch, cpu), sz.batch,
                    _per_arch(sz.steps, arch, cpu), _per_arch(sz.repeats, arch, cpu))
        for dev in devices():
            with cpu_clock(dev, cpu_time):
                for arch in archs:
                    size = _per_arch(sz.image_size, arch, dev)
                    steps = _per_arch(sz.steps, arch, dev)
                    repeats = _per_arch(sz.repeats, arch, dev)
                    for method in ("reparam", "edgepopup"):
                        rows += engine_changes.method_step(ctx, dev, method, arch, size,
                                                           sz.batch, steps, repeats)
                    # per-step Python overhead: the small inputs and batch of digits
                    rows += engine_changes.method_step(ctx, dev, "reparam", arch, 8, 32,
                                                       4 * steps, repeats)
                    for method in ("dense", "reparam"):
                        rows += engine_changes.evaluation(ctx, dev, method, arch, size,
                                                          4 * sz.batch, sz.batch, repeats)
        done("changes", rows)
    if "overhead" in sections:
        rows = []
        for dev in devices():
            for arch in archs:
                size = _per_arch(sz.image_size, arch, dev)
                with cpu_clock(dev, cpu_time):
                    rows += methods.overhead(ctx, dev, arch, size, sz.batch,
                                             _per_arch(sz.steps, arch, dev),
                                             _per_arch(sz.repeats, arch, dev), method_names,
                                             _reduced_note(size))
        if not cuda_available():
            rows += [ctx.row("cuda", benchmark="method_overhead", arch=a, status=SKIP_NO_CUDA,
                             repeats=0) for a in archs]
        done("overhead", rows)
    if "inference" in sections:
        rows = []
        for dev in devices():
            for arch in archs:
                size = _per_arch(sz.image_size, arch, dev)
                with cpu_clock(dev, cpu_time):
                    rows += methods.inference(ctx, dev, arch, size, _pick(sz.infer_batch, dev),
                                              _pick(sz.infer_repeats, dev), method_names,
                                              _reduced_note(size))
        if not cuda_available():
            rows += [ctx.row("cuda", benchmark="inference", arch=a, status=SKIP_NO_CUDA,
                             repeats=0) for a in archs]
        done("inference", rows)
    if "memory" in sections:
        rows = []
        for dev in devices():
            for arch in archs:
                rows += methods.memory(ctx, dev, arch, _per_arch(sz.image_size, arch, dev),
                                       sz.batch, 1, method_names)
        if not cuda_available():
            rows += [ctx.row("cuda", benchmark="memory", arch=a, status=SKIP_NO_CUDA,
                             repeats=0) for a in archs]
        done("memory", rows)
    if "epoch" in sections:
        rows = []
        for dev in devices():
            grid_archs = list(sz.grid_archs)
            with cpu_clock(dev, cpu_time):
                rows += grid.epoch_times(
                    ctx, dev, grid_archs,
                    {a: _per_arch(sz.image_size, a, dev) for a in grid_archs}, sz.batch,
                    _per_arch(sz.steps, "other", dev), _per_arch(sz.repeats, "other", dev))
        if not cuda_available():
            rows.append(ctx.row("cuda", benchmark="epoch_time", status=SKIP_NO_CUDA, repeats=0))
        done("epoch", rows)
    if "workflow" in sections:
        rows = workflow.dry_run(ctx, configfile, sz.dry_run_repeats)
        rows += workflow.startup(ctx, sz.startup_repeats, sz.startup_cifar_images)
        done("workflow", rows)
    if "gpu" in sections:
        targets = devices()[1:] or ([torch.device("cpu")] if gpu_on_cpu else [])
        rows = []
        for dev in targets:
            if dev.type == "cpu":  # bf16, channels_last, compile on the CPU: the test-only switch
                os.environ[FORCE_ENV] = "aot_eager"
            rows += gpu.precision(ctx, dev, archs, sz.gpu_epoch_images, sz.batch, sz.gpu_repeats)
            os.environ.pop(FORCE_ENV, None)
            rows += gpu.packing(ctx, dev, archs[:1], sz.pack_jobs, sz.pack_images, sz.batch,
                                sz.pack_epochs)
            if dev.type == "cpu":
                for r in rows:
                    r["status"] = "ok: CPU exercise of the GPU code path, not a GPU number"
        if not targets:
            rows = (gpu.skipped(ctx, "gpu_precision", list(gpu.VARIANTS))
                    + gpu.skipped(ctx, "gpu_packing", [f"{sz.pack_jobs} concurrent processes"]))
        done("gpu", rows)
    if "grid" in sections:
        done("grid", _grid(ctx, configfile, out, cpu_time))
    return out


def _grid(ctx: Context, configfile: str, out: dict[str, list], cpu_time: bool
          ) -> list[dict[str, Any]]:
    try:
        jobs = workflow.parse_jobs(workflow.job_commands(configfile))
    except Exception as e:  # noqa: BLE001 - the workflow may be mid-edit: say so, keep going
        return [ctx.row("cpu", benchmark="grid_cost", source=configfile, repeats=0,
                        status=f"pending: job list unavailable: {e}")]
    fixed = workflow.job_fixed_seconds(out.get("workflow", []), cpu_time)
    rows = []
    for dev in devices():
        if not any(r.get("device") == dev.type and r.get("status") == "ok"
                   for r in out.get("epoch", [])):
            rows.append(ctx.row(dev, benchmark="grid_cost", source=configfile, repeats=0,
                                status="pending: run the epoch section on this device"))
            continue
        rows += grid.estimate(ctx, dev, jobs, out.get("epoch", []), out.get("overhead", []),
                              fixed, configfile)
    if not cuda_available():
        rows.append(ctx.row("cuda", benchmark="grid_cost", source=configfile, dataset="all",
                            arch="all", method="all", jobs=len(jobs), repeats=0,
                            status=PENDING_GPU,
                            note="no GPU figure without a GPU measurement"))
    return rows


# -- the printed table ---------------------------------------------------------------------------
COLUMNS = (("benchmark", 15), ("what", 34), ("arch", 8), ("device", 6), ("value", 24),
           ("ratio", 7), ("target", 8), ("met", 5), ("status", 24), ("load", 5))


def _value(r: dict[str, Any]) -> str:
    for key, unit, scale in (("engine_images_per_s", "img/s", 1), ("method_step_ms", "ms/step", 1),
                             ("after_ms_per_batch", "ms/batch", 1),
                             ("after_ms_per_step", "ms/step", 1),
                             ("after_ms_per_pass", "ms/pass", 1),
                             ("peak_mib", "MiB peak", 1), ("subnet_forward_ms", "ms fwd", 1),
                             ("cifar10_epoch_s", "s/epoch", 1), ("epoch_s", "s/epoch", 1),
                             ("wall_s", "s wall", 1), ("concurrent_wall_s", "s wall", 1),
                             ("device_hours", "h", 1)):
        if key in r and r[key] not in ("", None):
            v = float(r[key]) * scale
            extra = f" (cpu {float(r['cpu_s']):.2f})" if key == "wall_s" and "cpu_s" in r else ""
            return f"{v:.4g} {unit}{extra}"
    return ""


def _cells(r: dict[str, Any]) -> list[str]:
    what = r.get("case") or r.get("method", "")
    if r.get("phase") and r.get("phase") != "train":
        what += f":{r['phase']}"
    ratio = r.get("ratio", "")
    ratio = f"{float(ratio):.3f}" if ratio not in ("", None) else ""
    met = r.get("target_met", "")
    met = {True: "yes", False: "NO"}.get(met, "") if isinstance(met, bool) else ""
    return [r.get("benchmark", ""), what, r.get("arch", ""), r.get("device", ""), _value(r),
            ratio, str(r.get("target", "")), met, str(r.get("status", "")),
            f"{r.get('load_avg_1min', '')}"]


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print("  ".join(str(c)[:w].ljust(w) for c, (_, w) in zip(_cells(r), COLUMNS,
                                                                   strict=True)), flush=True)


def _header(ctx: Context) -> None:
    from benchmarks.common import device_name

    print(f"prunebench benchmarks, mode {ctx.mode}, run {ctx.run_id}, commit {ctx.commit}")
    print(f"torch {torch.__version__}, {device_name(torch.device('cpu'))}, "
          f"{torch.get_num_threads()} torch threads, "
          + (f"GPU {torch.cuda.get_device_name()}" if cuda_available() else "no CUDA device")
          + f", load average {load_avg()}")
    print("  ".join(name.ljust(w) for name, w in COLUMNS))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer repeats and images (minutes)")
    size.add_argument("--tiny", action="store_true",
                      help="smoke test of the script itself (seconds of measuring; numbers "
                           "meaningless)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the CSVs")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {', '.join(SECTIONS)}")
    p.add_argument("--methods", default="", help="comma-separated methods (default: all "
                   "registered)")
    p.add_argument("--archs", default="", help="archs of the per-method benchmarks "
                   "(default conv4,resnet18)")
    p.add_argument("--configfile", default="", help="workflow config of the dry run and the "
                   "grid estimate (default config/paper.yaml)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--wall-clock", action="store_true",
                   help="time CPU rows in wall time at --threads (default: process CPU time at "
                        "1 thread, which a shared machine's load barely disturbs)")
    p.add_argument("--exercise-gpu-code-on-cpu", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sections = [s for s in a.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    sz = TINY if a.tiny else QUICK if a.quick else FULL
    if a.threads:
        torch.set_num_threads(a.threads)
    from prunebench.training.registry import list_methods

    registered = list_methods()
    chosen = [m for m in a.methods.split(",") if m] or registered
    bad = sorted(set(chosen) - set(registered))
    if bad:
        p.error(f"unknown method(s) {', '.join(bad)}; registered: {', '.join(registered)}")
    mode = "tiny" if a.tiny else "quick" if a.quick else "full"
    ctx = Context(mode, a.out)
    _header(ctx)
    t0 = time.perf_counter()
    run_sections(ctx, sz, sections, chosen, [x for x in a.archs.split(",") if x] or
                 list(sz.archs), a.configfile or sz.configfile, a.exercise_gpu_code_on_cpu,
                 not a.wall_clock)
    print(f"done in {time.perf_counter() - t0:.0f} s; load average during the run "
          f"{min(ctx.loads, default=float('nan')):.2f}-{max(ctx.loads, default=float('nan')):.2f}"
          f" on {os.cpu_count()} cores; CSVs in {ctx.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
