"""The workflow's grid without torch: one expansion of a workflow config into runs (run folder,
command line), and which published rows the grid covers.

rules/common.smk (the Snakemake process, which need not have torch: `--use-conda`) and
`python -m prunebench coverage` call `expand`. Each run's settings are resolved by
`config.resolve`, as `python -m prunebench run` resolves them, and passed to the job as
`key=value` arguments, so a job's command alone reproduces it.

Which methods have a budget is read from the method files' source (prunebench/plan/catalogue.py).
Option values that only a method's constructor can judge are checked by
`python -m prunebench check-options` (a first job per method folder) before its runs start.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from prunebench import paths
from prunebench.errors import PrunebenchError
from prunebench.paths import Run
from prunebench.plan.catalogue import MethodSpec, method_catalogue
from prunebench.plan.config import (
    DATASETS,
    VARIANT_PATTERN,
    RunConfig,
    arch_problem,
    layered_settings,
    resolve,
)
from prunebench.plan.values import check_setting, coerce


class ConfigError(PrunebenchError):
    """A workflow config value that cannot run, with the key that holds it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config {key}: {message}")


@dataclass(frozen=True)
class Job:
    """A run of the grid with every setting it takes from the config, as `key=value`; `after`
    is the run id of a run whose result this one reads (a shared dense phase), "" for none."""

    run: Run
    overrides: tuple[tuple[str, Any], ...]
    after: str = ""

    def args(self) -> list[str]:
        """The arguments of `python -m prunebench run` that reproduce this run exactly."""
        r = self.run
        out = ["--dataset", r.dataset, "--arch", r.arch, "--method", r.method]
        if r.variant:
            out += ["--variant", r.variant]
        if r.sparsity is not None:
            out += ["--sparsity", paths.budget_text(r.sparsity)]
        out += ["--seed", str(r.seed), "--run-dir", r.folder]
        return out + [f"{k}={cli_value(v)}" for k, v in self.overrides]


