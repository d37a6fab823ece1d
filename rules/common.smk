"""All of the workflow's Python: config checks the schema cannot express, the run grid,
wildcard constraints and input functions. Rule files stay declarative."""

import os
import re
import shlex
import sys
from itertools import product

from snakemake.exceptions import WorkflowError

# The engine lives beside the Snakefile; the rules run it as `python -m prunebench`.
sys.path.insert(0, workflow.basedir)
try:
    from prunebench import paths
    from prunebench.config import DATASETS, resolve
    from prunebench.errors import PrunebenchError
    from prunebench.models import ARCHS
    from prunebench.registry import get_method, list_methods
except ImportError as e:
    raise WorkflowError(
        f"cannot import the prunebench engine ({e}). Run snakemake from the prunebench "
        "environment: `make run`, or `pip install -r requirements.txt` / "
        "`conda env create -f environment.yml` and activate it."
    ) from None

RUNS_DIR = "results/runs"
DATA_DIR = "results/data"
RUN_DIR = "results/runs/{dataset}/{arch}/{method}/s{sparsity}/seed{seed}"
# Touched by train_run when the run ended with metrics.json (exit 0) or failed.json (exit 3,
# diverged): both are results. Everything else (errors, preemption exit 75) fails the job.
RUN_DONE = "results/runs/{dataset}/{arch}/{method}/s{sparsity}/seed{seed}/workflow.done"
TRAIN_RESOURCE_KEYS = ("gpu", "cpus_per_task", "mem_mb", "runtime")
# The config file the report describes: config/config.yaml, or the (last) --configfile,
# which replaces it (see Snakefile).
WORKFLOW_CONFIG_FILE = os.path.relpath(workflow.configfiles[-1])


def _config_error(key, message):
    files = ", ".join(os.path.relpath(f) for f in workflow.configfiles)
    return WorkflowError(f"config {key}: {message} (config file: {files})")


def _check_names(key, values, allowed, kind):
    for i, value in enumerate(values):
        if value not in allowed:
            raise _config_error(
                f"{key}[{i}]",
                f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}",
            )


def _method_settings(method):
    return config["methods"].get(method, {"train": {}, "options": {}})


def _check_methods():
    """Names registered, options existing in each method's hparams dataclass; budgeted or not."""
    registered = list_methods()
    budgeted = {}
    for method in config["methods"]:
        if method not in registered:
            raise _config_error(
                f"methods.{method}",
                f"unknown method {method!r}; registered methods: {', '.join(registered)}",
            )
    for method in registered:
        cls = get_method(method)
        where = f"config methods.{method}.options"
        try:
            hparams = cls.hparams_cls.from_dict(_method_settings(method)["options"], where)
            budgeted[method] = cls(hparams, None).is_budgeted()
        except PrunebenchError as e:
            message = str(e) if where in str(e) else f"{where}: {e}"
            raise WorkflowError(message) from None
    return budgeted


def _sparsity_label(block_key, sparsity):
    if not 0 <= sparsity < 1:  # also NaN, which the schema's bounds let through
        raise _config_error(block_key, f"sparsity {sparsity} is outside [0, 1)")
    label = paths.sparsity_label(sparsity)[1:]
    if float(label) != sparsity:
        raise _config_error(
            block_key,
            f"sparsity {sparsity} has more than 6 significant digits; its run folder "
            f"s{label} would not identify it",
        )
    return label


