"""The runs of the GPU window (`benchmarks.window`): its priority list, each run's `prunebench run`
command, the environment it starts in (its device slots), the time it is expected to take, the
scheduler that packs them on the device until the budget, the plan of that schedule printed
without training, and their results beside the published numbers."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO

PAPER_CONFIG = REPO / "config" / "paper.yaml"
PUBLISHED = REPO / "config" / "published_results.csv"
SPARSITIES = (0.9, 0.95, 0.97, 0.99)  # the 2021 paper's conv4 column
PAPER_REPARAM = "paper-sgd-t"  # config/paper.yaml: t by SGD at the weights' lr, lambda 1
ASLP = "aslp-sc-aug"  # config/paper.yaml: the 2022 paper's setting (a), no rescale
PRECISION_SEEDS = (0, 1)  # the seeds of the fp32-vs-bf16 pairs (issue 17, precision)
TERM_GRACE_S = 30.0  # how long a run gets to checkpoint after SIGTERM
STARTUP_S = (20.0, 8.0)  # (cuda, cpu) seconds a run spends before its first step (estimate)
METHOD_FACTOR = 1.2  # a pruning method's step vs dense's, for the estimate (benchmarks/: <1.15)


@dataclass(frozen=True)
class Spec:
    """One run of the priority list; `amp` set for one arm of a fp32-vs-bf16 pair."""

    arch: str
    method: str
    sparsity: float | None
    variant: str = ""
    needs_dense: bool = False  # magnitude*: prune the dense run's network (method.dense_from)
    seed: int = 0
    amp: bool | None = None  # None: the config's precision

    @property
    def precision(self) -> str:
        return "" if self.amp is None else ("bf16" if self.amp else "fp32")

    @property
    def label(self) -> str:
        name = f"{self.method}@{self.variant}" if self.variant else self.method
        budget = "" if self.sparsity is None else f" s={self.sparsity:g}"
        pair = f" seed{self.seed} {self.precision}" if self.amp is not None else ""
        return f"{self.arch} {name}{budget}{pair}"


TINY_ENDLESS = Spec("conv2", "dense", None, seed=1)  # --tiny: a run of 100,000 epochs


def precision_pairs(tiny: bool) -> list[Spec]:
    """One published setting of each paper in fp32 and in bf16, same seeds: the 2021 paper's
    reparam (conv4, 0.9) and the 2022 paper's gumbel (conv2, setting (a))."""
    settings = [Spec("conv4", "reparam", 0.9, PAPER_REPARAM), Spec("conv2", "gumbel", None, ASLP)]
    if tiny:  # the smoke test: one setting, one seed
        return [Spec("conv4", "reparam", 0.9, PAPER_REPARAM, amp=amp) for amp in (False, True)]
    seeds = PRECISION_SEEDS
    return [Spec(s.arch, s.method, s.sparsity, s.variant, seed=seed, amp=amp)
            for s in settings for seed in seeds for amp in (False, True)]


def priority(tiny: bool) -> list[Spec]:
    """CIFAR-10 conv4 dense; the fp32-vs-bf16 pairs; reparam (paper's and the suite's
    settings), magnitude and magnitude_ft at each budget; then gumbel and edge-popup on conv2 in
    the published settings. --tiny: dense, one pair, magnitude from the dense run and a last run
    too long for any budget (it fills an idle slot and is stopped at the budget)."""
    specs = [Spec("conv4", "dense", None), *precision_pairs(tiny)]
    if tiny:  # the smoke test: a run pruning the dense run's network, and one that cannot end
        return [*specs, Spec("conv4", "magnitude", 0.9, needs_dense=True), TINY_ENDLESS]
    budgets = SPARSITIES
    specs += [Spec("conv4", "reparam", s, PAPER_REPARAM) for s in budgets]
    specs += [Spec("conv4", "reparam", s) for s in budgets]
    specs += [Spec("conv4", "magnitude", s, needs_dense=True) for s in budgets]
    specs += [Spec("conv4", "magnitude_ft", s, needs_dense=True) for s in budgets]
    specs += [Spec("conv2", "gumbel", None, ASLP), Spec("conv2", "edgepopup", 0.5, ASLP),
              Spec("conv2", "edgepopup", 0.5)]
    return specs


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
    stop_sent: bool = False  # the window sent it SIGTERM (budget or yielding)
    reason: str = ""
    log: Path | None = None


