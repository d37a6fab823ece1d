"""The Snakemake workflow: config validation names the bad key, the papers' grid builds the
expected DAG in seconds, the lint is clean, and the quick config runs from start to report."""
from __future__ import annotations

import csv
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import pytest
import yaml

from prunebench.config import TrainConfig
from prunebench.registry import get_method, list_methods

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
# What a copy of the workflow needs to run (everything else in the repository is not read).
WORKFLOW_FILES = ("Snakefile", "rules", "config", "profiles", "prunebench", "methods",
                  "baselines", "report", "environment.yml")


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
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        with SnakemakeApi(OutputSettings()) as api:
            workflow_api = api.workflow(ResourceSettings(cores=1),
                                        ConfigSettings(configfiles=[path]),
                                        snakefile=REPO / "Snakefile", workdir=REPO)
            workflow_api.list_rules()
    except Exception as e:  # noqa: BLE001 - the message is what is tested
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
        lambda c: c["methods"]["gumbel"]["options"].update(temperature=2.0),
        ["methods.gumbel.options", "temperature", "allowed:", "tau"]),
    "bad method option value": (
        lambda c: c["methods"]["gumbel"]["options"].update(tau="hot"),
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
        ["grids[0] (quick).sparsities", "sparsity nan is outside [0, 1)"]),
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
        ["variant 'v' of method", "grids[2] gives other train/options than grids[1]"]),
    "bad variant train value": (
        lambda c: c["grids"][0].update(variant="v", train={"patience": 5}),
        ["grids[0] (quick)", "patience > 0 needs selection=val"]),
}


def test_shipped_configs_parse(tmp_path: Path) -> None:
    for name in ("config.yaml", "paper.yaml", "cifar10-local.yaml"):
        assert _parse_workflow(_load(name), tmp_path) is None, name


def test_minimal_config_takes_schema_defaults(tmp_path: Path) -> None:
    grid = {"datasets": ["digits"], "archs": ["conv2"], "methods": ["dense"], "seeds": [0]}
    assert _parse_workflow({"grids": [grid]}, tmp_path) is None


def test_budget_option_makes_gumbel_run_per_sparsity(tmp_path: Path) -> None:
    """gumbel has no budget (one `snone` run per seed) unless options.budget is on."""
    workdir = _copy_workflow(tmp_path)
    config = _tiny_config(["gumbel"])
    config["grids"][0]["sparsities"] = [0.5, 0.9]
    outputs = {}
    for budget in (False, True):
        config["methods"]["gumbel"]["options"]["budget"] = budget
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


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "cifar10-local.yaml"])
def test_configs_list_every_method_option(name: str) -> None:
    """Per-method hyper-parameters live in the config: every option of every method used is
    listed (a new option shows up here), and the papers' grid uses the papers' defaults."""
    config = _load(name)
    used = {m for block in config["grids"] for m in block["methods"]}
    for method in sorted(used):
        fields = {f.name: f.default for f in dataclasses.fields(get_method(method).hparams_cls)}
        options = config["methods"][method]["options"]
        assert set(options) == set(fields), (
            f"{name}: methods.{method}.options lists {sorted(options)}, the method has "
            f"{sorted(fields)}")
        if name != "config.yaml":
            differ = {k: (options[k], fields[k]) for k in fields if options[k] != fields[k]}
            assert not differ, f"{name}: methods.{method} differs from the defaults: {differ}"


def _expected_paper_jobs() -> int:
    """The papers' grid counted from config/paper.yaml alone: the union over blocks of
    datasets x archs x methods x (sparsities if the method has a budget, else one) x seeds,
    plus one prepare_dataset per dataset and aggregate_runs, plot_figures, build_report, all.
    (783 runs: CIFAR-10 5 x (7 x 5 + 3) x 3, TinyImageNet 2 x (6 x 5 + 1) x 3, CIFAR-100 3 x 3
    x 3.)"""
    config = _load("paper.yaml")
    runs = set()
    for block in config["grids"]:
        for dataset, arch, method in product(block["datasets"], block["archs"],
                                             block["methods"]):
            cls = get_method(method)
            options = config["methods"].get(method, {}).get("options", {})
            budgeted = cls(cls.hparams_cls.from_dict(options, method), None).is_budgeted()
            for sparsity in (block["sparsities"] if budgeted else [None]):
                for seed in block["seeds"]:
                    runs.add((dataset, arch, method, sparsity, seed))
    datasets = {run[0] for run in runs}
    return len(runs) + len(datasets) + 4


