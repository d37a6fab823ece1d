"""The layout of everything the suite reads or writes, in one place (the OpenLTH way): the results
roots, every file name, a run folder built from a run's identity and parsed back into it, the
config digest that ties a folder's files together, and the exit codes a job's command returns.
The CLI, the grid, the reporting, the benchmarks and the workflow's rules read them from here.

Torch-free and pandas-free: the Snakemake process imports it."""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

# ---- roots: every output of the workflow lives under one results folder ----------------------
RESULTS = "results"
RUNS = "runs"  # the run folders, below a results folder
FIGURES = "figures"
REPORT = "report"
DATA = "data"  # prepared datasets (and the downloaded archives under data/raw)
LOGS = "logs"  # the workflow's job logs
CHECKS = "checks"  # the workflow's markers of checked method options
RUNS_ROOT = f"{RESULTS}/{RUNS}"
DATA_DIR = f"{RESULTS}/{DATA}"
FIGURES_DIR = f"{RESULTS}/{FIGURES}"
REPORT_DIR = f"{RESULTS}/{REPORT}"
LOGS_DIR = f"{RESULTS}/{LOGS}"
CHECKS_DIR = f"{RESULTS}/{CHECKS}"
RAW = "raw"  # official archives, below the data folder

# ---- a run folder's files ---------------------------------------------------------------------
METRICS = "metrics.json"  # written last: its presence means the run finished
HISTORY = "history.csv"
LAYERS = "layers.csv"
LOG = "log.txt"
CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
FAILED = "failed.json"  # a run that stopped on an error (e.g. NaN loss) and why
LOCK = ".lock"  # held (flock) by the one process writing the run folder
NETWORK = "network.safetensors"  # state_dict of the folded, extracted model
MASKS = "masks.safetensors"  # boolean mask of every prunable layer, keyed by layer name
WORKFLOW_DONE = "workflow.done"  # the workflow's marker: the run's job ended (ok or failed)
BENCHMARK = "benchmark.tsv"  # the workflow's record of the run's job: time, peak memory (Snakemake)

# ---- a results folder's files -----------------------------------------------------------------
SUMMARY = "summary.csv"  # one row per run folder
SUMMARY_BY_SETTING = "summary_by_setting.csv"  # mean, std, n over seeds per setting
MANIFEST = "manifest.json"  # the figures drawn, with captions (in the figures folder)
REPORT_TEX = "report.tex"
REPORT_PDF = "report.pdf"

# ---- test-only switch -----------------------------------------------------------------------
GPU_PATHS_ON_CPU_ENV = "PRUNEBENCH_GPU_PATHS_ON_CPU"
"""Test-only switch: the CPU stands in for CUDA (the GPU code paths run there, training/cuda.py;
a workflow job that holds a fake GPU may train with device=cpu, the SLURM test's node)."""


def gpu_paths_on_cpu() -> str | None:
    """The switch's value ("1" or a torch.compile backend name) when it is on; None when unset
    or "0"."""
    value = os.environ.get(GPU_PATHS_ON_CPU_ENV, "").strip()
    return None if value in ("", "0") else value

# ---- exit codes of `python -m prunebench` -----------------------------------------------------

EXIT_OK = 0
EXIT_ERROR = 1  # a PrunebenchError: the message says what to fix
EXIT_DIVERGED = 3  # the loss became NaN/inf: failed.json is written, the run is a (failed) result
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was saved, rerun the same command to resume
EXIT_USAGE = 2  # argparse: a bad command line (unknown flag, a value outside what is allowed)
# What `prunebench --help` prints about each.
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "an error the message names (a setting, a file, the data, a plugin)",
    EXIT_USAGE: "bad command line: unknown flag, or a --dataset/--arch/--method/--sparsity\n"
                "       value outside what is allowed (the message lists what is)",
    EXIT_DIVERGED: "run: training diverged (NaN or infinite loss); failed.json says where",
    EXIT_PREEMPTED: "run: stopped by SIGTERM after saving a checkpoint; rerun to resume",
}