def make_job(spec: Spec, out: Path, dataset: str, data_dir: Path, config: Path,
             device: torch.device, extra: list[str], dense_dir: Path | None) -> Job:
    """The `prunebench run` command of `spec` and its epochs, resolved as the CLI does."""
    from benchmarks.workflow import parse_jobs
    from prunebench import paths

    run_dir = paths.run_dir(out / paths.RUNS, dataset, spec.arch, spec.method, spec.sparsity,
                            spec.seed, spec.variant)
    if spec.amp is not None:  # a precision arm: its own folder beside the seed's
        run_dir = run_dir.with_name(f"{run_dir.name}-{spec.precision}")
    argv = ["--dataset", dataset, "--arch", spec.arch, "--method", spec.method, "--seed",
            str(spec.seed), "--config", str(config), "--run-dir", str(run_dir)]
    if spec.sparsity is not None:
        argv += ["--sparsity", f"{spec.sparsity:g}"]
    if spec.variant:
        argv += ["--variant", spec.variant]
    argv += [f"data_dir={data_dir}", f"device={device.type}", *extra]
    if spec.amp is not None:
        argv.append(f"amp={str(spec.amp).lower()}")
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


# -- starting runs -----------------------------------------------------------------------------
def run_env(out: Path, slots: int, devices: list[str], tiny: bool) -> dict[str, str]:
    """The environment the window's runs start in: slots for `slots` runs at once over
    `devices` (PRUNEBENCH_JOBS_PER_GPU, which training/gpus.py reads), locks of the window's
    own, and with --tiny the test-only switch that takes the GPU paths on the CPU (bf16
    autocast, channels_last, device slots over a fake device list)."""
    from prunebench.training import cuda, gpus

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           gpus.JOBS_PER_GPU_ENV: str(max(math.ceil(slots / max(len(devices), 1)), 1)),
           gpus.LOCK_DIR_ENV: str(out / "gpu-locks")}
    env.pop(gpus.CLAIMED_ENV, None)
    if tiny:
        env[cuda.FORCE_ENV] = "aot_eager"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return env


