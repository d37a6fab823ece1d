"""`python -m benchmarks.window --budget-s 480 --data-root PATH --out DIR`: use a short GPU
window. First the six-step first-GPU checklist (`benchmarks/window_checklist.py`: doctor,
SIGTERM + resume, two packed runs at once, fp32 vs bf16 final evaluation, compile on gumbel /
edge-popup / reparam, cudnn.benchmark on/off), then dense epoch times (fp32, bf16 +
channels_last, + torch.compile) and the speed-up of packing several runs on the device as
concurrent processes, then, packed, as many full-protocol runs of a priority list as the budget
allows (`benchmarks/window_runs.py`: CIFAR-10 conv4 dense, one published setting of each paper
in fp32 and in bf16 with the same seeds, the 2021 paper's conv4 column, the 2022 paper's conv2
gumbel / edge-popup). At the budget, runs still going are sent SIGTERM, save a checkpoint and
are listed as unfinished: rerunning the same command resumes them. Writes CSVs and
`window_summary.md` into --out. `--plan` prints the runs it would start, in which order, how
many at once and the seconds it expects for each, without training a run.

`--tiny` runs the same code on the CPU with scikit-learn's digits and 2-epoch runs, the runs
started as on the GPU (device slots over a fake two-device list, the GPU paths on the CPU), one
packing worker killed on purpose, and a budget that stops the last runs.
Needs torch, timm, pyyaml and safetensors only: no Snakemake, no network.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import gpu, window_checklist
from benchmarks.common import (
    REPO,
    SKIP_NO_CUDA,
    Context,
    PhaseStepper,
    build,
    device_name,
    interleaved,
    median,
    synthetic_prepared,
    write_csv,
)
from benchmarks.window_runs import (
    PAPER_CONFIG,
    TERM_GRACE_S,
    TINY_ENDLESS,
    Job,
    Spec,
    estimate,
    make_job,
    precision_rows,
    priority,
    result_rows,
    run_env,
    schedule,
    simulate,
)
from benchmarks.window_worker import WorkerDied, wait_all

__all__ = ["PAPER_CONFIG", "Job", "Spec", "main", "make_job", "priority", "result_rows",
           "schedule"]
VARIANTS = gpu.VARIANTS  # fp32, bf16 + channels_last, + torch.compile (the engine's settings)
CIFAR10_TRAIN, CIFAR10_VAL_FRACTION = 50_000, 0.1  # for --plan before the data is prepared
TINY_DEVICES = ["0", "1"]  # --tiny: a fake two-device list, so the runs claim device slots
TINY_MIN_S = 240.0  # --tiny: least seconds for the packing and for the runs (loaded CPUs)


# -- data --------------------------------------------------------------------------------------
def prepare_data(out: Path, data_root: str, tiny: bool) -> tuple[str, Path, float]:
    """(dataset name, data dir, seconds): CIFAR-10 from the local copy (prepared as `cifar10`,
    its manifest and every run's metrics saying `data_origin: local`), or digits with --tiny.
    A dataset already prepared in `out/data` from the same source is reused."""
    from prunebench.data.prepared import prepare

    data_dir = out / "data"
    name = "digits" if tiny else "cifar10"
    manifest = data_dir / f"{name}.json"
    t0 = time.perf_counter()
    if not (manifest.exists() and json.loads(manifest.read_text()).get("source_root")
            == (data_root if not tiny else "")):
        prepare(name, data_dir, root=data_root if not tiny else "")
    return name, data_dir, time.perf_counter() - t0


# -- epoch times -------------------------------------------------------------------------------
def epoch_times(ctx: Context, device: torch.device, archs: list[str], size: int, batch: int,
                steps: int, repeats: int, train_images: int, cap_s: float
                ) -> list[dict[str, Any]]:
    """Dense step time of each engine variant through the engine's loop, as seconds per epoch
    of `train_images`; variants interleaved per arch; `cap_s` bounds the whole section."""
    from prunebench.data.prepared import DeviceData

    t_end = time.perf_counter() + cap_s
    rows = []
    for arch in archs:
        steppers: dict[str, PhaseStepper] = {}
        first: dict[str, float] = {}
        for name, over in VARIANTS.items():
            base = {"arch": arch, "case": name, "batch_size": batch, "image_size": size}
            if device.type != "cuda" and name != "fp32":
                rows.append(ctx.row(device, **base, status=SKIP_NO_CUDA, repeats=0))
                continue
            if time.perf_counter() > t_end:
                rows.append(ctx.row(device, **base, repeats=0,
                                    status=f"skipped: measurement cap of {cap_s:.0f} s reached"))
                continue
            try:
                data = DeviceData(synthetic_prepared(steps * batch, 0, size), device, 0.0,
                                  channels_last=over["channels_last"] == "true"
                                  and device.type == "cuda")
                built = build(arch, "dense", data, device, batch, overrides=over)
                stepper = PhaseStepper(built, 0)
                t0 = time.perf_counter()
                stepper.step_seconds()  # compiles where asked
                first[name] = time.perf_counter() - t0
                steppers[name] = stepper
            except Exception as e:  # noqa: BLE001 - a variant this torch cannot do is a row
                rows.append(ctx.row(device, **base, repeats=0,
                                    status=f"failed: {type(e).__name__}: {str(e)[:200]}"))
        names = list(steppers)
        failed: dict[str, str] = {}
        times = interleaved([_guarded(steppers[n], n, failed) for n in names], repeats)
        fp32 = times[names.index("fp32")] if "fp32" in names else None
        for name, ts in zip(names, times, strict=True):
            step = median(ts)
            if name in failed:
                rows.append(ctx.row(device, arch=arch, case=name, batch_size=batch,
                                    image_size=size, repeats=repeats, status=failed[name]))
                continue
            rows.append(ctx.row(
                device, arch=arch, case=name, batch_size=batch, image_size=size,
                step_ms=1e3 * step, epoch_s=step * (train_images // batch),
                epoch_images=train_images, first_epoch_s=first[name],
                ratio=(median(t / f for t, f in zip(ts, fp32, strict=True)) if fp32 else None),
                ratio_of="epoch_s / fp32 epoch_s", repeats=repeats, status="ok",
                note=f"dense, engine loop, {steps} steps per repeat; first_epoch_s includes "
                     "compilation"))
        steppers.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    order = list(VARIANTS)
    return sorted(rows, key=lambda r: (archs.index(r["arch"]), order.index(r["case"])))


def _guarded(stepper: PhaseStepper, name: str, failed: dict[str, str]) -> Any:
    """The stepper's timing; NaN, with the error in `failed`, once it has raised."""
    def go() -> float:
        if name in failed:
            return float("nan")
        try:
            return stepper.step_seconds()
        except Exception as e:  # noqa: BLE001 - a variant this torch cannot do is a row
            failed[name] = f"failed: {type(e).__name__}: {str(e)[:200]}"
            return float("nan")
    return go


# -- packing -----------------------------------------------------------------------------------
def packing(ctx: Context, device: torch.device, arch: str, size: int, batch: int, steps: int,
            levels: list[int], timeout_s: float, logs: Path, die_at_phase: int = -1
            ) -> list[dict[str, Any]]:
    """Images/s of `n` concurrent dense runs (processes started once, each level timed on warm
    workers), for every n in `levels`; factor = images/s at n / images/s of one run. Workers are
    watched: one that dies ends the measurement at once with a failed row saying how it ended
    (stderr in logs/pack-worker-N.err). `die_at_phase` >= 0 kills worker 1 there (--tiny)."""
    from benchmarks.workflow import subprocess_env

    most = max(levels)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stderr_of = {i: logs / f"pack-worker-{i}.err" for i in range(most)}
        procs = []
        for i in range(most):
            cmd = [sys.executable, "-m", "benchmarks.window_worker", "--arch", arch, "--device",
                   str(device), "--size", str(size), "--batch", str(batch), "--steps",
                   str(steps), "--index", str(i), "--levels", ",".join(map(str, levels)),
                   "--dir", tmp, "--timeout-s", str(timeout_s)]
            if i == 1 and die_at_phase >= 0:
                cmd += ["--die-at-phase", str(die_at_phase)]
            with open(stderr_of[i], "w") as err:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(),
                                              stdout=subprocess.DEVNULL, stderr=err))
        t_start = time.perf_counter()
        phase = -1
        try:
            wait_all({folder / f"ready-{i}": (i, p) for i, p in enumerate(procs)}, timeout_s,
                     stderr_of)
            single = None
            for phase, n in enumerate(levels):
                t0 = time.perf_counter()
                (folder / f"go-{phase}").write_text("")
                wait_all({folder / f"done-{phase}-{i}": (i, procs[i]) for i in range(n)},
                         timeout_s, stderr_of)
                wall = time.perf_counter() - t0
                rate = n * steps * batch / wall
                single = single or (rate if n == 1 else None)
                rows.append(ctx.row(
                    device, arch=arch, case=f"{n} concurrent runs", runs=n, batch_size=batch,
                    image_size=size, steps_per_run=steps, wall_s=wall, images_per_s=rate,
                    ratio=rate / single if single else None,
                    ratio_of="images/s of n runs / images/s of 1 run (packing factor)",
                    repeats=1, status="ok",
                    note="dense runs as separate processes sharing the device, each training "
                         "one epoch through the engine's loop, started together on warm "
                         "processes"))
        except (WorkerDied, TimeoutError, OSError) as e:
            where = "start-up" if phase < 0 else f"level {levels[phase]}"
            rows.append(ctx.row(device, arch=arch, case=f"packing ({where})", repeats=0,
                                wall_s=time.perf_counter() - t_start,
                                status=f"failed: {e}"[:400]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    return rows


def runs_epoch_s(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Measured dense fp32 epoch seconds per arch: the papers' grid trains in fp32
    (config/paper.yaml), and a bf16 arm is estimated as slow as its fp32 twin (an upper bound)."""
    return {r["arch"]: r["epoch_s"] for r in rows if r["status"] == "ok" and r["case"] == "fp32"}


def best_packing(rows: list[dict[str, Any]]) -> tuple[int, float]:
    """(runs at once, factor): the level with the most images/s, preferring fewer runs unless
    more gain at least 5 %."""
    ok = sorted((r for r in rows if r["status"] == "ok" and r["ratio"]), key=lambda r: r["runs"])
    best = (1, 1.0)
    for r in ok:
        if r["ratio"] >= 1.05 * best[1]:
            best = (r["runs"], r["ratio"])
    return best


# -- results -----------------------------------------------------------------------------------
FINISHED_COLUMNS = ["run", "arch", "method", "variant", "sparsity", "seed", "precision",
                    "epochs_trained", "test_top1", "sparsity_achieved", "epochs_run",
                    "trained_in", "published_top1", "published_source", "wall_s", "estimate_s",
                    "run_dir"]
OTHER_COLUMNS = ["run", "arch", "method", "variant", "sparsity", "seed", "precision",
                 "epochs_trained", "status", "reason", "wall_s", "estimate_s", "checkpoint",
                 "run_dir"]
CHECKLIST_COLUMNS = ["step", "check", "status", "result", "seconds"]
PRECISION_COLUMNS = ["setting", "seeds", "fp32_top1_mean", "bf16_top1_mean", "bf16_minus_fp32",
                     "paired_differences", "seed_std", "status"]
PLAN_COLUMNS = ["order", "run", "start_s", "runs_at_once", "expected_s", "plan"]


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A CSV with these columns, a header even when no row exists (no finished run is a
    result too)."""
    from prunebench.fileio import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    if not rows:
        return ["(none)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(out: Path, info: dict[str, Any], checklist: list[dict[str, Any]],
            epochs: list[dict[str, Any]], packs: list[dict[str, Any]],
            finished: list[dict[str, Any]], others: list[dict[str, Any]],
            precision: list[dict[str, Any]]) -> str:
    lines = [f"# GPU window {info['run_id']}", "",
             f"- device: {info['device_name']} ({info['device']}); torch {info['torch']}, "
             f"python {info['python']}, commit {info['commit']}",
             f"- budget {info['budget_s']:.0f} s, used {info['used_s']:.0f} s; dataset "
             f"{info['dataset']} prepared in {info['prepare_s']:.1f} s",
             f"- runs at once: {info['slots']} (packing factor {info['factor']:.2f}); "
             f"torch.compile in the runs: {info['compile']}", "",
             "## First-GPU checklist", ""]
    lines += _table(checklist, CHECKLIST_COLUMNS)
    lines += ["", f"## Dense epoch time (seconds per epoch of {info['train_images']:,} images)",
              ""]
    lines += _table(epochs, ["arch", "case", "step_ms", "epoch_s", "ratio", "first_epoch_s",
                             "status"])
    lines += ["", "## Packing (concurrent runs on one device)", ""]
    lines += _table(packs, ["arch", "case", "images_per_s", "ratio", "status"])
    lines += ["", "## fp32 vs bf16, same seeds (test top-1 %; the difference beside the spread "
                  "over seeds)", ""]
    lines += _table(precision, PRECISION_COLUMNS)
    lines += ["", "## Finished runs (test top-1 %, beside the published CIFAR-10 number)", ""]
    lines += _table(finished, ["run", "test_top1", "trained_in", "published_top1",
                               "published_source", "sparsity_achieved", "epochs_run", "wall_s"])
    lines += ["", "## Not finished (never mixed with the results above)", ""]
    lines += _table(others, ["run", "status", "reason", "checkpoint"])
    if info["dataset"] == "digits":
        lines += ["", "--tiny: digits, 2 epochs on CPU: a smoke test of the script; the "
                      "published numbers are CIFAR-10's and not comparable."]
    if info["dataset"] == "cifar10":
        lines += ["", "CIFAR-10 here is the local JPEG re-encoded copy (close to, not equal to, "
                      "the original): compare with the published numbers accordingly."]
    text = "\n".join(lines) + "\n"
    (out / "window_summary.md").write_text(text)
    return text


# -- plan ----------------------------------------------------------------------------------------
def plan(out: Path, device: torch.device, budget: float, tiny: bool, runs_at_once: int,
         compile_runs: bool, measure_cap: float, checklist_cap: float) -> str:
    """What the window would do, without training a run: the checklist and measurements with
    their caps, then the priority runs as `schedule` would start them if each took its
    estimate. Epoch times come from an earlier window in `out` (window_epoch_times.csv and
    window_packing.csv), else from two timed steps per arch on this device."""
    ctx = Context("plan", out)
    name = "digits" if tiny else "cifar10"
    manifest = out / "data" / f"{name}.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        n_train = round(m["num_train"] * (1 - m["val_fraction"]))
        n_val, size = m["num_train"] - n_train, m["image_shape"][1]
    elif tiny:
        n_train, n_val, size = 1617, 180, 8
    else:
        n_train = round(CIFAR10_TRAIN * (1 - CIFAR10_VAL_FRACTION))
        n_val, size = CIFAR10_TRAIN - n_train, 32
    source, epoch_s, slots, factor = _plan_measurements(ctx, out, device, size, n_train, tiny)
    if runs_at_once:
        slots, factor = runs_at_once, 1.0
    jobs = _jobs(out, name, out / "data", device, tiny, compile_runs)
    first = checklist_cap + measure_cap + 30.0  # + the packing measurement
    deadline = budget - TERM_GRACE_S - 10.0
    rows = simulate(jobs, first, deadline, slots, lambda j: estimate(
        j, device, epoch_s, n_train, n_val, slots, factor))
    lines = [f"GPU window plan: budget {budget:.0f} s on {device_name(device)} ({device.type})",
             f"epoch times: {source}",
             "; ".join(f"{arch} {s:.1f} s per epoch of {n_train:,} images (fp32)"
                       for arch, s in sorted(epoch_s.items())),
             f"0-{checklist_cap:.0f} s: first-GPU checklist (doctor, SIGTERM + resume, two "
             "packed runs, fp32 vs bf16 evaluation, compile on gumbel/edgepopup/reparam, "
             "cudnn.benchmark on/off)",
             f"then up to {measure_cap:.0f} s: dense epoch times; about 30 s: packing of "
             "1, 2, 4, 8 runs",
             f"from about {first:.0f} s: the runs below, {slots} at once (packing factor "
             f"{factor:.2f}); at {deadline:.0f} s the runs still going get SIGTERM", ""]
    lines += _table([{"order": i + 1, **r} for i, r in enumerate(rows)], PLAN_COLUMNS)
    return "\n".join(lines)


def _plan_measurements(ctx: Context, out: Path, device: torch.device, size: int,
                       n_train: int, tiny: bool) -> tuple[str, dict[str, float], int, float]:
    """(where the numbers come from, fp32 epoch seconds per arch, runs at once, factor)."""
    epochs_csv, packing_csv = out / "window_epoch_times.csv", out / "window_packing.csv"
    if epochs_csv.exists():
        rows = [{**r, "epoch_s": float(r["epoch_s"] or "nan")}
                for r in csv.DictReader(open(epochs_csv))]
        packs = [{**r, "runs": int(r["runs"] or 0), "ratio": float(r["ratio"] or 0)}
                 for r in csv.DictReader(open(packing_csv))] if packing_csv.exists() else []
        slots, factor = best_packing(packs)
        return (f"measured by the window in {out} (run {rows[0].get('run_id', '?')})",
                runs_epoch_s(rows), slots, factor)
    archs = ["conv4"] if tiny else ["conv4", "resnet18"]
    batch = 32 if tiny else 128
    rows = epoch_times(ctx, device, archs, size, batch, 2, 1, n_train, cap_s=600.0)
    return (f"two timed steps per arch on this {device.type} (no earlier window in {out}); "
            "packing not measured: 1 run at once", runs_epoch_s(rows), 1, 1.0)


def _jobs(out: Path, dataset: str, data_dir: Path, device: torch.device, tiny: bool,
          compile_runs: bool) -> list[Job]:
    """The priority list as `prunebench run` jobs with the papers' settings."""
    extra = [f"compile={'true' if compile_runs else 'false'}"]
    if tiny:  # digits: short runs, its own normalisation statistics (not ASLP's CIFAR ones)
        extra += ["epochs=2", "patience=0", "norm_stats=dataset"]
    specs = priority(tiny)
    dense_dir = make_job(specs[0], out, dataset, data_dir, PAPER_CONFIG, device, extra,
                         None).run_dir
    return [make_job(s, out, dataset, data_dir, PAPER_CONFIG, device,
                     extra + (["epochs=100000"] if s == TINY_ENDLESS else []), dense_dir)
            for s in specs]


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.window", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall seconds for everything (default 480; 300 with --tiny)")
    p.add_argument("--data-root", default="", help="CIFAR-10 as a train/<class>, test/<class> "
                   "image tree or archive (e.g. cifar10-jpeg.tar.gz); not with --tiny")
    p.add_argument("--out", required=True, help="folder for the CSVs, summary, data and runs")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test on digits")
    p.add_argument("--plan", action="store_true",
                   help="print the runs it would start, in order, how many at once and the "
                   "seconds expected for each; train nothing")
    p.add_argument("--runs-at-once", type=int, default=0,
                   help="concurrent runs (default: the measured best packing level)")
    p.add_argument("--compile", choices=("off", "on"), default="off",
                   help="torch.compile inside the runs (measured either way)")
    p.add_argument("--measure-s", type=float, default=None,
                   help="cap on the epoch-time measurements (default: a sixth of the budget)")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    budget = a.budget_s if a.budget_s is not None else (300.0 if a.tiny else 480.0)
    deadline = t_start + budget - TERM_GRACE_S - 10.0
    cuda_here = torch.cuda.is_available()
    device = torch.device("cpu" if a.tiny or not cuda_here else "cuda")
    measure_cap = a.measure_s if a.measure_s is not None else budget / 6
    checklist_cap = 0.35 * budget
    out = Path(a.out).resolve()
    if a.plan:
        print(plan(out, device, budget, a.tiny, a.runs_at_once, a.compile == "on",
                   measure_cap, checklist_cap), flush=True)
        return 0
    if not a.tiny and not a.data_root:
        p.error("--data-root is required (the CIFAR-10 copy); or use --tiny")
    if not a.tiny and not cuda_here:
        p.error("no CUDA device here; use --tiny for the CPU smoke test (or --plan)")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    ctx = Context("tiny" if a.tiny else "window", out)
    from prunebench.training import gpus

    devices = TINY_DEVICES if a.tiny else (gpus.visible_devices() or ["0"])
    say = print

    checklist = [window_checklist.doctor(device, run_env(out, 2, devices, a.tiny),
                                         out / "logs" / "doctor.log")]
    say(f"[checklist] 1. prunebench doctor: {checklist[0]['status']}: "
        f"{checklist[0]['result']}", flush=True)
    if checklist[0]["status"] != "ok":
        write_rows(out / "window_checklist.csv", checklist, CHECKLIST_COLUMNS)
        say(f"[window] stopped: a run would fail here (report in {out / 'logs' / 'doctor.log'})")
        return 1
    dataset, data_dir, prepare_s = prepare_data(out, str(Path(a.data_root).resolve())
                                                if a.data_root else "", a.tiny)
    say(f"[window] {dataset} ready in {prepare_s:.1f} s", flush=True)
    from prunebench.data.prepared import load_prepared

    prepared = load_prepared(dataset, data_dir)
    size = prepared.image_shape[1]
    n_train = round(prepared.manifest["num_train"] * (1 - prepared.manifest["val_fraction"]))
    n_val = prepared.manifest["num_train"] - n_train
    del prepared
    sizes = ((size, 32, 4, 2) if a.tiny else (size, 128, 60, 3))  # size, batch, steps, repeats
    checklist += window_checklist.run(out, dataset, data_dir, device,
                                      run_env(out, 2, devices, a.tiny), sizes, checklist_cap,
                                      lambda line: say(line, flush=True))
    write_rows(out / "window_checklist.csv", checklist, CHECKLIST_COLUMNS)

    epochs = epoch_times(ctx, device, ["conv4"] if a.tiny else ["conv4", "resnet18"], *sizes,
                         n_train, measure_cap)
    write_csv(out / "window_epoch_times.csv", epochs)
    say(f"[window] epoch times measured ({time.perf_counter() - t_start:.0f} s)", flush=True)
    epoch_s = runs_epoch_s(epochs)
    step_s = epoch_s.get("conv4", 1.0) / max(n_train // sizes[1], 1)
    levels = [1, 2] if a.tiny else [1, 2, 4, 8]
    steps = 4 if a.tiny else max(20, min(400, round(3.0 / max(step_s, 1e-4))))
    packs = packing(ctx, device, "conv4", sizes[0], sizes[1], steps,
                    [*levels, 2] if a.tiny else levels,
                    timeout_s=max(deadline - time.perf_counter(), TINY_MIN_S if a.tiny else 30),
                    logs=out / "logs", die_at_phase=len(levels) if a.tiny else -1)
    write_csv(out / "window_packing.csv", packs)
    slots, factor = best_packing(packs)
    if a.tiny:
        slots = max(slots, 2)  # the tiny window always packs: the GPU path's slots exercised
    if a.runs_at_once:
        slots = a.runs_at_once
        factor = next((r["ratio"] for r in packs if r.get("runs") == slots and r["ratio"]),
                      factor)
    say(f"[window] packing measured: {slots} at once, factor {factor:.2f} "
        f"({time.perf_counter() - t_start:.0f} s)", flush=True)

    jobs = _jobs(out, dataset, data_dir, device, a.tiny, a.compile == "on")

    def estimate_of(job: Job) -> float:
        if not epoch_s:  # nothing measured: start in priority order, the deadline stops
            return 0.0
        return estimate(job, device, epoch_s, n_train, n_val, slots, factor)

    if a.tiny:  # a smoke test on a loaded CPU: the runs get their time whatever is left
        deadline = max(deadline, time.perf_counter() + TINY_MIN_S)
    stopped: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, _frame: stopped.append(n))
    schedule(jobs, deadline, slots, out / "logs", run_env(out, slots, devices, a.tiny),
             estimate_of, stop=lambda: bool(stopped))
    finished, others = result_rows(jobs)
    precision = precision_rows(finished, a.tiny)
    write_rows(out / "window_finished.csv", finished, FINISHED_COLUMNS)
    write_rows(out / "window_unfinished.csv", others, OTHER_COLUMNS)
    write_rows(out / "window_precision.csv", precision, PRECISION_COLUMNS)
    info = {"run_id": ctx.run_id, "device": device.type, "device_name": device_name(device),
            "torch": torch.__version__, "python": sys.version.split()[0], "commit": ctx.commit,
            "budget_s": budget, "used_s": time.perf_counter() - t_start, "dataset": dataset,
            "prepare_s": prepare_s, "slots": slots, "factor": factor, "compile": a.compile,
            "train_images": n_train}
    say(summary(out, info, checklist, epochs, packs, finished, others, precision), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