def dataset_tensors(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / f"{name}.pt"


def dataset_manifest(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / f"{name}.json"


def budget_text(sparsity: float | None, none: str = "none") -> str:
    """The one text of a budget, everywhere (folders, command lines, tables, figures): `0.9`
    (at most 6 significant digits), or `none` (the caller's word, e.g. "no budget") for no
    budget: None in code, NaN in a table."""
    if sparsity is None or sparsity != sparsity:
        return none
    return f"{float(sparsity):g}"


def sparsity_label(sparsity: float | None) -> str:
    """A budget's run-folder level: `s0.9`, `snone` for no budget (dense, emergent sparsity)."""
    return "s" + budget_text(sparsity)


def method_folder(method: str, variant: str = "") -> str:
    """`gumbel` for a method's own settings, `gumbel@sc-aug` for its variant `sc-aug`."""
    return f"{method}@{variant}" if variant else method


def arch_folder(arch: str) -> str:
    """An arch's folder name: `timm/convnext_atto` -> `timm-convnext_atto` (one path level;
    timm names have no `-`), the papers' networks as they are."""
    return arch.replace("/", "-", 1)


def arch_from_folder(folder: str) -> str:
    """The arch an arch folder names (the inverse of `arch_folder`)."""
    return folder.replace("-", "/", 1) if folder.startswith("timm-") else folder


_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_RUN_ID = re.compile(rf"(?P<dataset>{_NAME})/(?P<arch>{_NAME})/(?P<method>{_NAME})"
                     rf"(?:@(?P<variant>{_NAME}))?/s(?P<sparsity>none|[0-9.e+-]+)"
                     r"/seed(?P<seed>[0-9]+)")


@dataclass(frozen=True)
class Run:
    """One run's identity, the grid axes. Its folder is built (`run_id`, `folder`) and parsed
    back (`Run.parse`) here only."""

    dataset: str
    arch: str
    method: str
    variant: str
    sparsity: float | None
    seed: int

    @property
    def run_id(self) -> str:
        """`{dataset}/{arch}/{method}[@{variant}]/s{sparsity}/seed{seed}` (arch as `arch_folder`
        spells it): the folder below the runs root (the workflow's `{run}` wildcard)."""
        return (f"{self.dataset}/{arch_folder(self.arch)}/"
                f"{method_folder(self.method, self.variant)}/"
                f"{sparsity_label(self.sparsity)}/seed{self.seed}")

    @property
    def folder(self) -> str:
        """The run's folder under the workflow's runs root."""
        return f"{RUNS_ROOT}/{self.run_id}"

    @classmethod
    def parse(cls, run_id: str | Path) -> Run:
        """The run a folder below the runs root names (the inverse of `run_id`); ValueError,
        naming the expected layout, for any other path."""
        text = PurePosixPath(run_id).as_posix()
        match = _RUN_ID.fullmatch(text)
        sparsity = None
        try:
            if match and match["sparsity"] != "none":
                sparsity = float(match["sparsity"])
        except ValueError:
            match = None
        if match is None:
            raise ValueError(f"{text!r} is not a run folder below the runs root: expected "
                             "<dataset>/<arch>/<method>[@<variant>]/s<sparsity|none>/seed<n>")
        return cls(match["dataset"], arch_from_folder(match["arch"]), match["method"],
                   match["variant"] or "", sparsity, int(match["seed"]))


def run_dir(out_root: str | Path, dataset: str, arch: str, method: str,
            sparsity: float | None, seed: int, variant: str = "") -> Path:
    """`{out}/{dataset}/{arch}/{method}[@{variant}]/s{sparsity}/seed{seed}`: built here only."""
    return Path(out_root) / Run(dataset, arch, method, variant, sparsity, seed).run_id


def config_digest(config: dict[str, Any]) -> str:
    """Short hash of a run's whole config (RunConfig.to_dict(), or the dict a folder saved): a
    resumed run, its checkpoint, metrics.json and failed.json must all carry the same one."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
