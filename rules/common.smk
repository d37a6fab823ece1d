"""All of the workflow's Python: the run grid, config checks the schema cannot express, wildcard
constraints and input functions. Rule files stay declarative.

This process never imports torch or timm (with `--use-conda` only the rules' environment has
them). prunebench/plan/grid.py expands the config into runs without them: it resolves every run's
settings with the engine's own `config.resolve` (torch-free), and reads which methods exist,
their option names and whether they have a budget from the method files' declarations
(`budgeted`, `budget_option`, the hparams dataclass), so the DAG is complete at parse time and
`snakemake -n` lists every run. What only a method's constructor can judge (an option value out
of range) is checked by a first job per method folder, check_options, in the rules'
environment: the folder's runs wait for it, so a bad value stops them before any starts. A static
catalogue was chosen over parsing-time imports (torch in the Snakemake process) and over a
checkpoint rule (a dry run would not show the runs).
"""

import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError

# The engine lives beside the Snakefile; the rules run it as `python -m prunebench`.
sys.path.insert(0, workflow.basedir)
try:
    from prunebench import paths
    from prunebench.plan import grid
    from prunebench.errors import PrunebenchError
except ImportError as e:
    raise WorkflowError(
        f"cannot import prunebench/plan/grid.py ({e}): it needs only Python and PyYAML. Run "
        "snakemake from the prunebench environment (`make run`, or `conda env create -f "
        "environment.yml` and activate it)."
    ) from None

DATA_DIR = paths.DATA_DIR
RUN_DONE = "results/runs/{run}/workflow.done"  # results/runs = paths.RUNS_ROOT
OPTIONS_CHECKED = "results/checks/{method_folder}.ok"
TRAIN_RESOURCE_KEYS = ("gpu", "cpus_per_task", "mem_mb", "runtime", "gpu_model", "constraint",
                       "gres")
# The config file the report describes: config/config.yaml, or the (last) --configfile,
# which replaces it (see Snakefile).
WORKFLOW_CONFIG_FILE = os.path.relpath(workflow.configfiles[-1])


def _expand():
    try:
        return grid.expand(config)
    except PrunebenchError as e:
        files = ", ".join(os.path.relpath(f) for f in workflow.configfiles)
        raise WorkflowError(f"{e} (config file: {files})") from None


def _alternatives(values):
    return "|".join(re.escape(v) for v in sorted(set(values), key=str))


JOBS = {job.run.run_id: job for job in _expand()}
OPTION_SETS = grid.method_option_sets(config, list(JOBS.values()))

wildcard_constraints:
    run=_alternatives(JOBS),
    method_folder=_alternatives(OPTION_SETS),
    dataset=_alternatives(job.run.dataset for job in JOBS.values()),


# ---- input functions and params ----------------------------------------------------------


def run_markers():
    """The done-markers of every run in the grid (aggregate_runs waits for all of them)."""
    return [RUN_DONE.format(run=run_id) for run_id in JOBS]


def run_dataset(wildcards):
    """The prepared dataset a run reads."""
    return f"{DATA_DIR}/{JOBS[wildcards.run].run.dataset}.pt"


def run_options_checked(wildcards):
    """The check of the run's method options (one per method folder, e.g. `gumbel@sc-aug`).
    Not `ancient`: Snakemake skips the params check of a job whose ancient input is rebuilt."""
    run = JOBS[wildcards.run].run
    return OPTIONS_CHECKED.format(method_folder=paths.method_folder(run.method, run.variant))


def run_after(wildcards):
    """The done-marker of the run whose network this run starts from (a shared dense phase)."""
    after = JOBS[wildcards.run].after
    return [RUN_DONE.format(run=after)] if after else []


def run_args(wildcards):
    """Every argument of the run's `python -m prunebench run` (grid.Job.args: folder, axes and
    the config's settings as key=value), so the job's command alone reproduces it and
    Snakemake's params trigger sees exactly this run's settings."""
    return shlex.join(JOBS[wildcards.run].args())


def option_set_arg(wildcards):
    """One method folder's method, options and budget, for check_options."""
    entry = {wildcards.method_folder: OPTION_SETS[wildcards.method_folder]}
    return shlex.quote(json.dumps(entry, sort_keys=True))


def dataset_source(wildcards):
    """What prepare_dataset reads, as its input so that a changed copy re-prepares the dataset:
    the tree or archive of imagefolder, and a local archive given for any other dataset (not a
    folder, which for downloaded datasets is where prepare itself writes the archive)."""
    root = config["data_roots"].get(wildcards.dataset)
    if wildcards.dataset == "imagefolder":
        return [root]
    return [root] if root and os.path.isfile(root) else []


def prepare_root_flag(wildcards):
    root = config["data_roots"].get(wildcards.dataset)
    return f"--root {shlex.quote(root)}" if root else ""


def train_resources(wildcards):
    """resources.train, updated by every matching resources.train_overrides entry in order."""
    run = JOBS[wildcards.run].run
    res = dict(config["resources"]["train"])
    for entry in config["resources"]["train_overrides"]:
        axes = [axis for axis in ("dataset", "arch", "method") if f"{axis}s" in entry]
        if all(getattr(run, axis) in entry[f"{axis}s"] for axis in axes):
            res.update({k: v for k, v in entry.items() if k in TRAIN_RESOURCE_KEYS})
    return res


def report_templates():
    """The report's LaTeX templates (report/templates/), so that editing one rebuilds it."""
    found = []
    for folder, _, names in os.walk(os.path.join(workflow.basedir, "report")):
        rel = os.path.relpath(folder, workflow.basedir)
        found += [f"{rel}/{n}" for n in names if re.search(r"\.(tex|sty|bib|cls|j2)$", n)]
    return sorted(found)
