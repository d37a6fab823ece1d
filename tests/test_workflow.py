"""The Snakemake workflow: config validation names the bad key, the papers' grid builds the
expected DAG, the lint is clean, and the quick config runs from start to report."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from itertools import product
from pathlib import Path
from typing import Any

import pytest
import yaml

from prunebench.plan.config import TrainConfig
from prunebench.training.registry import get_method, list_methods

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
# What a copy of the workflow needs to run (everything else in the repository is not read).
WORKFLOW_FILES = ("Snakefile", "rules", "config", "profiles", "prunebench", "methods",
                  "baselines", "report", "envs", "environment.yml")


def _env() -> dict[str, str]:
    """The rules call `python`: make it this interpreter, as `make run` does."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def _snakemake(*args: str, cwd: Path = REPO, timeout: int = 600
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _parse_workflow(config: dict, tmp_path: Path) -> str | None:
    """Load the Snakefile with `config` as its --configfile, in this process (fast: the engine
    is imported once); None when it parses, else the error text the user would see."""
    from snakemake.api import SnakemakeApi
    from snakemake.exceptions import WorkflowError
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        with SnakemakeApi(OutputSettings()) as api:
            workflow_api = api.workflow(ResourceSettings(cores=1),
                                        ConfigSettings(configfiles=[path]),
                                        snakefile=REPO / "Snakefile", workdir=REPO)
            workflow_api.list_rules()
    except WorkflowError as e:  # a refusal; any other exception is a crash and fails the test
        return f"{type(e).__name__}: {e}"
    return None


def _bad(change) -> dict:
    config = _load("config.yaml")
    change(config)
    return config


BAD_CONFIGS = {
    "unknown method": (
        lambda c: c["grids"][0]["methods"].append("lottery"),
        ["grids[0] (quick).methods[10]", "'lottery'", "gumbel", "reparam"]),
    "unknown arch": (
        lambda c: c["grids"][0]["archs"].append("conv5"),
        ["grids[0] (quick).archs[1]", "'conv5'", "conv4", "resnet18"]),
    "unknown dataset": (
        lambda c: c["grids"][0]["datasets"].append("mnist"),
        ["grids[0] (quick).datasets[1]", "'mnist'", "digits", "cifar10"]),
    "sparsity 1": (
        lambda c: c["grids"][0]["sparsities"].append(1.0),
        ["['sparsities'][3]", "1.0 is greater than or equal to the maximum of 1"]),
    "negative sparsity": (
        lambda c: c["grids"][0]["sparsities"].append(-0.1),
        ["['sparsities'][3]", "-0.1 is less than the minimum of 0"]),
    "sparsity with 7 digits": (
        lambda c: c["grids"][0]["sparsities"].append(0.1234567),
        ["grids[0] (quick).sparsities", "0.1234567", "6 significant digits"]),
    "empty seed list": (
        lambda c: c["grids"][0].update(seeds=[]),
        ["['seeds']", "[] should be non-empty"]),
    "no sparsity for a budgeted method": (
        lambda c: c["grids"][0].update(sparsities=[]),
        ["grids[0] (quick).sparsities", "method random prunes to a budget"]),
    "unknown method option": (
        lambda c: c["methods"]["gumbel"].setdefault("options", {}).update(temperature=2.0),
        ["methods.gumbel.options", "temperature", "allowed:", "tau"]),
    "bad method option value": (
        lambda c: c["methods"]["gumbel"].setdefault("options", {}).update(tau="hot"),
        ["methods.gumbel.options.tau", "'hot'"]),
    "options of an unknown method": (
        lambda c: c["methods"].update(lottery={"options": {}}),
        ["methods.lottery", "unknown method 'lottery'", "registered methods"]),
    "unknown train key": (
        lambda c: c["train"].update(epoch=3),
        ["'epoch' was unexpected", "['train']"]),
    "bad train value": (
        lambda c: c["methods"]["reparam"]["train"].update(optimizer="lion"),
        ["'lion' is not one of ['sgd', 'adam']", "['methods']['reparam']['train']"]),
    "unknown top-level key": (
        lambda c: c.update(seeds=[0]),
        ["'seeds' was unexpected"]),
    "imagefolder without data root": (
        lambda c: c["grids"][0].update(datasets=["imagefolder"]),
        ["data_roots.imagefolder", "needs the folder or archive"]),
    "no grids": (
        lambda c: c.pop("grids"),
        ["'grids' is a required property"]),
    "NaN sparsity": (
        lambda c: c["grids"][0]["sparsities"].append(float("nan")),
        ["grids[0] (quick).sparsities: nan is not a valid float (a finite number)"]),
    "unknown method in a resource override": (
        lambda c: c["resources"]["train_overrides"].append({"methods": ["lottery"],
                                                            "runtime": 3}),
        ["resources.train_overrides[0].methods[0]", "unknown method 'lottery'"]),
    "variant options without a variant name": (
        lambda c: c["grids"][0].update(options={"gumbel": {"tau": 2.0}}),
        ["grids[0] (quick)", "must name them with `variant: NAME`"]),
    "variant options of a method not in the block": (
        lambda c: c["grids"][0].update(variant="v", options={"lottery": {}}),
        ["grids[0] (quick).options.lottery", "not among the block's methods"]),
    "unknown variant option": (
        lambda c: c["grids"][0].update(variant="v", options={"gumbel": {"temp": 2.0}}),
        ["grids[0] (quick).options.gumbel", "temp", "allowed:", "tau"]),
    "one variant, two settings": (
        lambda c: c["grids"].extend([
            {**c["grids"][0], "variant": "v", "train": {"epochs": 2}},
            {**c["grids"][0], "variant": "v", "train": {"epochs": 3}}]),
        ["variant 'v' of method", "grids[3] gives other train/options than grids[2]"]),
    "a GPU with device cpu": (
        lambda c: c["resources"]["train"].update(gpu=1),
        ["config resources.train.gpu:", "train.device is cpu", "digits/conv4/dense"]),
    "a GPU gres for a method trained on the cpu": (
        lambda c: (c["train"].pop("device"),
                   c["methods"]["gumbel"]["train"].update(device="cpu"),
                   c["resources"]["train_overrides"].append(
                       {"methods": ["gumbel"], "gres": "gpu:a100:1"})),
        ["config resources.train_overrides[0].gres:", "methods.gumbel.train.device is cpu"]),
    "a CPU-only run in the GPU runs' partition": (
        lambda c: (c["train"].pop("device"),
                   c["resources"]["train"].update(gpu=1, slurm_partition="gpu"),
                   c["resources"]["train_overrides"].append({"methods": ["dense"], "gpu": 0})),
        ["config resources.train.slurm_partition:", "'gpu' is named beside a GPU request",
         "digits/conv4/dense runs request no GPU"]),
    "bad slurm partition": (
        lambda c: c["resources"]["train"].update(slurm_partition="gpu; touch x"),
        ["'gpu; touch x' does not match", "slurm_partition"]),
    "bad variant train value": (
        lambda c: c["grids"][0].update(variant="v", train={"patience": 5}),
        ["grids[0] (quick)", "patience > 0 needs selection=val"]),
}


