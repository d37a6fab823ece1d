"""All of the workflow's Python: the engine it runs, the results layout, the run grid, wildcard
constraints, and the policy of each rule (inputs, params, resources) in named functions, so that
the rule files stay declarative.

The engine: when the workflow's own folder holds prunebench/ (a checkout), this process plans
with that copy and every job runs it (PYTHONPATH); otherwise (a deployed workflow, see
docs/cluster.md) both use the installed prunebench. Every path of the results tree and
every exit code comes from the layout module, prunebench/paths.py.

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


def local_workflow_dir():
    """The folder holding the Snakefile (this file's parent folder), or None when the workflow
    is read from a remote copy (a snakedeploy module from GitHub)."""
    rules_dir = workflow.current_basedir.get_path_or_uri(secret_free=True)
    return os.path.dirname(os.path.abspath(rules_dir)) if os.path.isdir(rules_dir) else None


WORKFLOW_DIR = local_workflow_dir()


def engine_checkout():
    """The workflow's folder when it also holds the engine (a checkout), else None (the
    workflow's files came without it: the installed engine runs)."""
    found = WORKFLOW_DIR and os.path.isfile(f"{WORKFLOW_DIR}/prunebench/__init__.py")
    return WORKFLOW_DIR if found else None


ENGINE_CHECKOUT = engine_checkout()
if ENGINE_CHECKOUT:
    sys.path.insert(0, ENGINE_CHECKOUT)  # this process plans with the checkout's engine
elif "CONDA" in {m.name for m in workflow.deployment_settings.deployment_method}:
    raise WorkflowError(
        "this workflow's folder holds no prunebench/ (a deployed copy), so its jobs run the "
        "installed prunebench, which the rules' conda environment (envs/workflow.yaml) lacks: "
        "run it without --use-conda / --sdm conda, in the environment prunebench is installed "
        "in, or from a checkout of prunebench (docs/cluster.md)"
    )
try:
    from prunebench import paths
    from prunebench.errors import PrunebenchError
    from prunebench.plan import grid
except ImportError as e:
    raise WorkflowError(
        f"cannot import prunebench/plan/grid.py ({e}): it needs only Python and PyYAML. Run "
        "snakemake from the prunebench environment (`make run`, or `conda env create -f "
        "environment.yml` and activate it)."
    ) from None


def engine_command():
    """The command that runs the engine in every job: `python -m prunebench`, from a checkout
    with PYTHONPATH naming it, so that each job runs the engine that planned it (not another
    installed copy) and its printed command says so. Braces doubled for Snakemake's format."""
    if ENGINE_CHECKOUT is None:
        return "python -m prunebench"
    checkout = shlex.quote(ENGINE_CHECKOUT).replace("{", "{{").replace("}", "}}")
    return f"PYTHONPATH={checkout}${{{{PYTHONPATH:+:$PYTHONPATH}}}} python -m prunebench"


ENGINE = engine_command()


def prunebench(arguments, before=""):
    """A rule's shell command: `python -m prunebench ARGUMENTS` (ENGINE), after `before`."""
    return f"{before}{ENGINE} {arguments}"


# ---- the results layout (prunebench/paths.py) ---------------------------------------------

RUN_DONE = f"{paths.RUNS_ROOT}/{{run}}/{paths.WORKFLOW_DONE}"
RUN_BENCHMARK = f"{paths.RUNS_ROOT}/{{run}}/{paths.BENCHMARK}"
OPTIONS_CHECKED = f"{paths.CHECKS_DIR}/{{method_folder}}.ok"
DATASET_TENSORS = paths.dataset_tensors(paths.DATA_DIR, "{dataset}").as_posix()
DATASET_MANIFEST = paths.dataset_manifest(paths.DATA_DIR, "{dataset}").as_posix()
SUMMARY = f"{paths.RESULTS}/{paths.SUMMARY}"
SUMMARY_BY_SETTING = f"{paths.RESULTS}/{paths.SUMMARY_BY_SETTING}"
REPORT_TEX = f"{paths.REPORT_DIR}/{paths.REPORT_TEX}"
REPORT_PDF = f"{paths.REPORT_DIR}/{paths.REPORT_PDF}"
# What a train_run job's command may exit with and still have produced a result: a diverged
# run writes failed.json, which aggregation reports.
DIVERGED = paths.EXIT_DIVERGED


def log_file(name):
    """The log of a job (`name` may hold wildcards), under the results' logs folder."""
    return f"{paths.LOGS_DIR}/{name}.log"


def output_folder(wildcards, output):
    """The folder of the job's first output (where the command writes it)."""
    return os.path.dirname(output[0])


def input_folder(wildcards, input):
    """The folder of the job's first input (the results folder, for the summaries)."""
    return os.path.dirname(input[0])


def runs_root(wildcards):
    """The root of the run folders (paths.RUNS_ROOT), which aggregate_runs walks."""
    return paths.RUNS_ROOT


def workflow_file(path):
    """A file of the workflow itself (config/, report/), found beside the Snakefile wherever
    snakemake runs (`--directory`), not in the working folder. A workflow read from a remote
    copy (a snakedeploy module) takes the deployment's copy (`config/` beside the deployment's
    workflow/ folder), else the one in Snakemake's source cache."""
    if WORKFLOW_DIR:
        return os.path.join(WORKFLOW_DIR, path)
    deployed = os.path.normpath(os.path.join(workflow.basedir, "..", path))
    return deployed if os.path.isfile(deployed) else workflow.source_path(f"../{path}")


# The config file the report describes: config/config.yaml, or the (last) --configfile,
# which replaces it (see Snakefile).
WORKFLOW_CONFIG_FILE = workflow.configfiles[-1]
PUBLISHED = workflow_file("config/published_results.csv")


# ---- the grid ------------------------------------------------------------------------------


def expand_grid():
    """Every run of the config, or the config's error naming its key and file."""
    try:
        return grid.expand(config)
    except PrunebenchError as e:
        files = ", ".join(str(f) for f in workflow.configfiles)
        raise WorkflowError(f"{e} (config file: {files})") from None


def _alternatives(values):
    return "|".join(re.escape(v) for v in sorted(set(values), key=str))


JOBS = {job.run.run_id: job for job in expand_grid()}
OPTION_SETS = grid.method_option_sets(config, list(JOBS.values()))


wildcard_constraints:
    run=_alternatives(JOBS),
    method_folder=_alternatives(OPTION_SETS),
    dataset=_alternatives(job.run.dataset for job in JOBS.values()),


# ---- prepare_dataset -----------------------------------------------------------------------


def dataset_source(wildcards):
    """What prepare_dataset reads, as its input so that a changed copy re-prepares the dataset:
    the tree or archive of imagefolder, and a local archive given for any other dataset (not a
    folder, which for downloaded datasets is where prepare itself writes the archive)."""
    root = config["data_roots"].get(wildcards.dataset)
    if wildcards.dataset == "imagefolder":
        return [root]
    return [root] if root and os.path.isfile(root) else []


def prepare_root_args(wildcards):
    """`--root PATH` when the config names the dataset's root, else nothing."""
    root = config["data_roots"].get(wildcards.dataset)
    return ["--root", root] if root else []


def prepare_option_args(wildcards):
    """data_options.<dataset> as `prepare` flags (`--image-size N --resize MODE`)."""
    options = config.get("data_options", {}).get(wildcards.dataset, {})
    return [
        arg
        for key, value in sorted(options.items())
        for arg in (f"--{key.replace('_', '-')}", str(value))
    ]


# ---- check_options and train_run ----------------------------------------------------------


def option_set_arg(wildcards):
    """One method folder's method, options and budget, for check_options (one JSON argument)."""
    entry = {wildcards.method_folder: OPTION_SETS[wildcards.method_folder]}
    return json.dumps(entry, sort_keys=True)


def run_dataset(wildcards):
    """The prepared dataset a run reads."""
    return expand(rules.prepare_dataset.output.tensors, dataset=JOBS[wildcards.run].run.dataset)


def run_options_checked(wildcards):
    """The check of the run's method options (one per method folder, e.g. `gumbel@sc-aug`).
    Not `ancient`: Snakemake skips the params check of a job whose ancient input is rebuilt."""
    run = JOBS[wildcards.run].run
    folder = paths.method_folder(run.method, run.variant)
    return expand(rules.check_options.output.checked, method_folder=folder)


def run_after(wildcards):
    """The done-marker of the run whose network this run starts from (a shared dense phase)."""
    after = JOBS[wildcards.run].after
    return expand(RUN_DONE, run=after) if after else []


def run_init_from(wildcards):
    """The file the run starts from (train setting init_from), so that the run waits for it: the
    done-marker of the grid's run whose saved network it is, else the file itself."""
    job = JOBS[wildcards.run]
    path = dict(job.overrides).get("init_from")
    if not path:
        return []
    source = grid.init_from_run(job, list(JOBS.values()))
    return expand(RUN_DONE, run=source) if source else [path]


def run_args(wildcards):
    """Every argument of the run's `python -m prunebench run` (grid.Job.args: folder, axes and
    the config's settings as key=value), so the job's command alone reproduces it and
    Snakemake's params trigger sees exactly this run's settings."""
    return JOBS[wildcards.run].args()


def run_device_arg(wildcards, resources):
    """`device=cuda` for a job that holds a GPU and whose config leaves the device at `auto`:
    the run claims a free device slot and fails, saying why, when CUDA is unusable (an explicit
    device in the config is kept; `cpu` with a GPU is refused by the grid)."""
    device = dict(JOBS[wildcards.run].overrides).get("device", "auto")
    holds_gpu = grid.requests_gpu({"gpu": resources.gpu, "gres": getattr(resources, "gres", "")})
    return ["device=cuda"] if holds_gpu and device == "auto" else []


def run_doctor(wildcards, resources):
    """`cuda` for a job that holds a GPU: `prunebench doctor --device cuda` runs first, into the
    run's log, so a node whose GPU, driver or torch build cannot run it fails in seconds, saying
    why (docs/gpus.md). Not for a `device: cpu` run (allowed with a GPU only under the test-only
    switch paths.GPU_PATHS_ON_CPU_ENV, whose fake GPU the doctor would refuse)."""
    device = dict(JOBS[wildcards.run].overrides).get("device", "auto")
    holds_gpu = grid.requests_gpu({"gpu": resources.gpu, "gres": getattr(resources, "gres", "")})
    return "cuda" if holds_gpu and device != "cpu" else ""


def run_resources(wildcards):
    """The run's job resources (grid.run_resources: resources.train, then every matching
    resources.train_overrides entry in order)."""
    return grid.run_resources(config, JOBS[wildcards.run].run)


def run_threads(wildcards):
    """Snakemake threads = the run's cpus_per_task (sets OMP_NUM_THREADS)."""
    return run_resources(wildcards)["cpus_per_task"]


def run_resource(name):
    """The function giving one resource of a run's job (None = not requested: the SLURM
    executor plugin's gpu_model, constraint, gres, slurm_partition, slurm_account, qos)."""

    def resource(wildcards):
        return run_resources(wildcards).get(name)

    resource.__name__ = f"run_{name}"
    return resource


# ---- aggregate_runs, plot_figures, build_report -------------------------------------------


def run_markers():
    """The done-markers of every run in the grid (aggregate_runs waits for all of them)."""
    return expand(rules.train_run.output.marker, run=JOBS)


def report_templates():
    """The report's LaTeX templates (report/templates/), so that editing one rebuilds it."""
    if WORKFLOW_DIR is None:  # a workflow read from a remote copy: nothing to watch
        return []
    folder = os.path.join(WORKFLOW_DIR, "report", "templates")
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.join(root, n) for n in names if re.search(r"\.(tex|sty|bib|cls|j2)$", n)]
    return sorted(found)


def figure_labels(wildcards, output):
    """Columns of a figure in the HTML report: its name, dataset/arch and caption (from the
    manifest that plot_figures writes beside the figures)."""
    manifest = os.path.join(output.figures, paths.MANIFEST)
    with open(manifest) as f:
        figures = {entry["name"]: entry for entry in json.load(f)["figures"]}
    entry = figures.get(wildcards.figure, {})
    caption = entry.get("caption", "").replace("{", "(").replace("}", ")")
    return {"figure": wildcards.figure, "caption": caption}
