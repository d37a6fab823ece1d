"""`python -m benchmarks.window --budget-s 480 --data-root PATH --out DIR`: use a short GPU
window. Prepares CIFAR-10 from a local copy (e.g. the JPEG archive), measures
dense epoch times (fp32, bf16 + channels_last, + torch.compile, + CUDA graphs) and the speed-up
of packing several runs on the device as concurrent processes, then runs, packed, as many
full-protocol runs of a priority list as the budget allows (the 2021 paper's CIFAR-10 conv4
column, then the 2022 paper's conv2 gumbel / edge-popup), and stops at the budget: runs still
going are sent SIGTERM, save a checkpoint and are listed as unfinished (rerunning the same
command resumes them). Writes CSVs and `window_summary.md` into --out.

`--tiny` runs the same code on CPU with scikit-learn's digits and 2-epoch runs (a smoke test).
Needs torch, timm, pyyaml and safetensors only: no Snakemake, no network.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import gpu
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
from benchmarks.window_worker import wait_for

PAPER_CONFIG = REPO / "config" / "paper.yaml"
PUBLISHED = REPO / "config" / "published_results.csv"
SPARSITIES = (0.9, 0.95, 0.97, 0.99)  # the 2021 paper's conv4 column
PAPER_REPARAM = "paper-sgd-t"  # config/paper.yaml: t by SGD at the weights' lr, lambda 1
ASLP = "aslp-sc-aug"  # config/paper.yaml: the 2022 paper's setting (a), no rescale
# Engine settings per measured variant (TrainConfig keys); "cudagraphs" is torch.compile's
# reduce-overhead mode, measured only (the engine's `compile` option uses the default mode).
VARIANTS = {**gpu.VARIANTS,
            "bf16+channels_last+cudagraphs": {"amp": "true", "channels_last": "true",
                                              "compile": "false"}}
TERM_GRACE_S = 30.0  # how long a run gets to checkpoint after SIGTERM
STARTUP_S = (20.0, 8.0)  # (cuda, cpu) seconds a run spends before its first step (estimate)
METHOD_FACTOR = 1.2  # a pruning method's step vs dense's, for the estimate (benchmarks/: <1.15)


@dataclass
class Spec:
    """One run of the priority list."""

    arch: str
    method: str
    sparsity: float | None
    variant: str = ""
    needs_dense: bool = False  # magnitude*: prune the dense run's network (method.dense_from)

    @property
    def label(self) -> str:
        name = f"{self.method}@{self.variant}" if self.variant else self.method
        budget = "" if self.sparsity is None else f" s={self.sparsity:g}"
        return f"{self.arch} {name}{budget}"


def priority(tiny: bool) -> list[Spec]:
    """CIFAR-10 conv4 dense; reparam (paper's and the suite's settings), magnitude and
    magnitude_ft at each budget; then gumbel and edge-popup on conv2 in the published settings."""
    budgets = SPARSITIES[:1] if tiny else SPARSITIES
    specs = [Spec("conv4", "dense", None)]
    specs += [Spec("conv4", "reparam", s, PAPER_REPARAM) for s in budgets]
    specs += [Spec("conv4", "reparam", s) for s in budgets]
    specs += [Spec("conv4", "magnitude", s, needs_dense=True) for s in budgets]
    specs += [Spec("conv4", "magnitude_ft", s, needs_dense=True) for s in budgets]
    specs += [Spec("conv2", "gumbel", None, ASLP), Spec("conv2", "edgepopup", 0.5, ASLP),
              Spec("conv2", "edgepopup", 0.5)]
    return specs


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
                if name.endswith("cudagraphs"):
                    built.trainer.forward = torch.compile(built.model, mode="reduce-overhead")
                stepper = PhaseStepper(built, 0)
                t0 = time.perf_counter()
                stepper.step_seconds()  # compiles / records graphs where asked
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
                     "compilation / graph capture"))
        steppers.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    order = list(VARIANTS)
    return sorted(rows, key=lambda r: (archs.index(r["arch"]), order.index(r["case"])))


def _guarded(stepper: PhaseStepper, name: str, failed: dict[str, str]) -> Any:
    """The stepper's timing; NaN, with the error in `failed`, once it has raised (e.g. CUDA
    graph outputs overwritten between steps)."""
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
            levels: list[int], timeout_s: float) -> list[dict[str, Any]]:
    """Images/s of `n` concurrent dense runs (processes started once, each level timed on warm
    workers), for every n in `levels`; factor = images/s at n / images/s of one run."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    most = max(levels)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        procs = [subprocess.Popen(
            [sys.executable, "-m", "benchmarks.window_worker", "--arch", arch, "--device",
             str(device), "--size", str(size), "--batch", str(batch), "--steps", str(steps),
             "--index", str(i), "--levels", ",".join(map(str, levels)), "--dir", tmp,
             "--timeout-s", str(timeout_s)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True) for i in range(most)]
        try:
            for i in range(most):
                wait_for(folder / f"ready-{i}", timeout_s)
            single = None
            for phase, n in enumerate(levels):
                t0 = time.perf_counter()
                (folder / f"go-{phase}").write_text("")
                for i in range(n):
                    wait_for(folder / f"done-{phase}-{i}", timeout_s)
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
        except (TimeoutError, OSError) as e:
            errors = [p.stderr.read()[-300:] for p in procs if p.poll() not in (None, 0)]
            rows.append(ctx.row(device, arch=arch, case="packing", repeats=0,
                                status=f"failed: {e}; {' | '.join(errors)}"[:400]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    return rows


def runs_epoch_s(rows: list[dict[str, Any]], device: torch.device, compiled: bool
                 ) -> dict[str, float]:
    """Measured dense epoch seconds per arch in the runs' engine settings (bf16 +
    channels_last on CUDA, compiled if asked), falling back to the nearest measured case."""
    cases = (["bf16+channels_last+compile"] if compiled else []) + ["bf16+channels_last", "fp32"]
    if device.type != "cuda":
        cases = ["fp32"]
    out: dict[str, float] = {}
    for case in reversed(cases):
        out.update({r["arch"]: r["epoch_s"] for r in rows
                    if r["status"] == "ok" and r["case"] == case})
    return out


def best_packing(rows: list[dict[str, Any]]) -> tuple[int, float]:
    """(runs at once, factor): the level with the most images/s, preferring fewer runs unless
    more gain at least 5 %."""
    ok = sorted((r for r in rows if r["status"] == "ok" and r["ratio"]), key=lambda r: r["runs"])
    best = (1, 1.0)
    for r in ok:
        if r["ratio"] >= 1.05 * best[1]:
            best = (r["runs"], r["ratio"])
    return best


# -- runs --------------------------------------------------------------------------------------
@dataclass
class Job:
    spec: Spec
    argv: list[str]
    run_dir: Path
    epochs: int  # epochs this run trains (a shared dense phase excluded)
    batch_size: int
    estimate_s: float = 0.0
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ended: float = 0.0
    status: str = "not started"  # running, yielding, finished, unfinished, failed, not run
    fill: bool = False  # started in an idle slot although its estimate did not fit
    reason: str = ""
    log: Path | None = None


def make_job(spec: Spec, out: Path, dataset: str, data_dir: Path, config: Path,
             device: torch.device, extra: list[str], dense_dir: Path | None) -> Job:
    """The `prunebench run` command of `spec` and its epochs, resolved as the CLI does."""
    from benchmarks.workflow import parse_jobs
    from prunebench import paths

    run_dir = paths.run_dir(out / paths.RUNS, dataset, spec.arch, spec.method, spec.sparsity, 0,
                            spec.variant)
    argv = ["--dataset", dataset, "--arch", spec.arch, "--method", spec.method, "--seed", "0",
            "--config", str(config), "--run-dir", str(run_dir)]
    if spec.sparsity is not None:
        argv += ["--sparsity", f"{spec.sparsity:g}"]
    if spec.variant:
        argv += ["--variant", spec.variant]
    argv += [f"data_dir={data_dir}", f"device={device.type}", *extra]
    if spec.needs_dense and dense_dir is not None:
        argv.append(f"method.dense_from={dense_dir}")
    resolved = parse_jobs([argv])[0]
    return Job(spec, argv, run_dir, sum(e for _, e in resolved.phases), resolved.batch_size)


def estimate(job: Job, device: torch.device, epoch_s: dict[str, float], train_images: int,
             val_images: int, runs_at_once: int, factor: float) -> float:
    """Seconds `job` needs when `runs_at_once` runs share the device: start-up plus its epochs
    at the measured dense step time (a method's overhead and a validation pass added),
    slowed by runs_at_once / packing factor. Coarse: the budget's hard stop is the guarantee."""
    per_image = epoch_s.get(job.spec.arch, max(epoch_s.values())) / train_images
    factor_m = 1.0 if job.spec.method in ("dense", "magnitude", "magnitude_ft") else METHOD_FACTOR
    epoch = per_image * (train_images * factor_m + val_images / 3)
    startup = STARTUP_S[0] if device.type == "cuda" else STARTUP_S[1]
    return startup + job.epochs * epoch * max(runs_at_once / factor, 1.0)


def launch(job: Job, logs: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    job.log = logs / (job.spec.label.replace(" ", "_").replace("=", "") + ".log")
    with open(job.log, "a") as log:  # a run resumed after yielding its slot appends
        job.proc = subprocess.Popen([sys.executable, "-m", "prunebench", "run", *job.argv],
                                    cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    job.started = time.perf_counter()
    job.status = "running"


def finish(job: Job) -> None:
    """Record how a finished process ended: finished (metrics.json), failed or unfinished."""
    from prunebench import paths

    rc = job.proc.returncode
    job.ended = time.perf_counter()
    if rc == paths.EXIT_OK and (job.run_dir / paths.METRICS).exists():
        job.status = "finished"
    elif rc == paths.EXIT_PREEMPTED or rc < 0:
        job.status = "unfinished"
        job.reason = ("stopped at the budget; checkpoint kept, rerun the same command to "
                      "resume" if (job.run_dir / paths.CHECKPOINT).exists()
                      else "stopped at the budget before its first checkpoint")
    else:
        job.status = "failed"
        tail = job.log.read_text().strip().splitlines()[-1:] if job.log else []
        job.reason = f"exit {rc}: {tail[0][:300] if tail else ''}"


def schedule(jobs: list[Job], deadline: float, slots: int, logs: Path,
             estimate_of: Any, poll_s: float = 0.5, stop: Any = lambda: False) -> None:
    """Run `jobs` in priority order, at most `slots` at once, until done, `deadline` (a
    perf_counter time) or `stop()` (e.g. the window itself got SIGTERM/SIGINT). A job starts
    when a slot is free, its dense run (if any) has finished and its estimate fits before the
    deadline. A job that does not fit starts only in a slot
    that would otherwise stay idle (to be resumed in a later window) and yields its slot to a
    job that fits (SIGTERM: it checkpoints and may resume here later). At the deadline every
    running job gets SIGTERM (it saves a checkpoint and exits 75), then SIGKILL after
    TERM_GRACE_S."""
    dense = next((j for j in jobs if j.spec.method == "dense"), None)

    def ready(j: Job) -> bool:
        return j.status == "not started" and (
            not j.spec.needs_dense or (dense is not None and dense.status == "finished"))

    while True:
        now = time.perf_counter()
        for j in jobs:
            if j.status in ("running", "yielding") and j.proc.poll() is not None:
                yielded = j.status == "yielding"
                finish(j)
                if yielded and j.status == "unfinished":
                    j.status = "not started"  # resumes from its checkpoint if started again
            if (j.status == "not started" and j.spec.needs_dense and dense is not None
                    and dense.status in ("failed", "unfinished")):
                j.status, j.reason = "not run", f"its dense run is {dense.status}"
        running = [j for j in jobs if j.status in ("running", "yielding")]
        waiting = [j for j in jobs if ready(j)]
        if now >= deadline or stop() or (not running and not waiting):
            break
        fits = [j for j in waiting if now + estimate_of(j) <= deadline]
        free = slots - len(running)
        fillers = [j for j in running if j.status == "running" and j.fill]
        for j in fillers[::-1][:max(len(fits) - free, 0)]:
            j.proc.send_signal(signal.SIGTERM)
            j.status = "yielding"
        for j in (fits or waiting)[:max(free, 0)]:
            j.fill = j not in fits
            j.estimate_s = estimate_of(j)
            launch(j, logs)
        time.sleep(poll_s)
    for j in jobs:
        if j.status == "running" and j.proc.poll() is None:
            j.proc.send_signal(signal.SIGTERM)
    grace = time.perf_counter() + TERM_GRACE_S
    for j in jobs:
        if j.status in ("running", "yielding"):
            try:
                j.proc.wait(timeout=max(grace - time.perf_counter(), 0.1))
            except subprocess.TimeoutExpired:
                j.proc.kill()
                j.proc.wait()
            finish(j)
        elif j.status == "not started":
            j.reason = ("its dense run did not finish" if j.spec.needs_dense
                        and (dense is None or dense.status != "finished")
                        else f"the budget ended first (estimated {estimate_of(j):.0f} s)")


# -- results -----------------------------------------------------------------------------------
def published_for(spec: Spec, rows: list[dict[str, str]]) -> tuple[str, str]:
    """(accuracy, source) of the published CIFAR-10 number of `spec`'s setting, or ("", "")."""
    for r in rows:
        sp = float(r["sparsity"]) if r["sparsity"] else None
        if (r["dataset"] == "cifar10" and r["arch"] == spec.arch and r["method"] == spec.method
                and r.get("variant", "") == spec.variant and sp == spec.sparsity):
            return r["accuracy"], r["source"]
    return "", ""


def result_rows(jobs: list[Job]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(finished runs with their results and published numbers, every other run)."""
    from prunebench import paths
    from prunebench.plan.grid import read_published

    published = read_published(PUBLISHED)
    finished, others = [], []
    for j in jobs:
        s = j.spec
        base = {"run": s.label, "arch": s.arch, "method": s.method, "variant": s.variant,
                "sparsity": s.sparsity, "epochs_trained": j.epochs}
        if j.status == "finished":
            m = json.loads((j.run_dir / paths.METRICS).read_text())
            pub, source = published_for(s, published)
            finished.append({**base, "test_top1": m["test_top1"],
                             "sparsity_achieved": m["sparsity_achieved"],
                             "epochs_run": m.get("epochs_run"),
                             "published_top1": pub, "published_source": source,
                             "wall_s": round(j.ended - j.started, 1),
                             "estimate_s": round(j.estimate_s, 1), "run_dir": str(j.run_dir)})
        else:
            others.append({**base, "status": j.status, "reason": j.reason,
                           "wall_s": round(j.ended - j.started, 1) if j.started else "",
                           "estimate_s": round(j.estimate_s, 1) if j.started else "",
                           "checkpoint": str(j.run_dir / paths.CHECKPOINT)
                           if (j.run_dir / paths.CHECKPOINT).exists() else "",
                           "run_dir": str(j.run_dir)})
    return finished, others


FINISHED_COLUMNS = ["run", "arch", "method", "variant", "sparsity", "epochs_trained", "test_top1",
                    "sparsity_achieved", "epochs_run", "published_top1", "published_source",
                    "wall_s", "estimate_s", "run_dir"]
OTHER_COLUMNS = ["run", "arch", "method", "variant", "sparsity", "epochs_trained", "status",
                 "reason", "wall_s", "estimate_s", "checkpoint", "run_dir"]


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A CSV with these columns, a header even when no row exists (no finished run is a
    result too)."""
    from prunebench.fileio import write_text

    lines = [",".join(columns)]
    if rows:
        import io

        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=columns, lineterminator="\n").writerows(rows)
        lines.append(buf.getvalue().rstrip("\n"))
    write_text(path, "\n".join(lines) + "\n")


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


def summary(out: Path, info: dict[str, Any], epochs: list[dict[str, Any]],
            packs: list[dict[str, Any]], finished: list[dict[str, Any]],
            others: list[dict[str, Any]]) -> str:
    lines = [f"# GPU window {info['run_id']}", "",
             f"- device: {info['device_name']} ({info['device']}); torch {info['torch']}, "
             f"python {info['python']}, commit {info['commit']}",
             f"- budget {info['budget_s']:.0f} s, used {info['used_s']:.0f} s; dataset "
             f"{info['dataset']} prepared in {info['prepare_s']:.1f} s",
             f"- runs at once: {info['slots']} (packing factor {info['factor']:.2f}); "
             f"torch.compile in the runs: {info['compile']}", "",
             "## Dense epoch time (seconds per epoch of "
             f"{info['train_images']:,} images)", ""]
    lines += _table(epochs, ["arch", "case", "step_ms", "epoch_s", "ratio", "first_epoch_s",
                             "status"])
    lines += ["", "## Packing (concurrent runs on one device)", ""]
    lines += _table(packs, ["arch", "runs", "images_per_s", "ratio", "status"])
    lines += ["", "## Finished runs (test top-1 %, beside the published CIFAR-10 number)", ""]
    lines += _table(finished, ["run", "test_top1", "published_top1", "published_source",
                               "sparsity_achieved", "epochs_run", "wall_s"])
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


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.window", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall seconds for everything (default 480; 240 with --tiny)")
    p.add_argument("--data-root", default="", help="CIFAR-10 as a train/<class>, test/<class> "
                   "image tree or archive (e.g. cifar10-jpeg.tar.gz); not with --tiny")
    p.add_argument("--out", required=True, help="folder for the CSVs, summary, data and runs")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test on digits")
    p.add_argument("--runs-at-once", type=int, default=0,
                   help="concurrent runs (default: the measured best packing level)")
    p.add_argument("--compile", choices=("off", "on"), default="off",
                   help="torch.compile inside the runs (measured either way)")
    p.add_argument("--measure-s", type=float, default=None,
                   help="cap on the epoch-time measurements (default: a quarter of the budget)")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    budget = a.budget_s if a.budget_s is not None else (240.0 if a.tiny else 480.0)
    deadline = t_start + budget - TERM_GRACE_S - 10.0
    if not a.tiny and not a.data_root:
        p.error("--data-root is required (the CIFAR-10 copy); or use --tiny")
    device = torch.device("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    if not a.tiny and device.type != "cuda":
        p.error("no CUDA device here; use --tiny for the CPU smoke test")
    out = Path(a.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    ctx = Context("tiny" if a.tiny else "window", out)

    dataset, data_dir, prepare_s = prepare_data(out, str(Path(a.data_root).resolve())
                                                if a.data_root else "", a.tiny)
    print(f"[window] {dataset} ready in {prepare_s:.1f} s", flush=True)
    from prunebench.data.prepared import load_prepared

    prepared = load_prepared(dataset, data_dir)
    size = prepared.image_shape[1]
    n_train = round(prepared.manifest["num_train"] * (1 - prepared.manifest["val_fraction"]))
    n_val = prepared.manifest["num_train"] - n_train
    del prepared

    measure_cap = a.measure_s if a.measure_s is not None else 0.25 * budget
    sizes = ((8, 32, 4, 2) if a.tiny else (size, 128, 60, 3))  # size, batch, steps, repeats
    epochs = epoch_times(ctx, device, ["conv4"] if a.tiny else ["conv4", "resnet18"], *sizes,
                         n_train, measure_cap)
    write_csv(out / "window_epoch_times.csv", epochs)
    print(f"[window] epoch times measured ({time.perf_counter() - t_start:.0f} s)", flush=True)
    epoch_s = runs_epoch_s(epochs, device, a.compile == "on")
    step_s = epoch_s.get("conv4", 1.0) / max(n_train // sizes[1], 1)
    levels = [1, 2] if a.tiny else [1, 2, 4, 8]
    steps = 4 if a.tiny else max(20, min(400, round(3.0 / max(step_s, 1e-4))))
    packs = packing(ctx, device, "conv4", sizes[0], sizes[1], steps, levels,
                    timeout_s=max(deadline - time.perf_counter(), 30.0))
    write_csv(out / "window_packing.csv", packs)
    slots, factor = best_packing(packs)
    if a.runs_at_once:
        slots = a.runs_at_once
        factor = next((r["ratio"] for r in packs if r.get("runs") == slots and r["ratio"]),
                      factor)
    print(f"[window] packing measured: {slots} at once, factor {factor:.2f} "
          f"({time.perf_counter() - t_start:.0f} s)", flush=True)

    config = PAPER_CONFIG
    extra = [f"compile={'true' if a.compile == 'on' else 'false'}"]
    if a.tiny:
        extra += ["epochs=2", "patience=0"]
    specs = priority(a.tiny)
    dense_dir = make_job(specs[0], out, dataset, data_dir, config, device, extra, None).run_dir
    jobs = [make_job(s, out, dataset, data_dir, config, device,
                     extra + (["method.ft_epochs=1"] if a.tiny and s.method == "magnitude_ft"
                              else []), dense_dir)
            for s in specs]

    def estimate_of(job: Job) -> float:
        if not epoch_s:  # nothing measured: start in priority order, the deadline stops
            return 0.0
        return estimate(job, device, epoch_s, n_train, n_val, slots, factor)

    stopped: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, _frame: stopped.append(n))
    schedule(jobs, deadline, slots, out / "logs", estimate_of, stop=lambda: bool(stopped))
    finished, others = result_rows(jobs)
    write_rows(out / "window_finished.csv", finished, FINISHED_COLUMNS)
    write_rows(out / "window_unfinished.csv", others, OTHER_COLUMNS)
    info = {"run_id": ctx.run_id, "device": device.type, "device_name": device_name(device),
            "torch": torch.__version__, "python": sys.version.split()[0], "commit": ctx.commit,
            "budget_s": budget, "used_s": time.perf_counter() - t_start, "dataset": dataset,
            "prepare_s": prepare_s, "slots": slots, "factor": factor, "compile": a.compile,
            "train_images": n_train}
    print(summary(out, info, epochs, packs, finished, others), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