def _job_count(stdout: str) -> int:
    totals = re.findall(r"^total\s+(\d+)\s*$", stdout, flags=re.M)
    assert totals, stdout[-3000:]
    return int(totals[-1])


def test_paper_dry_run_builds_the_grid_in_seconds(tmp_path: Path) -> None:
    expected = _expected_paper_jobs()
    assert expected == 790, expected
    # A fresh working copy, so that no earlier results change what needs to run.
    workdir = _copy_workflow(tmp_path)
    start = time.perf_counter()
    out = _snakemake("--dry-run", "--quiet", "rules", "--configfile", "config/paper.yaml",
                     cwd=workdir, timeout=300)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    assert _job_count(out.stdout + out.stderr) == expected
    assert seconds < 120, f"dry run of config/paper.yaml took {seconds:.0f} s"


def test_paper_resources_follow_the_overrides(tmp_path: Path) -> None:
    """resources.train, then every matching train_overrides entry in order (later wins)."""
    workdir = _copy_workflow(tmp_path)
    targets = {
        "cifar10/conv4/dense/snone": "gpu=1, cpus_per_task=4, runtime=240, mem_mb=16000",
        "cifar10/vgg19/snip/s0.97": "gpu=1, cpus_per_task=4, runtime=720, mem_mb=16000",
        "cifar10/resnet18/gumbel/snone": "gpu=1, cpus_per_task=4, runtime=1440, mem_mb=16000",
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
        assert f"--method {target.split('/')[2]}" in job, job


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
            shutil.copytree(src, workdir / name, ignore=ignore)
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
    config["methods"] = {m: config["methods"][m] for m in methods}
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
def test_quick_config_runs_to_the_report(tmp_path: Path) -> None:
    """The default benchmark (config/config.yaml) from nothing to results/report/report.pdf, in
    a copy of the workflow: what `make run` does and CI checks."""
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk is not installed (make test installs it as root on Debian)")
    workdir = _copy_workflow(tmp_path)
    start = time.perf_counter()
    out = _snakemake(cwd=workdir, timeout=1700)
    minutes = (time.perf_counter() - start) / 60
    assert out.returncode == 0, out.stderr[-6000:]
    pdf = workdir / "results/report/report.pdf"
    assert pdf.read_bytes().startswith(b"%PDF"), "report.pdf is not a PDF"
    config = _load("config.yaml")
    block = config["grids"][0]
    runs = sorted((workdir / "results/runs").glob("*/*/*/*/*/workflow.done"))
    budgeted = [m for m in block["methods"] if get_method(m).budgeted]
    expected = len(block["seeds"]) * (len(budgeted) * len(block["sparsities"])
                                      + len(block["methods"]) - len(budgeted))
    assert len(runs) == expected
    for marker in runs:
        assert {"metrics.json", "failed.json"} & {p.name for p in marker.parent.iterdir()}
    with open(workdir / "results/summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == expected
    assert {r["status"] for r in rows} <= {"ok", "failed"}, {r["status"] for r in rows}
    assert (workdir / "results/figures/manifest.json").exists()
    print(f"quick workflow: {minutes:.1f} min for {expected} runs")


def test_rules_are_thin_cli_calls() -> None:
    """Every rule with a command runs `python -m prunebench <subcommand>` (pasteable)."""
    text = "\n".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    commands = re.findall(r"shell:\n\s+((?:\"[^\n]*\"\n\s*)+)", text)
    assert len(commands) == 5, commands
    for command in commands:
        assert "python -m prunebench " in command, command
    names = re.findall(r"^rule (\w+):", text, flags=re.M)
    assert set(names) == {"prepare_dataset", "train_run", "aggregate_runs", "plot_figures",
                          "build_report"}
    for block in re.split(r"^rule ", text, flags=re.M)[1:]:
        for directive in ("log:", "conda:", "resources:"):
            assert f"    {directive}" in block, f"rule {block.split(':')[0]} lacks {directive}"


def test_quick_config_runs_every_method() -> None:
    """A newly registered method joins the default benchmark (and so the CI workflow test)."""
    config = _load("config.yaml")
    assert sorted(config["grids"][0]["methods"]) == list_methods()