def cli_value(value: Any) -> str:
    """A config value as the CLI reads it back (`config.coerce`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def _check_names(key: str, values: list[str], allowed: Any, kind: str) -> None:
    for i, value in enumerate(values):
        if value not in allowed:
            raise ConfigError(f"{key}[{i}]",
                              f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")


def _check_archs(key: str, values: list[str]) -> None:
    for i, value in enumerate(values):
        problem = arch_problem(value)
        if problem:
            raise ConfigError(f"{key}[{i}]", problem)


def _check_options(key: str, options: dict[str, Any], spec: MethodSpec) -> None:
    spec.typed_options(options, f"config {key}")


def _seeds(key: str, values: list[Any]) -> list[int]:
    out = []
    for value in values:
        try:
            seed = coerce(value, "int", key)
            check_setting(RunConfig, "seed", seed, key)
        except PrunebenchError as e:
            raise ConfigError(key, str(e).removeprefix(f"{key}: ")) from None
        out.append(seed)
    return out


def _sparsities(key: str, values: list[Any]) -> list[float]:
    out = []
    for value in values:
        try:
            sparsity = coerce(value, "float", key)  # also NaN, which the schema lets through
            check_setting(RunConfig, "sparsity", sparsity, "sparsity")
        except PrunebenchError as e:
            raise ConfigError(key, str(e).removeprefix(f"{key}: ")) from None
        if float(paths.budget_text(sparsity)) != sparsity:
            raise ConfigError(key, f"sparsity {sparsity} has more than 6 significant digits; its "
                              f"run folder {paths.sparsity_label(sparsity)} would not identify it")
        out.append(sparsity)
    return out


def _check_block(key: str, block: dict[str, Any], catalogue: dict[str, MethodSpec]) -> None:
    _check_names(f"{key}.datasets", block.get("datasets") or [], DATASETS, "dataset")
    _check_archs(f"{key}.archs", block.get("archs") or [])
    _check_names(f"{key}.methods", block.get("methods") or [], list(catalogue), "method")
    variant = block.get("variant", "")
    if variant and not re.fullmatch(VARIANT_PATTERN, variant):
        raise ConfigError(f"{key}.variant",
                          f"{variant!r} must match {VARIANT_PATTERN} (it names run folders)")
    if not variant and (block.get("train") or block.get("options")):
        raise ConfigError(key, "a block with its own train: or options: must name them with "
                          "`variant: NAME` (its runs get their own folders)")
    for method, options in (block.get("options") or {}).items():
        if method not in (block.get("methods") or []):
            raise ConfigError(f"{key}.options.{method}",
                              f"method {method!r} is not among the block's methods")
        _check_options(f"{key}.options.{method}", options or {}, catalogue[method])


def check_config(config: dict[str, Any], catalogue: dict[str, MethodSpec]) -> None:
    """The checks that concern the whole config rather than one block."""
    for method, section in (config.get("methods") or {}).items():
        if method not in catalogue:
            raise ConfigError(f"methods.{method}", f"unknown method {method!r}; registered "
                              f"methods: {', '.join(catalogue)}")
        _check_options(f"methods.{method}.options", (section or {}).get("options") or {},
                       catalogue[method])
    for dataset in config.get("data_roots") or {}:
        if dataset not in DATASETS:
            raise ConfigError(f"data_roots.{dataset}",
                              f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    for dataset in config.get("data_options") or {}:
        if dataset != "imagefolder":
            raise ConfigError(f"data_options.{dataset}", "prepare options (image_size, resize) "
                              "apply to imagefolder only; the other datasets keep their "
                              "official image size")
    overrides = (config.get("resources") or {}).get("train_overrides") or []
    for i, entry in enumerate(overrides):
        _check_archs(f"resources.train_overrides[{i}].archs", entry.get("archs", []))
        for axis, allowed in (("datasets", DATASETS), ("methods", list(catalogue))):
            _check_names(f"resources.train_overrides[{i}].{axis}", entry.get(axis, []),
                         allowed, axis[:-1])


# The keys of `resources.train` and `resources.train_overrides` entries that are a train_run job's
# resources (gpu_model, constraint, gres, slurm_partition, slurm_account, qos: the SLURM executor
# plugin's names, handed to it as they are).
TRAIN_RESOURCE_KEYS = ("gpu", "cpus_per_task", "mem_mb", "runtime", "gpu_model", "constraint",
                       "gres", "slurm_partition", "slurm_account", "qos")
OVERRIDE_AXES = ("dataset", "arch", "method")


def _resource_entries(config: dict[str, Any], run: Run) -> list[tuple[str, dict[str, Any]]]:
    """(key, entry) of `resources.train` and of every `resources.train_overrides` entry whose
    lists all match `run` (an absent list matches), in the order they apply."""
    section = config.get("resources") or {}
    out = [("resources.train", dict(section.get("train") or {}))]
    for i, entry in enumerate(section.get("train_overrides") or []):
        if all(getattr(run, axis) in entry[f"{axis}s"] for axis in OVERRIDE_AXES
               if f"{axis}s" in entry):
            out.append((f"resources.train_overrides[{i}]",
                        {k: v for k, v in entry.items() if k in TRAIN_RESOURCE_KEYS}))
    return out


def _resources_with_keys(config: dict[str, Any], run: Run) -> dict[str, tuple[Any, str]]:
    """Each resource of `run`'s job with the key of the entry that sets it."""
    out = {}
    for key, entry in _resource_entries(config, run):
        out.update({k: (v, key) for k, v in entry.items()})
    return out


def run_resources(config: dict[str, Any], run: Run) -> dict[str, Any]:
    """The resources of `run`'s train_run job: `resources.train`, updated by every matching
    `resources.train_overrides` entry in order (later entries win)."""
    return {k: v for k, (v, _) in _resources_with_keys(config, run).items()}


def requests_gpu(resources: dict[str, Any]) -> bool:
    """Whether a job with these resources holds a GPU (`gpu` > 0, or a GPU `gres`)."""
    return bool(resources.get("gpu")) or "gpu" in str(resources.get("gres") or "")


def _check_resources(config: dict[str, Any], run: Run, device: str,
                     layers: list[tuple[str, dict[str, Any]]]) -> None:
    """A job that holds a GPU must use it (no `device: cpu`), and a CPU-only job is never sent
    to the partition that an entry named for the GPU it requested. Under the test-only switch
    paths.GPU_PATHS_ON_CPU_ENV the CPU stands in for the GPU, and `device: cpu` is allowed."""
    keyed = _resources_with_keys(config, run)
    resources = {k: v for k, (v, _) in keyed.items()}
    folder = f"{run.dataset}/{run.arch}/{paths.method_folder(run.method, run.variant)}"
    if device == "cpu" and requests_gpu(resources) and paths.gpu_paths_on_cpu() is None:
        gpu_key = keyed["gpu"][1] + ".gpu" if resources.get("gpu") else keyed["gres"][1] + ".gres"
        device_key = next((f"{where.removeprefix('config ')}.device" for where, values
                           in reversed(layers) if "device" in values), "train.device")
        raise ConfigError(gpu_key, f"requests a GPU for the {folder} runs, but {device_key} is "
                          "cpu: the job would hold a GPU and train on the CPU. Set gpu: 0 (and "
                          "no GPU gres) for CPU runs, or device auto or cuda")
    if "slurm_partition" in resources and not requests_gpu(resources):
        key = keyed["slurm_partition"][1]
        entry = dict(_resource_entries(config, run))[key]
        if requests_gpu(entry):
            raise ConfigError(f"{key}.slurm_partition", f"{resources['slurm_partition']!r} is "
                              f"named beside a GPU request, but the {folder} runs request no "
                              "GPU: give the entry that makes them CPU-only its own "
                              "slurm_partition, so that they are not sent to a GPU partition")