def test_shipped_configs_parse(tmp_path: Path) -> None:
    for name in ("config.yaml", "paper.yaml"):
        assert _parse_workflow(_load(name), tmp_path) is None, name
    local = _load("cifar10-local.yaml")  # the copy's path is the user's: a placeholder, refused
    assert "your CIFAR-10 copy" in (_parse_workflow(local, tmp_path) or "")
    local["data_roots"] = {"cifar10": "data/cifar10-jpeg.tar.gz"}  # as --config gives it
    assert _parse_workflow(local, tmp_path) is None


def test_minimal_config_takes_schema_defaults(tmp_path: Path) -> None:
    grid = {"datasets": ["digits"], "archs": ["conv2"], "methods": ["dense"], "seeds": [0]}
    assert _parse_workflow({"grids": [grid]}, tmp_path) is None


@pytest.mark.slow
def test_budget_option_makes_gumbel_run_per_sparsity(tmp_path: Path) -> None:
    """gumbel has no budget (one `snone` run per seed) unless options.budget is on."""
    workdir = _copy_workflow(tmp_path)
    config = _tiny_config(["gumbel"])
    config["grids"][0]["sparsities"] = [0.5, 0.9]
    outputs = {}
    for budget in (False, True):
        config["methods"]["gumbel"]["options"] = {"budget": budget}
        out = _snakemake("aggregate_runs", "--dry-run", "--configfile",
                         _write_config(workdir, config), cwd=workdir, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs[budget] = sorted(set(re.findall(r"results/runs/digits/conv2/gumbel/(s[^/]+)/",
                                                out.stdout)))
    assert outputs == {False: ["snone"], True: ["s0.5", "s0.9"]}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_stops_naming_the_key(case: str, tmp_path: Path) -> None:
    change, expected = BAD_CONFIGS[case]
    error = _parse_workflow(_bad(change), tmp_path)
    assert error is not None, f"{case}: the workflow accepted the config"
    assert "WorkflowError" in error, error
    for fragment in expected:
        assert fragment in error, f"{case}: {fragment!r} not in:\n{error}"


def _schema_objects(node, path="schema"):
    """Every (path, property schema) in the schema, recursively."""
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{path}.{name}", sub
        for key, sub in node.items():
            yield from _schema_objects(sub, f"{path}.{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _schema_objects(sub, f"{path}[{i}]")


def test_schema_documents_every_key() -> None:
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    for path, prop in _schema_objects(schema):
        assert prop.get("description"), f"{path} has no description"
        assert {"type", "enum", "$ref"} & set(prop), f"{path} has no type"
    train = schema["$defs"]["train"]["properties"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(train) == fields, (
        f"schema $defs.train differs from TrainConfig: missing {sorted(fields - set(train))}, "
        f"extra {sorted(set(train) - fields)}")
    assert not any("default" in p for p in train.values()), (
        "train keys must have no schema default: it would override the engine's recipe")
    kinds = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}
    for f in dataclasses.fields(TrainConfig):
        choices = list(f.metadata["choices"])
        assert train[f.name].get("enum", []) == choices, f"schema train.{f.name}: enum {choices}"
        if not choices:
            assert train[f.name]["type"] == kinds[str(f.type)], f"schema train.{f.name}: type"
        assert f.metadata["help"], f"TrainConfig.{f.name} has no help"
        assert _schema_bounds(train[f.name]) == f.metadata["bounds"], (
            f"schema train.{f.name}: its bounds differ from TrainConfig's {f.metadata['bounds']}")


def _schema_bounds(prop: dict[str, Any]) -> str:
    """A JSON-schema property's numeric bounds as the declarations' interval text."""
    if not {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"} & set(prop):
        return ""
    low = ("[", prop["minimum"]) if "minimum" in prop else ("(", prop.get("exclusiveMinimum",
                                                                          "-inf"))
    high = ("]", prop["maximum"]) if "maximum" in prop else (")", prop.get("exclusiveMaximum",
                                                                           "inf"))
    return f"{low[0]}{low[1]}, {high[1]}{high[0]}"


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "cifar10-local.yaml"])
def test_configs_list_only_what_differs_from_the_defaults(name: str) -> None:
    """Defaults live in the hparams dataclasses only: a config's methods.<name>.options lists
    an option only to change it (a variant block may repeat one to say what it compares)."""
    config = _load(name)
    for method, section in config.get("methods", {}).items():
        fields = {f.name: f.default for f in dataclasses.fields(get_method(method).hparams_cls)}
        options = (section or {}).get("options") or {}
        same = sorted(k for k, v in options.items() if v == fields[k])
        assert not same, f"{name}: methods.{method}.options repeats the defaults of {same}"
        assert section, f"{name}: methods.{method} changes nothing: leave it out"


def _expected_paper_jobs() -> int:
    """The papers' grid counted from config/paper.yaml with the live methods: the union over
    blocks of datasets x archs x methods (and variant) x (sparsities if the method has a budget,
    else one) x seeds, plus one prepare_dataset per dataset, one check_options per method folder
    and aggregate_runs, plot_figures, build_report, all. (957 runs: CIFAR-10 5 x (7 x 5 + 3) x 3
    + reparam@paper-sgd-t 3 x 4 x 3 + the 2022 variants 4 x 3 x 2 x 3 + SynFlow's snip, random
    and magnitude_init 3 x 3 x 3; TinyImageNet 2 x (6 x 5 + 1) x 3 + 4 x 3 + 3 x 3 x 3;
    CIFAR-100 3 x 3 x 3.)"""
    config = _load("paper.yaml")
    runs = set()
    for block in config["grids"]:
        variant = block.get("variant", "")
        for dataset, arch, method in product(block["datasets"], block["archs"],
                                             block["methods"]):
            cls = get_method(method)
            options = {**config["methods"].get(method, {}).get("options", {}),
                       **block.get("options", {}).get(method, {})}
            budgeted = cls(cls.hparams_cls.from_dict(options, method), None).is_budgeted()
            for sparsity in (block["sparsities"] if budgeted else [None]):
                for seed in block["seeds"]:
                    runs.add((dataset, arch, method, variant, sparsity, seed))
    assert len(runs) == 957, len(runs)
    datasets = {run[0] for run in runs}
    method_folders = {run[2:4] for run in runs}
    return len(runs) + len(datasets) + len(method_folders) + 4


def _job_count(stdout: str) -> int:
    totals = re.findall(r"^total\s+(\d+)\s*$", stdout, flags=re.M)
    assert totals, stdout[-3000:]
    return int(totals[-1])


@pytest.mark.slow
def test_paper_dry_run_builds_the_grid(tmp_path: Path) -> None:
    """The whole paper grid as a DAG. How long it takes is measured by benchmarks/workflow.py
    (a wall-clock bound here, 120 s for a ~6 s job, said nothing on a loaded machine)."""
    expected = _expected_paper_jobs()
    assert expected == 986, expected
    # A fresh working copy, so that no earlier results change what needs to run.
    workdir = _copy_workflow(tmp_path)
    out = _snakemake("--dry-run", "--quiet", "rules", "--configfile", "config/paper.yaml",
                     cwd=workdir, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _job_count(out.stdout + out.stderr) == expected


@pytest.mark.slow
def test_paper_resources_follow_the_overrides(tmp_path: Path) -> None:
    """resources.train, then every matching train_overrides entry in order (later wins)."""
    workdir = _copy_workflow(tmp_path)
    targets = {
        "cifar10/conv4/dense/snone": "gpu=1, cpus_per_task=4, runtime=240, mem_mb=16000",
        "cifar10/vgg19/snip/s0.97": "gpu=1, cpus_per_task=4, runtime=720, mem_mb=16000",
        "cifar10/resnet18/gumbel/snone": "gpu=1, cpus_per_task=4, runtime=2880, mem_mb=16000",
        "cifar10/conv2/edgepopup@aslp-sc-aug/s0.5": "gpu=1, cpus_per_task=4, runtime=1440, "
                                                     "mem_mb=16000",
        "tinyimagenet/resnet18/reparam/s0.9": "gpu=1, cpus_per_task=4, runtime=1440, "
                                              "mem_mb=32000",
    }
    paths = [f"results/runs/{t}/seed1/workflow.done" for t in targets]
    out = _snakemake(*paths, "--dry-run", "--configfile", "config/paper.yaml", cwd=workdir,
                     timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = out.stdout.split("rule train_run:")[1:]
    assert len(jobs) == len(targets), out.stdout[-3000:]
    for job in jobs:
        target = re.search(r"output: results/runs/(.+)/seed1/workflow.done", job).group(1)
        resources = re.search(r"resources: (.*)", job).group(1)
        assert f", {targets[target]}," in resources, resources
        method, _, variant = target.split("/")[2].partition("@")
        assert f"--method {method}" in job and (f"--variant {variant}" in job) == bool(variant)


@pytest.mark.slow
def test_lint_is_clean() -> None:
    out = _snakemake("--lint")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Lints for" not in out.stdout + out.stderr, out.stdout + out.stderr


def _copy_workflow(tmp_path: Path) -> Path:
    workdir = tmp_path / "prunebench"
    workdir.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(src, workdir / name)
    return workdir


def _write_config(workdir: Path, config: dict) -> str:
    path = workdir / "config" / "test.yaml"
    path.write_text(yaml.safe_dump(config))
    return "config/test.yaml"


def _tiny_config(methods: list[str], **train) -> dict:
    config = _load("config.yaml")
    config["grids"] = [{"name": "tiny", "datasets": ["digits"], "archs": ["conv2"],
                        "methods": methods, "sparsities": [0.9], "seeds": [0]}]
    config["train"] = {"device": "cpu", "epochs": 1, **train}
    config["methods"] = {m: config["methods"].get(m, {}) for m in methods}
    return config


@pytest.mark.slow
def test_diverged_run_is_a_result_not_a_failure(tmp_path: Path) -> None:
    """Exit 3 (NaN loss): the job succeeds, the run folder holds failed.json, and aggregation
    goes ahead and reports the run as failed."""
    workdir = _copy_workflow(tmp_path)
    config = _tiny_config(["dense", "random"])
    config["methods"]["random"]["train"] = {"lr": 1e12, "epochs": 3}
    out = _snakemake("aggregate_runs", "--configfile", _write_config(workdir, config),
                     cwd=workdir)
    assert out.returncode == 0, out.stderr[-4000:]
    diverged = workdir / "results/runs/digits/conv2/random/s0.9/seed0"
    assert (diverged / "failed.json").exists() and not (diverged / "metrics.json").exists()
    assert (diverged / "workflow.done").exists()
    assert (workdir / "results/runs/digits/conv2/dense/snone/seed0/metrics.json").exists()
    summary = (workdir / "results/summary.csv").read_text()
    assert re.search(r"^digits,conv2,random,.*,failed,", summary, flags=re.M), summary


def _process_running(run_dir: Path) -> int | None:
    """The pid of the `prunebench run` process writing into `run_dir`, if any."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in cmdline]
        if "prunebench" in args and "run" in args and str(run_dir) in args:
            return int(proc.name)
    return None


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_terminated_run_is_retried_and_resumes(tmp_path: Path) -> None:
    """SIGTERM to a running job's shell and run, as SLURM signals every process of a job step at
    its time limit or on preemption: the shell ignores it (`trap '' TERM`) and waits, the run
    saves a mid-epoch checkpoint and exits 75, Snakemake's retry reruns it once, it resumes."""
    workdir = _copy_workflow(tmp_path)
    path = _write_config(workdir, _tiny_config(["dense"], epochs=40))
    run_dir = Path("results/runs/digits/conv2/dense/snone/seed0")
    proc = subprocess.Popen([SNAKEMAKE, "aggregate_runs", "--configfile", path], cwd=workdir,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 300
        while not (workdir / run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.5)
        pid = _process_running(run_dir)
        assert pid is not None
        shell = _parent(pid)
        for target in (shell, pid):
            os.kill(target, signal.SIGTERM)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert output.count("Trying to restart job") == 1, output[-4000:]
    log = (workdir / run_dir / "log.txt").read_text()
    assert "preempted: signal 15 received; checkpoint saved" in log, log
    assert "resumed from" in log, log
    assert (workdir / run_dir / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_config_runs_every_method_and_a_variant_to_the_report(tmp_path: Path) -> None:
    """What `make run` does, on a tiny grid: every registered method (conv2, one epoch, two
    seeds) plus a two-variant sweep of gumbel, from nothing to results/report/report.pdf, in a
    copy of the workflow. Variants are aggregated apart and labelled by variant."""
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk is not installed (make test installs it as root on Debian)")
    workdir = _copy_workflow(tmp_path)
    config = _two_variant_config()
    config["grids"][0]["methods"] = list_methods()
    for block in config["grids"]:
        block["seeds"] = [0, 1]
    config["methods"] = {}
    start = time.perf_counter()
    out = _snakemake("--cores", "2", "--configfile", _write_config(workdir, config),
                     cwd=workdir, timeout=850)
    minutes = (time.perf_counter() - start) / 60
    assert out.returncode == 0, out.stderr[-6000:]
    pdf = workdir / "results/report/report.pdf"
    assert pdf.read_bytes().startswith(b"%PDF"), "report.pdf is not a PDF"
    budgeted = [m for m in list_methods() if get_method(m).budgeted]
    expected = 2 * (len(list_methods()) + 2)  # every method once (one budget), two variants
    with open(workdir / "results/summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == expected, [(r["method"], r["variant"]) for r in rows]
    assert {r["status"] for r in rows} <= {"ok", "failed"}, {r["status"] for r in rows}
    assert {r["method"] for r in rows} == set(list_methods())
    assert sorted({(r["method"], r["variant"]) for r in rows if r["method"] == "gumbel"}) == [
        ("gumbel", ""), ("gumbel", "tau2"), ("gumbel", "tau2-sc")]
    for row in rows:
        metrics = json.loads((workdir / row["run_dir"] / "metrics.json").read_text())
        assert metrics["variant"] == row["variant"]
        if row["method"] == "gumbel":
            assert metrics["hp_tau"] == (2.0 if row["variant"] else 1.0)
        assert (metrics["sparsity_target"] == 0.9) == (row["method"] in budgeted)
        assert (workdir / row["run_dir"] / "network.safetensors").is_file()  # the artifact
        if row["method"] in ("magnitude", "magnitude_ft"):  # from the seed's dense run
            assert metrics["hp_dense_from"].endswith(f"dense/snone/seed{metrics['seed']}")
    with open(workdir / "results/summary_by_setting.csv", newline="") as f:
        settings = {(r["method"], r["variant"]) for r in csv.DictReader(f)}
    assert ("gumbel", "tau2-sc") in settings and ("gumbel", "") in settings
    tex = (workdir / "results/report/report.tex").read_text()
    assert "gumbel (tau2)" in tex and "gumbel (tau2-sc)" in tex
    assert (workdir / "results/figures/manifest.json").exists()
    print(f"tiny workflow: {minutes:.1f} min for {expected} runs")


def _rule_text() -> str:
    return "\n".join(p.read_text() for p in [REPO / "Snakefile",
                                             *sorted((REPO / "rules").glob("*.smk"))])


def test_rules_are_thin_cli_calls() -> None:
    """Every rule with a command runs the engine's CLI, `python -m prunebench <subcommand>`
    (`prunebench(...)`, rules/common.smk), with every value it puts on the line quoted (`:q`), so no
    file name or config value is ever read by the shell; the commands are pasteable."""
    text = _rule_text()
    commands = re.findall(r"^    shell:\n((?:        .*\n)+)", text, flags=re.M)
    assert len(commands) == 6, commands
    subcommands = set()
    for command in commands:
        subcommands |= set(re.findall(r'prunebench\(\s*"([a-z-]+) ', command))
        fields = re.findall(r"(?<!\{)\{([^{}]*)\}(?!\})", command)
        assert fields and all(f.endswith(":q") for f in fields), command
    assert subcommands == {"prepare", "check-options", "doctor", "run", "aggregate", "figures",
                           "report"}
    common = (REPO / "rules" / "common.smk").read_text()
    assert re.search(r'return "python -m prunebench"\n', common)
    names = re.findall(r"^rule (\w+):", text, flags=re.M)
    assert set(names) == {"prepare_dataset", "check_options", "train_run", "aggregate_runs",
                          "plot_figures", "build_report", "all"}
    for block in re.split(r"^rule ", text, flags=re.M)[1:]:
        for directive in ("log:", "conda:", "resources:"):
            assert block.startswith("all:") or f"    {directive}" in block, (
                f"rule {block.split(':')[0]} lacks {directive}")


def test_rules_take_the_layout_from_the_layout_module() -> None:
    """No results root, file name of the results tree or exit code is spelled in the rules:
    rules/common.smk reads them from prunebench/paths.py and the rules chain each other's
    outputs (`rules.X.output`); train_run's policy lives in named functions, not lambdas."""
    from prunebench import paths

    text = _rule_text()
    for literal in (paths.RESULTS + "/", paths.SUMMARY, paths.MANIFEST,
                    paths.REPORT_PDF, paths.WORKFLOW_DONE, "runs/", "logs/"):
        assert literal not in text, f"{literal!r} spelled in the rules"
    for code in (paths.EXIT_DIVERGED, paths.EXIT_PREEMPTED):
        assert not re.search(rf"(?<![\w.]){code}(?![\w.])", text), f"exit code {code} spelled"
    assert "lambda" not in text
    for chained in ("rules.aggregate_runs.output.summary", "rules.plot_figures.output.figures",
                    "rules.build_report.output.pdf", "rules.train_run.output.marker",
                    "rules.prepare_dataset.output.tensors", "rules.check_options.output.checked"):
        assert chained in text, chained


def test_snakefmt_is_clean() -> None:
    """`snakefmt --check` (line length 100 from pyproject.toml), as `make lint` runs it."""
    snakefmt = BIN / "snakefmt"
    assert snakefmt.exists(), "snakefmt is not installed (requirements-dev.txt pins it)"
    out = subprocess.run([str(snakefmt), "--check", "Snakefile", "rules/"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_quick_config_runs_every_method() -> None:
    """A newly registered method joins the default benchmark (and so the CI workflow test)."""
    config = _load("config.yaml")
    assert sorted(config["grids"][0]["methods"]) == list_methods()


# ---- the grid: variants, torch-free parsing, coverage ------------------------------------


def _two_variant_config(**train) -> dict:
    """gumbel with its own settings and as two variants (a sweep of tau), dense beside it."""
    config = _tiny_config(["dense", "gumbel"], **train)
    config["methods"]["gumbel"] = {}  # the run-wide epochs apply
    block = config["grids"][0]
    config["grids"] += [
        {**block, "name": "sweep", "variant": "tau2", "methods": ["gumbel"],
         "options": {"gumbel": {"tau": 2.0}}},
        {**block, "name": "sweep", "variant": "tau2-sc", "methods": ["gumbel"],
         "train": {"batch_size": 64},
         "options": {"gumbel": {"tau": 2.0, "init": "signed_constant"}}},
    ]
    return config


def test_two_variant_block_dry_run(tmp_path: Path) -> None:
    """Each variant runs into its own `method@variant` folder with its settings on the command
    line (method options, train settings, --variant), after its own options check."""
    workdir = _copy_workflow(tmp_path)
    out = _snakemake("aggregate_runs", "--dry-run", "--configfile",
                     _write_config(workdir, _two_variant_config()), cwd=workdir, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    commands = {re.search(r"--run-dir results/runs/digits/conv2/([^/]+)/", line).group(1): line
                for line in out.stdout.splitlines() if "prunebench run" in line}
    assert set(commands) == {"dense", "gumbel", "gumbel@tau2", "gumbel@tau2-sc"}, commands
    assert "--variant" not in commands["gumbel"] and "method.tau" not in commands["gumbel"]
    assert "--variant tau2 " in commands["gumbel@tau2"]
    assert "--variant tau2-sc " in commands["gumbel@tau2-sc"]
    checks = set(re.findall(r"results/checks/(\S+)\.ok", out.stdout))
    assert checks == {"dense", "gumbel", "gumbel@tau2", "gumbel@tau2-sc"}, checks
    # Snakemake shortens long commands in its printout: the settings, from the same expansion.
    from prunebench.plan.grid import expand

    args = {j.run.folder.split("/")[4]: j.args() for j in expand(_two_variant_config())}
    assert "method.tau=2.0" in args["gumbel@tau2"] and "batch_size=64" not in args["gumbel@tau2"]
    assert {"method.init=signed_constant", "method.tau=2.0", "batch_size=64",
            "epochs=1"} <= set(args["gumbel@tau2-sc"])
    assert not any(a.startswith("method.") for a in args["gumbel"])


@pytest.mark.slow
def test_snakefile_parses_without_torch(tmp_path: Path) -> None:
    """`snakemake -n` of the papers' grid in a process where torch and timm cannot be imported
    (as with --use-conda, where only the rules' environment has them)."""
    workdir = _copy_workflow(tmp_path)
    shim = tmp_path / "no_torch"
    shim.mkdir()
    for name in ("torch", "timm"):
        (shim / f"{name}.py").write_text(f"raise ImportError('{name} is unimportable here')\n")
    env = {**_env(), "PYTHONPATH": str(shim)}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True,
                           text=True)
    assert "unimportable" in probe.stderr, probe.stderr
    out = subprocess.run([SNAKEMAKE, "--dry-run", "--quiet", "rules", "--configfile",
                          "config/paper.yaml"], cwd=workdir, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _job_count(out.stdout + out.stderr) == _expected_paper_jobs()


def test_static_catalogue_matches_the_registry() -> None:
    """What the Snakemake process reads from the method files without importing them (budget,
    budget option, option names and types) is what the registered classes say."""
    from prunebench.plan.grid import method_catalogue

    catalogue = method_catalogue()
    assert list(catalogue) == list_methods()
    for name, spec in catalogue.items():
        cls = get_method(name)
        fields = tuple((f.name, str(f.type)) for f in dataclasses.fields(cls.hparams_cls))
        assert spec.options == fields, name
        for key in ("choices", "bounds"):  # declared once, read statically the same
            live = {f.name: f.metadata[key] for f in dataclasses.fields(cls.hparams_cls)
                    if f.metadata.get(key)}
            assert dict(getattr(spec, key)) == live, (name, key)
        assert (spec.budgeted, spec.budget_option) == (cls.budgeted, cls.budget_option), name
        switches = [{}] + ([{spec.budget_option: True}] if spec.budget_option else [])
        for options in switches:
            live = cls(cls.hparams_cls.from_dict(options, name), None).is_budgeted()
            assert spec.is_budgeted(options, name) == live, (name, options)


def test_check_options_refuses_a_value_the_method_refuses(capsys) -> None:
    from prunebench.cli import main
    from prunebench.paths import EXIT_ERROR

    bad = {"gumbel@hot": {"method": "gumbel", "options": {"tau": -1.0}, "budgeted": False}}
    assert main(["check-options", json.dumps(bad)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "method options of gumbel@hot" in err and "tau" in err, err
    good = {"gumbel": {"method": "gumbel", "options": {"budget": True}, "budgeted": True}}
    assert main(["check-options", json.dumps(good)]) == 0


def test_cli_runs_a_variant_as_the_workflow_does(capsys) -> None:
    """`run --config config/paper.yaml --variant V` resolves to the config and folder of the
    workflow's job, whose command carries every setting itself."""
    from prunebench.cli import main
    from prunebench.plan.config import load_config_file, parse_overrides, resolve
    from prunebench.plan.grid import expand

    config = load_config_file(REPO / "config/paper.yaml")
    jobs = [j for j in expand(config) if j.run.variant]
    assert {j.run.variant for j in jobs} >= {"aslp-sc-aug", "aslp-kn-noaug-rescale",
                                             "paper-sgd-t", "synflow"}
    for job in jobs:
        r = job.run
        from_file = resolve(r.dataset, r.arch, r.method, r.sparsity, r.seed, config,
                            variant=r.variant)
        args = job.args()
        from_command = resolve(r.dataset, r.arch, r.method, r.sparsity, r.seed,
                               overrides=parse_overrides([a for a in args if "=" in a]),
                               variant=r.variant)
        assert from_file.to_dict() == {**from_command.to_dict(), "data_dir": "results/data"}
    job = next(j for j in jobs if j.run.variant == "aslp-kn-noaug" and j.run.method == "gumbel")
    r = job.run
    assert main(["run", "--config", str(REPO / "config/paper.yaml"), "--variant", r.variant,
                 "--dataset", r.dataset, "--arch", r.arch, "--method", r.method,
                 "--seed", str(r.seed), "--print-run-dir"]) == 0
    assert capsys.readouterr().out.strip() == r.folder
    assert main(["run", "--config", str(REPO / "config/paper.yaml"), "--variant", "nope",
                 "--dataset", "cifar10", "--arch", "conv2", "--method", "gumbel",
                 "--print-run-dir"]) == 1
    assert "variant 'nope' of method gumbel is defined by no grids block" in (
        capsys.readouterr().err)


def test_coverage_of_the_paper_grid(capsys) -> None:
    """Every published row names the grid run that reproduces it."""
    from prunebench.cli import main

    assert main(["coverage", "--configfile", str(REPO / "config/paper.yaml"),
                 "--published", str(REPO / "config/published_results.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    with open(REPO / "config/published_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert out[-1] == f"{len(rows)} of {len(rows)} published rows covered", out[-1]
    targets = [line.split("-> ", 1)[1] for line in out if "-> " in line]
    assert len(targets) == len(rows)
    for row, target in zip(rows, targets, strict=True):
        folder = f"{row['method']}@{row['variant']}" if row["variant"] else row["method"]
        sparsity = f"s{float(row['sparsity']):g}" if row["sparsity"] else "snone"
        assert target.startswith(
            f"results/runs/{row['dataset']}/{row['arch']}/{folder}/{sparsity}/seed"), (row, target)


def test_coverage_names_what_is_missing(tmp_path: Path, capsys) -> None:
    from prunebench.cli import main

    config = _load("config.yaml")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["coverage", "--configfile", str(path),
                 "--published", str(REPO / "config/published_results.csv")]) == 0
    out = capsys.readouterr().out
    assert "not in grid: no grid block runs reparam on cifar10/conv4" in out
    assert out.splitlines()[-1].startswith("0 of ")


NEW_METHOD = '''"""`zzkeep`: a test's method, one file and nothing else."""
from __future__ import annotations

from dataclasses import dataclass

from prunebench.training.method import MethodHparams, PruningMethod
from prunebench.training.registry import register_method


@dataclass
class KeepHparams(MethodHparams):
    strength: float = 1.0  # test option
    budgeted_run: bool = False  # switches a budget on


@register_method("zzkeep")
class Keep(PruningMethod):
    hparams_cls = KeepHparams
    budgeted = False
    budget_option = "budgeted_run"
    paper = "test"
'''


@pytest.mark.slow
def test_a_new_method_file_is_all_it_takes(tmp_path: Path) -> None:
    """One file in baselines/ appears in `prunebench list` and in the workflow's grid, with its
    options checked and its budget option read, and no other edit."""
    workdir = _copy_workflow(tmp_path)
    (workdir / "baselines" / "zzkeep.py").write_text(NEW_METHOD)
    listed = subprocess.run([sys.executable, "-m", "prunebench", "list"], cwd=workdir,
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert re.search(r"^\s+zzkeep\s+no budget\s+test$", listed.stdout, flags=re.M), listed.stdout
    config = _tiny_config(["zzkeep"])
    config["grids"][0]["sparsities"] = [0.5, 0.9]
    for options, folders in (({}, ["snone"]), ({"budgeted_run": True}, ["s0.5", "s0.9"])):
        config["methods"]["zzkeep"] = {"options": {"strength": 2.0, **options}}
        out = _snakemake("aggregate_runs", "--dry-run", "--configfile",
                         _write_config(workdir, config), cwd=workdir, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        found = sorted(set(re.findall(r"results/runs/digits/conv2/zzkeep/(s[^/]+)/", out.stdout)))
        assert found == folders
    config["methods"]["zzkeep"] = {"options": {"strenght": 2.0}}
    out = _snakemake("aggregate_runs", "--dry-run", "--configfile",
                     _write_config(workdir, config), cwd=workdir, timeout=300)
    message = out.stdout + out.stderr
    assert out.returncode != 0 and "methods.zzkeep.options" in message, message[-3000:]
    assert "strenght" in message and "allowed: budgeted_run, strength" in message


def test_published_rows_name_one_setting_each() -> None:
    """Every row of config/published_results.csv is well formed and names its own setting
    (dataset, arch, method, sparsity, variant), so the report compares one number with one."""
    with open(REPO / "config/published_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = set()
    for i, row in enumerate(rows, start=2):
        assert None not in row and None not in row.values(), f"line {i}: wrong field count"
        sparsity = f"{float(row['sparsity']):g}" if row["sparsity"] else "none"
        key = (row["dataset"], row["arch"], row["method"], sparsity, row["variant"])
        assert key not in keys, f"line {i}: setting {key} named twice"
        keys.add(key)


@pytest.mark.slow
def test_a_local_dataset_archive_is_prepare_input(tmp_path: Path) -> None:
    """A local copy given as data_roots.cifar10 is prepare_dataset's input (a changed copy
    re-prepares the dataset) and its --root; a download folder is neither an input nor required."""
    archive = tmp_path / "cifar10-copy.tar.gz"
    archive.write_bytes(b"not read by a dry run")
    config = _load("config.yaml")
    config["grids"][0]["datasets"] = ["cifar10"]
    config["grids"][0]["methods"] = ["dense"]
    for root, is_input in ((str(archive), True), (str(tmp_path / "raw"), False)):
        config["data_roots"] = {"cifar10": root}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        out = _snakemake("results/data/cifar10.pt", "-n", "-p", "--configfile", str(path))
        assert out.returncode == 0, out.stderr
        assert f"--root {root}" in out.stdout
        assert (f"input: {root}" in out.stdout) == is_input, out.stdout


def test_magnitude_runs_share_the_dense_phase_of_their_seed() -> None:
    """magnitude and magnitude_ft start from the grid's dense run of the same seed when its
    recipe is theirs (and wait for it); not when the recipe differs or the config says no."""
    from prunebench.plan.grid import expand

    config = _load("config.yaml")
    jobs = expand(config)
    dense = {j.run.seed: j.run for j in jobs if j.run.method == "dense"}
    shared = [j for j in jobs if j.run.method in ("magnitude", "magnitude_ft")]
    assert len(shared) == 2 * 2 * len(config["grids"][0]["sparsities"])
    for job in shared:
        assert job.after == dense[job.run.seed].run_id
        assert f"method.dense_from={dense[job.run.seed].folder}" in job.args()
    assert all(not j.after and "dense_from" not in " ".join(j.args()) for j in jobs
               if j.run.method not in ("magnitude", "magnitude_ft"))
    config["methods"]["magnitude"] = {"train": {"epochs": 3}}
    changed = {j.run.method: j for j in expand(config)}
    assert not changed["magnitude"].after and changed["magnitude_ft"].after
    config["share_dense_phase"] = False
    assert not any(j.after for j in expand(config))
