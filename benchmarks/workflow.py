"""Benchmark 5, workflow overhead: the Snakemake dry run of a config (thousands of jobs must be
planned in seconds) and the fixed start-up cost every `python -m prunebench run` job pays before
its first training step. Each subprocess is timed in wall-clock and in CPU seconds (user + sys of
the child): on a shared machine the CPU time is what an idle machine's wall time would be."""
from __future__ import annotations

import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO, Context, median, synthetic_prepared

DRY_RUN_TARGET_S = 10.0
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
RUN_LINE = re.compile(r"python -m prunebench (run .*?)(?: >>? | 2>|$)")  # up to a redirection


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class Timed:
    wall_s: float
    cpu_s: float
    returncode: int
    stdout: str
    stderr: str


def run_child(cmd: list[str], timeout: float = 1800, cwd: Path = REPO) -> Timed:
    """Run `cmd`; wall seconds and CPU seconds of it and every child it waited for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                         timeout=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu, res.returncode, res.stdout, res.stderr)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


# -- the dry run and the job list ---------------------------------------------------------------
def dry_run(ctx: Context, configfile: str, repeats: int) -> list[dict[str, Any]]:
    """`snakemake -n --configfile <configfile> --quiet`, timed `repeats` times."""
    common = dict(benchmark="workflow", case=f"dry_run {configfile}", repeats=repeats,
                  target=f"< {DRY_RUN_TARGET_S:g} s", ratio_of="wall_s / target")
    if not (REPO / configfile).is_file():
        return [ctx.row("cpu", **common, status=f"pending: {configfile} does not exist yet")]
    cmd = [SNAKEMAKE, "-n", "--configfile", configfile, "--quiet"]
    runs = [run_child(cmd) for _ in range(repeats)]
    failed = [r for r in runs if r.returncode != 0]
    if failed:
        return [ctx.row("cpu", **common,
                        status=f"skipped: dry run failed: {_last_line(failed[0].stderr)}")]
    wall = median(r.wall_s for r in runs)
    cpu = median(r.cpu_s for r in runs)
    return [ctx.row("cpu", **common, command=" ".join(["snakemake", *cmd[1:]]), wall_s=wall,
                    cpu_s=cpu, ratio=wall / DRY_RUN_TARGET_S,
                    target_met=wall < DRY_RUN_TARGET_S, target_met_cpu_s=cpu < DRY_RUN_TARGET_S,
                    status="ok",
                    note="median wall and CPU seconds (snakemake + its children); on a loaded "
                         "machine wall >> CPU: the CPU seconds are the idle-machine estimate")]


def job_commands(configfile: str) -> list[list[str]]:
    """The `prunebench run` argument lists of every train job of the config (dry run with
    --forceall and --printshellcmds, so existing results do not hide jobs)."""
    res = run_child([SNAKEMAKE, "-n", "-p", "-F", "--configfile", configfile])
    if res.returncode != 0:
        raise RuntimeError(f"dry run failed: {_last_line(res.stderr)}")
    cmds = []
    for line in res.stdout.splitlines() + res.stderr.splitlines():
        m = RUN_LINE.search(line)
        if m and line.lstrip().startswith("Shell command:"):
            cmds.append(shlex.split(m.group(1))[1:])
    return cmds


@dataclass
class Job:
    dataset: str
    arch: str
    method: str
    sparsity: float | None
    seed: int
    batch_size: int
    val_fraction: float
    phases: list[tuple[str, int]]  # (phase name, epochs)


def parse_jobs(commands: list[list[str]]) -> list[Job]:
    """Resolve each job's command exactly as `prunebench run` would, then ask its method for
    its phases (names and epochs)."""
    from prunebench.cli import build_parser, run_config
    from prunebench.training.method import MethodContext, TrainSettings
    from prunebench.training.registry import get_method

    parser = build_parser()
    jobs = []
    for argv in commands:
        args, extra = parser.parse_known_args(["run", *argv])
        args.overrides = [*args.overrides, *extra]
        cfg = run_config(args)
        cls = get_method(cfg.method)
        hp = cls.hparams_cls.from_dict(cfg.method_options, f"method {cfg.method}")
        t = cfg.train
        ctx = MethodContext(sparsity=cfg.sparsity, num_classes=10, device=torch.device("cpu"),
                            seed=cfg.seed,
                            train=TrainSettings(t.epochs, t.lr, t.momentum, t.weight_decay,
                                                t.optimizer),
                            sample_batches=lambda *_: iter(()))
        phases = [(p.name, p.epochs) for p in cls(hp, ctx).phases()]
        jobs.append(Job(cfg.dataset, cfg.arch, cfg.method, cfg.sparsity, cfg.seed,
                        t.batch_size, t.val_fraction, phases))
    return jobs


# -- per-job start-up ----------------------------------------------------------------------------
def _write_prepared(data_dir: Path, name: str, n_train: int, n_test: int, size: int) -> None:
    """A synthetic dataset file + manifest in the engine's format (as `prepare` writes them)."""
    from prunebench import paths
    from prunebench.fileio import save_torch, sha256_file, write_json

    prepared = synthetic_prepared(n_train, n_test, size)
    t = prepared.tensors
    t["val_idx"] = torch.arange(0, n_train, 10)
    save_torch(paths.dataset_tensors(data_dir, name), t)
    manifest = {**prepared.manifest, "format_version": 1, "dataset": name,
                "classes": [str(i) for i in range(10)], "val_fraction": 0.1, "split_seed": 0,
                "sha256": sha256_file(paths.dataset_tensors(data_dir, name))}
    write_json(paths.dataset_manifest(data_dir, name), manifest)