def expand(config: dict[str, Any]) -> list[Job]:
    """Every run of a workflow config, in config order, deduplicated, each resolved once per
    setting by `config.resolve`; a ConfigError (naming the key) for anything that cannot run."""
    catalogue = method_catalogue()
    check_config(config, catalogue)
    jobs: dict[Run, Job] = {}
    resolved: dict[tuple[str, str, str, str], tuple[tuple[str, Any], ...]] = {}
    for b, block in enumerate(config.get("grids") or []):
        key = f"grids[{b}]" + (f" ({block['name']})" if block.get("name") else "")
        _check_block(key, block, catalogue)
        variant = block.get("variant", "")
        sparsities = _sparsities(f"{key}.sparsities", block.get("sparsities") or [])
        seeds = _seeds(f"{key}.seeds", block.get("seeds") or [])
        for dataset, arch, method in product(block["datasets"], block["archs"],
                                             block["methods"]):
            if dataset == "imagefolder" and dataset not in (config.get("data_roots") or {}):
                raise ConfigError("data_roots.imagefolder", "dataset imagefolder needs the folder "
                                  "or archive holding train/<class>/* and test/<class>/*")
            try:
                layers, options = layered_settings(config, method, variant)
                budgeted = catalogue[method].is_budgeted(options, f"{key} {method} options")
            except PrunebenchError as e:
                raise ConfigError(key, str(e)) from None
            if budgeted and not sparsities:
                raise ConfigError(f"{key}.sparsities", f"method {method} prunes to a budget; "
                                  "list at least one sparsity in [0, 1)")
            setting = (dataset, arch, method, variant)
            if setting not in resolved:
                try:
                    settings = resolve(dataset, arch, method, sparsities[0] if budgeted else None,
                                       0, config, variant=variant)
                except PrunebenchError as e:
                    raise ConfigError(key, f"{e} ({dataset}/{arch}/{method})") from None
                _check_resources(config, Run(dataset, arch, method, variant, None, 0),
                                 settings.train.device, layers)
                train = {k: v for _, values in layers for k, v in values.items()}
                resolved[setting] = (("data_dir", paths.DATA_DIR), *train.items(),
                                     *((f"method.{k}", v) for k, v in options.items()))
            for sparsity, seed in product(sparsities if budgeted else [None], seeds):
                run = Run(dataset, arch, method, variant, sparsity, seed)
                jobs.setdefault(run, Job(run, resolved[setting]))
    out = list(jobs.values())
    if config.get("share_dense_phase", True):
        out = share_dense_phase(out, catalogue)
    for job in out:
        if init_from_run(job, out) == job.run.run_id:
            raise ConfigError("train.init_from", f"run {job.run.run_id} would start from its own "
                              "saved network; set init_from under methods.<name>.train for the "
                              "methods that start from it")
    return out


def init_from_run(job: Job, jobs: list[Job]) -> str:
    """The run id of the grid's run whose saved network `job` starts from (its `init_from`),
    "" when it starts from no run of the grid (another file, or none)."""
    path = dict(job.overrides).get("init_from")
    if not path:
        return ""
    wanted = os.path.normpath(str(path))
    return next((j.run.run_id for j in jobs
                 if os.path.normpath(f"{j.run.folder}/{paths.NETWORK}") == wanted), "")


# The control whose trained network methods with a `dense_from` option can start from.
DENSE = "dense"
DENSE_FROM = "dense_from"


def _train_settings(job: Job) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in job.overrides if not k.startswith("method."))