def _build_grid():
    """Every run of the config, deduplicated, in config order: dicts of wildcard values."""
    budgeted = _check_methods()
    for dataset in config["data_roots"]:
        if dataset not in DATASETS:
            raise _config_error(f"data_roots.{dataset}",
                                f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    for i, entry in enumerate(config["resources"]["train_overrides"]):
        for axis, allowed in (("datasets", DATASETS), ("archs", ARCHS),
                              ("methods", list_methods())):
            _check_names(f"resources.train_overrides[{i}].{axis}", entry.get(axis, []),
                         allowed, axis[:-1])
    runs = {}
    for b, block in enumerate(config["grids"]):
        key = f"grids[{b}]" + (f" ({block['name']})" if block["name"] else "")
        _check_names(f"{key}.datasets", block["datasets"], DATASETS, "dataset")
        _check_names(f"{key}.archs", block["archs"], ARCHS, "arch")
        _check_names(f"{key}.methods", block["methods"], list_methods(), "method")
        labels = [_sparsity_label(f"{key}.sparsities", s) for s in block["sparsities"]]
        for method in block["methods"]:
            if budgeted[method] and not labels:
                raise _config_error(
                    f"{key}.sparsities",
                    f"method {method} prunes to a budget; list at least one sparsity in [0, 1)",
                )
        for dataset, arch, method in product(block["datasets"], block["archs"],
                                             block["methods"]):
            if dataset == "imagefolder" and dataset not in config["data_roots"]:
                raise _config_error(
                    "data_roots.imagefolder",
                    "dataset imagefolder needs the folder or archive holding "
                    "train/<class>/* and test/<class>/*",
                )
            sparsities = labels if budgeted[method] else ["none"]
            _check_run_config(key, dataset, arch, method, sparsities[0])
            for sparsity, seed in product(sparsities, block["seeds"]):
                run = dict(dataset=dataset, arch=arch, method=method, sparsity=sparsity,
                           seed=str(seed))
                runs[tuple(run.values())] = run
    return list(runs.values())


def _check_run_config(key, dataset, arch, method, sparsity):
    """Resolve one run exactly as `python -m prunebench run` will, so bad values stop here."""
    value = None if sparsity == "none" else float(sparsity)
    try:
        resolve(dataset, arch, method, value, 0, _run_file_config())
    except PrunebenchError as e:
        raise WorkflowError(f"{e} (in {key}: {dataset}/{arch}/{method})") from None
    path = RUN_DIR.format(dataset=dataset, arch=arch, method=method, sparsity=sparsity, seed=0)
    assert path == str(paths.run_dir(RUNS_DIR, dataset, arch, method, value, 0)), path


def _run_file_config():
    return {"train": config["train"], "methods": config["methods"]}


def _alternatives(values):
    return "|".join(re.escape(v) for v in sorted(set(values), key=str))


RUNS = _build_grid()

wildcard_constraints:
    dataset=_alternatives(run["dataset"] for run in RUNS),
    arch=_alternatives(run["arch"] for run in RUNS),
    method=_alternatives(run["method"] for run in RUNS),
    sparsity=_alternatives(run["sparsity"] for run in RUNS),
    seed=_alternatives(run["seed"] for run in RUNS),


def _cli_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


# ---- input functions and params ----------------------------------------------------------


def run_markers():
    """The done-markers of every run in the grid (aggregate_runs waits for all of them)."""
    return [RUN_DONE.format(**run) for run in RUNS]


def dataset_source(wildcards):
    """The image tree or archive an imagefolder dataset is read from; nothing otherwise."""
    if wildcards.dataset == "imagefolder":
        return [config["data_roots"]["imagefolder"]]
    return []


def prepare_root_flag(wildcards):
    root = config["data_roots"].get(wildcards.dataset)
    return f"--root {shlex.quote(root)}" if root else ""


def sparsity_flag(wildcards):
    """`--sparsity S` for a budgeted run, nothing for the `snone` runs."""
    return "" if wildcards.sparsity == "none" else f" --sparsity {wildcards.sparsity}"


def run_overrides(wildcards):
    """The config's settings for this run as `key=value` arguments, so the job's command alone
    reproduces it (and Snakemake's params trigger sees exactly this run's settings)."""
    settings = _method_settings(wildcards.method)
    items = {"data_dir": DATA_DIR, **config["train"], **settings["train"]}
    items.update({f"method.{k}": v for k, v in settings["options"].items()})
    return " ".join(shlex.quote(f"{k}={_cli_value(v)}") for k, v in items.items())


def train_resources(wildcards):
    """resources.train, updated by every matching resources.train_overrides entry in order."""
    res = dict(config["resources"]["train"])
    for entry in config["resources"]["train_overrides"]:
        axes = [axis for axis in ("dataset", "arch", "method") if f"{axis}s" in entry]
        if all(getattr(wildcards, axis) in entry[f"{axis}s"] for axis in axes):
            res.update({k: v for k, v in entry.items() if k in TRAIN_RESOURCE_KEYS})
    return res


def report_templates():
    """The report's LaTeX templates (report/templates/), so that editing one rebuilds it."""
    found = []
    for folder, _, names in os.walk(os.path.join(workflow.basedir, "report")):
        rel = os.path.relpath(folder, workflow.basedir)
        found += [f"{rel}/{n}" for n in names if re.search(r"\.(tex|sty|bib|cls|j2)$", n)]
    return sorted(found)