def launch(job: Job, logs: Path, env: dict[str, str]) -> None:
    """Start `job`'s run, its output appended to its log (a resumed run appends)."""
    job.log = logs / (job.spec.label.replace(" ", "_").replace("=", "") + ".log")
    with open(job.log, "a") as log:
        job.proc = subprocess.Popen([sys.executable, "-m", "prunebench", "run", *job.argv],
                                    cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    job.started = time.perf_counter()
    job.status = "running"
    job.stop_sent = False


def ended_how(rc: int) -> str:
    """A process's end in words: 'exit N' or 'killed by signal N (NAME)'."""
    if rc >= 0:
        return f"exit {rc}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = "unknown"
    return f"killed by signal {-rc} ({name})"


def finish(job: Job) -> None:
    """Record how a run's process ended: finished (metrics.json); unfinished when the window
    stopped it (checkpoint kept, or none yet); failed otherwise, a kill it did not send (the
    OOM killer's SIGKILL) included."""
    from prunebench import paths

    rc = job.proc.returncode
    job.ended = time.perf_counter()
    started_training = job.log is not None and job.log.exists() and " run " in job.log.read_text()
    checkpoint = (job.run_dir / paths.CHECKPOINT).exists()
    if rc == paths.EXIT_OK and (job.run_dir / paths.METRICS).exists():
        job.status = "finished"
    elif job.stop_sent and (rc == paths.EXIT_PREEMPTED or rc in (-signal.SIGTERM,
                                                                   -signal.SIGKILL)):
        job.status = "unfinished"
        job.reason = ("stopped at the budget; checkpoint kept, rerun the same command to resume"
                      if checkpoint else "stopped at the budget before its first checkpoint"
                      + ("" if started_training else " (it had not started training)"))
    elif rc == paths.EXIT_PREEMPTED:
        job.status = "unfinished"
        job.reason = "preempted by a signal the window did not send; checkpoint kept"
    else:
        job.status = "failed"
        lines = job.log.read_text().strip().splitlines() if job.log else []
        tail = lines[-1][:300] if lines else ""
        oom = " (the kernel's OOM killer?)" if rc == -signal.SIGKILL else ""
        job.reason = f"{ended_how(rc)}{oom}: {tail}"


def _stop(job: Job) -> None:
    job.proc.send_signal(signal.SIGTERM)
    job.stop_sent = True


def schedule(jobs: list[Job], deadline: float, slots: int, logs: Path, env: dict[str, str],
             estimate_of: Any, poll_s: float = 0.5, stop: Any = lambda: False) -> None:
    """Run `jobs` in priority order, at most `slots` at once, until done, `deadline` (a
    perf_counter time) or `stop()` (e.g. the window itself got SIGTERM/SIGINT). A job starts
    when a slot is free, its dense run (if any) has finished and its estimate fits before the
    deadline. A job that does not fit starts only in a slot that would otherwise stay idle (to
    be resumed in a later window) and yields its slot to a job that fits (SIGTERM: it
    checkpoints and may resume here later). At the deadline every running job gets SIGTERM (it
    saves a checkpoint and exits 75), then SIGKILL after TERM_GRACE_S."""
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
            _stop(j)
            j.status = "yielding"
        for j in (fits or waiting)[:max(free, 0)]:
            j.fill = j not in fits
            j.estimate_s = estimate_of(j)
            launch(j, logs, env)
        time.sleep(poll_s)
    for j in jobs:
        if j.status == "running" and j.proc.poll() is None:
            _stop(j)
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


def simulate(jobs: list[Job], start: float, deadline: float, slots: int, estimate_of: Any
             ) -> list[dict[str, Any]]:
    """The schedule `schedule` would follow if every run took its estimate: per run, in
    priority order, when it starts (seconds into the window), how many runs then share the
    device, its expected seconds and how it would end. A run that does not fit fills an idle
    slot until a run that fits needs it or the budget ends."""
    free_at = [start] * slots
    dense = next((j for j in jobs if j.spec.method == "dense"), None)
    dense_end = None
    rows = []
    for j in jobs:
        need = estimate_of(j)
        slot = min(range(slots), key=lambda i: free_at[i])
        begin = free_at[slot]
        if j.spec.needs_dense:
            begin = max(begin, dense_end if dense_end is not None else math.inf)
        if begin >= deadline:
            rows.append({"run": j.spec.label, "start_s": None, "runs_at_once": None,
                         "expected_s": round(need), "plan": "not started: the budget ends "
                         "first" + (" (its dense run does not finish)" if begin == math.inf
                                    else "")})
            continue
        fits = begin + need <= deadline
        end = begin + need if fits else deadline
        free_at[slot] = end if fits else deadline
        if j is dense and fits:
            dense_end = end
        at_once = sum(1 for t in free_at if t > begin)
        rows.append({"run": j.spec.label, "start_s": round(begin), "runs_at_once": at_once,
                     "expected_s": round(need),
                     "plan": "finishes" if fits else "fills an idle slot; stopped at the "
                     "budget with a checkpoint (resumed by the next window)"})
    return rows


# -- results -----------------------------------------------------------------------------------
def published_rows() -> list[dict[str, str]]:
    with open(PUBLISHED, newline="") as f:
        return list(csv.DictReader(f))


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

    published = published_rows()
    finished, others = [], []
    for j in jobs:
        s = j.spec
        base = {"run": s.label, "arch": s.arch, "method": s.method, "variant": s.variant,
                "sparsity": s.sparsity, "seed": s.seed, "precision": s.precision,
                "epochs_trained": j.epochs}
        if j.status == "finished":
            m = json.loads((j.run_dir / paths.METRICS).read_text())
            pub, source = published_for(s, published)
            finished.append({**base, "test_top1": m["test_top1"],
                             "sparsity_achieved": m["sparsity_achieved"],
                             "epochs_run": m.get("epochs_run"),
                             "trained_in": m.get("precision", ""),
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


def precision_rows(finished: list[dict[str, Any]], tiny: bool) -> list[dict[str, Any]]:
    """Per setting of `precision_pairs`: test top-1 mean over the seeds in fp32 and in bf16,
    their difference beside the spread over seeds (the larger of the two arms' sample standard
    deviations), from the seeds both arms finished; `pending` until they have."""
    rows = []
    done = {(r["run"].rsplit(" seed", 1)[0], r["seed"], r["precision"]): r["test_top1"]
            for r in finished if r["precision"]}
    settings = dict.fromkeys(s.label.rsplit(" seed", 1)[0] for s in precision_pairs(tiny))
    for setting in settings:
        seeds = [seed for seed in PRECISION_SEEDS
                 if (setting, seed, "fp32") in done and (setting, seed, "bf16") in done]
        fp32 = [done[(setting, seed, "fp32")] for seed in seeds]
        bf16 = [done[(setting, seed, "bf16")] for seed in seeds]
        if not seeds:
            rows.append({"setting": setting, "seeds": "", "status": "pending: no seed has "
                         "finished in both precisions yet (rerun the window to continue)"})
            continue
        spread = (max(statistics.stdev(fp32), statistics.stdev(bf16)) if len(seeds) > 1
                  else float("nan"))
        rows.append({"setting": setting, "seeds": ",".join(map(str, seeds)),
                     "fp32_top1_mean": statistics.fmean(fp32),
                     "bf16_top1_mean": statistics.fmean(bf16),
                     "bf16_minus_fp32": statistics.fmean(bf16) - statistics.fmean(fp32),
                     "paired_differences": ";".join(f"{b - f:+.2f}"
                                                    for b, f in zip(bf16, fp32, strict=True)),
                     "seed_std": spread, "status": "ok" if len(seeds) > 1
                     else "ok: one seed, no spread yet"})
    return rows