def share_dense_phase(jobs: list[Job], catalogue: dict[str, MethodSpec]) -> list[Job]:
    """Runs of a method with a `dense_from` option (magnitude, magnitude_ft) start from the
    network of the grid's `dense` run of the same dataset, arch and seed when that run trains
    with exactly their settings: the dense phase is trained once per seed, not once per budget
    (the method refuses a dense run whose recipe differs). A `dense_from` set in the config is
    kept. The run then waits for that dense run (`Job.after`)."""
    dense = {(j.run.dataset, j.run.arch, j.run.seed, _train_settings(j)): j
             for j in jobs if j.run.method == DENSE}
    out = []
    for job in jobs:
        options = dict(job.overrides)
        source = dense.get((job.run.dataset, job.run.arch, job.run.seed, _train_settings(job)))
        if (source is not None and DENSE_FROM in dict(catalogue[job.run.method].options)
                and not options.get(f"method.{DENSE_FROM}")):
            overrides = tuple((k, v) for k, v in job.overrides if k != f"method.{DENSE_FROM}")
            job = Job(job.run, (*overrides, (f"method.{DENSE_FROM}", source.run.folder)),
                      source.run.run_id)
        out.append(job)
    return out


def method_option_sets(config: dict[str, Any], jobs: list[Job]) -> dict[str, dict[str, Any]]:
    """Per method folder (`gumbel`, `gumbel@sc-aug`) of the grid: its method, options and
    whether the catalogue says it has a budget (for `prunebench check-options`)."""
    out = {}
    for job in jobs:
        run = job.run
        folder = paths.method_folder(run.method, run.variant)
        if folder not in out:
            _, options = layered_settings(config, run.method, run.variant)
            out[folder] = {"method": run.method, "options": options,
                           "budgeted": run.sparsity is not None}
    return out


# ---- published rows ---------------------------------------------------------------------


# The columns every published-results CSV has; `variant` (the grid variant reproducing a row)
# and `certainty` are optional and read as "".
PUBLISHED_COLUMNS = ("source", "method", "arch", "dataset", "sparsity", "accuracy", "setting")
# protocol: how the row's training protocol is known (established from the reference code,
# inferred, unknown), protocol_reason: why; the report prints the first beside each comparison.
PUBLISHED_OPTIONAL = ("variant", "certainty", "protocol", "protocol_reason")


def read_published(path: str | Path) -> list[dict[str, str]]:
    """The rows of a published-results CSV (config/published_results.csv), every value
    stripped, optional columns "" where absent (sparsity "" = no budget, variant "" = the
    method's own settings). The one reader: coverage, the report and the benchmarks use it."""
    path = Path(path)
    if not path.is_file():
        raise PrunebenchError(f"published results file {path} does not exist "
                              f"(expected columns: {', '.join(PUBLISHED_COLUMNS)})")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in PUBLISHED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise PrunebenchError(f"published results file {path} lacks column(s) "
                                  f"{', '.join(missing)}; expected "
                                  f"{', '.join(PUBLISHED_COLUMNS)}")
        return [{**{c: "" for c in PUBLISHED_OPTIONAL},
                 **{k: (v or "").strip() for k, v in row.items() if k is not None}}
                for row in reader]


def _published_sparsity(text: str) -> float | None:
    return float(text) if text.strip() else None


def coverage(jobs: list[Job], published: list[dict[str, str]]
             ) -> list[tuple[dict[str, str], list[Run], str]]:
    """For each published row: the grid's runs (one per seed) that reproduce it, or why none do."""
    by_setting: dict[tuple[str, str, str, str, str], list[Run]] = {}
    for job in sorted(jobs, key=lambda j: j.run.seed):
        r = job.run
        key = (r.dataset, r.arch, r.method, r.variant, paths.sparsity_label(r.sparsity))
        by_setting.setdefault(key, []).append(r)
    out = []
    for row in published:
        label = paths.sparsity_label(_published_sparsity(row["sparsity"]))
        runs = by_setting.get((row["dataset"], row["arch"], row["method"],
                               row.get("variant", ""), label), [])
        reason = ""
        if not runs:
            near = [k for k in by_setting if k[:3] == (row["dataset"], row["arch"], row["method"])]
            reason = (f"the grid runs {row['method']} on {row['dataset']}/{row['arch']} only as "
                      + ", ".join(sorted({f"{paths.method_folder(k[2], k[3])} {k[4]}"
                                          for k in near}))
                      if near else f"no grid block runs {row['method']} on "
                      f"{row['dataset']}/{row['arch']}")
        out.append((row, runs, reason))
    return out