def startup(ctx: Context, repeats: int, cifar_images: int) -> list[dict[str, Any]]:
    """The fixed cost of one job: imports, plugin registry, resolving the config, loading and
    checksumming the dataset file, building the model; and a whole zero-epoch job."""
    from prunebench.data.prepared import DeviceData, load_prepared, prepare
    from prunebench.training.models import create_model

    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory(prefix="pb-bench-") as tmp:
        tmp = Path(tmp)
        prepare("digits", tmp)
        base = ["-m", "prunebench", "run", "--dataset", "digits", "--arch", "conv4",
                "--method", "dense"]
        cases = {
            "import torch": [py, "-c", "import torch"],
            "import timm": [py, "-c", "import timm"],
            "import prunebench.cli": [py, "-c", "import prunebench.cli"],
            "prunebench run --print-run-dir": [py, *base, "--print-run-dir"],
        }
        times: dict[str, list[Timed]] = {k: [] for k in cases}
        times["prunebench run epochs=0 (digits)"] = []
        for r in range(repeats):
            for name, cmd in cases.items():
                times[name].append(run_child(cmd))
            times["prunebench run epochs=0 (digits)"].append(run_child(
                [py, *base, "--run-dir", str(tmp / f"run{r}"), "epochs=0", f"data_dir={tmp}",
                 "device=cpu"]))
        torch_wall = median(t.wall_s for t in times["import torch"])
        for name, ts in times.items():
            bad = [t for t in ts if t.returncode != 0]
            if bad:
                rows.append(ctx.row("cpu", benchmark="startup", case=name, repeats=repeats,
                                    status=f"skipped: failed: {_last_line(bad[0].stderr)}"))
                continue
            wall = median(t.wall_s for t in ts)
            rows.append(ctx.row("cpu", benchmark="startup", case=name, repeats=repeats,
                                wall_s=wall, cpu_s=median(t.cpu_s for t in ts),
                                ratio=wall / torch_wall, ratio_of="wall_s / import torch wall_s",
                                status="ok", note="fresh python process each time"))
        # What a CIFAR-10 job pays in-process before its first step.
        _write_prepared(tmp, "cifar10", cifar_images, cifar_images // 5, 32)
        loads, builds = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            data = DeviceData(load_prepared("cifar10", tmp), torch.device("cpu"), 0.1)
            loads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for arch in ("conv4", "resnet18"):
                create_model(arch, 10, 3, 32)
            builds.append(time.perf_counter() - t0)
            del data
        size_mib = (tmp / "cifar10.pt").stat().st_size / 2**20
        rows.append(ctx.row("cpu", benchmark="startup", case="load + checksum dataset file",
                            repeats=repeats, wall_s=median(loads), ratio=median(loads) / torch_wall,
                            ratio_of="wall_s / import torch wall_s", status="ok",
                            images=cifar_images * 6 // 5, file_mib=size_mib,
                            note="in-process: sha256 + torch.load + DeviceData of a synthetic "
                                 f"CIFAR-10-format file ({cifar_images} train images)"))
        rows.append(ctx.row("cpu", benchmark="startup", case="create conv4 + resnet18",
                            repeats=repeats, wall_s=median(builds),
                            ratio=median(builds) / torch_wall,
                            ratio_of="wall_s / import torch wall_s", status="ok",
                            note="in-process, models only"))
    return rows


def job_fixed_seconds(rows: list[dict[str, Any]], cpu_time: bool,
                      cifar_images_full: int = 60000) -> float:
    """Start-up seconds of one CIFAR-10 job from the start-up rows: a zero-epoch job (its CPU
    seconds when `cpu_time`, else wall) plus the dataset load scaled to the full 60,000-image
    file (nan when a piece is missing)."""
    by = {r["case"]: r for r in rows if r.get("benchmark") == "startup" and r.get("status") == "ok"}
    try:
        job = by["prunebench run epochs=0 (digits)"]["cpu_s" if cpu_time else "wall_s"]
        load = by["load + checksum dataset file"]
        return job + load["wall_s"] * cifar_images_full / load["images"]
    except KeyError:
        return float("nan")
