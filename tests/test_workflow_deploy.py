"""The workflow run as a deployed workflow is: from its checkout into another folder
(`snakemake -s <checkout>/Snakefile -d <elsewhere>`), its jobs running the checkout's engine even
where another prunebench comes first on PYTHONPATH; the browsable HTML report; the summaries
rebuilt after Snakemake is killed while aggregating; a deterministic failure not retried."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_packaging import _metadata, fresh_venv, wheel  # noqa: F401 - wheel is a fixture
from test_workflow import NEW_METHOD, REPO, SNAKEMAKE, _copy_workflow, _env, _tiny_config

# The workflow's own files, without the engine (prunebench/, methods/, baselines/).
WORKFLOW_ONLY = ("Snakefile", "rules", "config", "profiles", "report", "envs")

# A prunebench that must never run: first on the PYTHONPATH the workflow is started with, as an
# older install or another checkout would be. The jobs must run the checkout's engine instead.
DECOY = "raise SystemExit('a decoy prunebench ran instead of the checkout that planned the job')\n"


def _decoy_env(tmp: Path) -> dict[str, str]:
    decoy = tmp / "decoy"
    (decoy / "prunebench").mkdir(parents=True)
    (decoy / "prunebench" / "__init__.py").write_text("")
    (decoy / "prunebench" / "__main__.py").write_text(DECOY)
    return {**_env(), "PYTHONPATH": str(decoy)}


def _workflow_only(dest: Path) -> Path:
    """A copy of the workflow's files alone, as a deployment has them."""
    dest.mkdir(parents=True)
    for name in WORKFLOW_ONLY:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, dest / name)
    return dest


def _elsewhere(workdir: Path, *args: str, env: dict[str, str], timeout: int = 900
               ) -> subprocess.CompletedProcess[str]:
    """`snakemake -s <checkout>/Snakefile -d <workdir> ...`, started from a third folder."""
    return subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
                          cwd=workdir.parent, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict]]:
    """The tiny grid (dense and random on digits/conv2, one epoch) run from the checkout into a
    folder of its own, to the PDF: (working folder, config file, environment)."""
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk is not installed (make test installs it as root on Debian)")
    tmp = tmp_path_factory.mktemp("deploy")
    workdir = tmp / "my results"
    workdir.mkdir()
    configfile = tmp / "tiny.yaml"
    configfile.write_text(yaml.safe_dump(_tiny_config(["dense", "random"])))
    env = _decoy_env(tmp)
    runs_before = sorted((REPO / "results").rglob("*")) if (REPO / "results").exists() else []
    out = _elsewhere(workdir, "--cores", "2", "--configfile", str(configfile), env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    runs_after = sorted((REPO / "results").rglob("*")) if (REPO / "results").exists() else []
    assert runs_after == runs_before, "the run wrote into the checkout's results/"
    assert f"PYTHONPATH={REPO}" in out.stdout + out.stderr  # the printed commands say so
    yield workdir, str(configfile), env


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_runs_from_another_folder_to_the_pdf(elsewhere: tuple[Path, str, dict]) -> None:
    """Default config, published results and templates found beside the Snakefile; results,
    logs and the job benchmarks in the working folder, aggregated into the summary."""
    workdir, _, _ = elsewhere
    pdf = workdir / "results/report/report.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    with open(workdir / "results/summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["method"] for r in rows) == ["dense", "random"]
    for row in rows:
        assert row["status"] == "ok", row
        assert float(row["job_wall_seconds"]) > 0 and float(row["job_max_rss_mb"]) > 0, row
        assert (workdir / row["run_dir"] / "benchmark.tsv").is_file()
    with open(workdir / "results/summary_by_setting.csv", newline="") as f:
        assert all(float(r["job_wall_seconds_mean"]) > 0 for r in csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_html_report_holds_the_figures_and_tables(elsewhere: tuple[Path, str, dict]) -> None:
    """`snakemake --report report.html`: every figure of the manifest (PNG, with its caption),
    both summary tables and the PDF report, in one self-contained file."""
    workdir, configfile, env = elsewhere
    html = workdir / "report.html"
    out = _elsewhere(workdir, "--configfile", configfile, "--report", str(html), env=env,
                     timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    text = html.read_text()
    manifest = json.loads((workdir / "results/figures/manifest.json").read_text())
    assert manifest["figures"]
    for figure in manifest["figures"]:
        assert f"{figure['name']}.png" in text, figure["name"]
        first_words = " ".join(figure["caption"].split()[:5])  # the caption, in the table
        assert first_words in text, first_words
    for name in ("summary.csv", "summary_by_setting.csv", "report.pdf"):
        assert name in text, name


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (by parent pid in /proc)."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                .split("\0"))
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killed_aggregation_is_rebuilt(elsewhere: tuple[Path, str, dict]) -> None:
    """SIGKILL to Snakemake (and its job) during a forced re-aggregation, then `--unlock`: the
    two CSVs are still there (Snakemake no longer deletes them before the job), marked
    incomplete, and the next plain run rebuilds them instead of finding nothing to do."""
    workdir, configfile, env = elsewhere
    summaries = [workdir / "results" / n for n in ("summary.csv", "summary_by_setting.csv")]
    proc = subprocess.Popen([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                             "--cores", "1", "--configfile", configfile,
                             "--forcerun", "aggregate_runs"], cwd=workdir.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not any("aggregate" in _cmdline(p) for p in _descendants(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "no aggregate job ran"
            time.sleep(0.02)
        jobs = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        for pid in jobs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert all(p.is_file() for p in summaries), "the kill left the summaries deleted"
    unlock = _elsewhere(workdir, "--configfile", configfile, "--unlock", env=env, timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    out = _elsewhere(workdir, "--cores", "1", "--configfile", configfile, env=env, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "Nothing to be done" not in log and "rule aggregate_runs:" in log, log[-4000:]
    with open(summaries[0], newline="") as f:
        assert len(list(csv.DictReader(f))) == 2


REFUSING_METHOD = NEW_METHOD.replace("zzkeep", "zzrefuse").replace(
    "    paper = \"test\"\n", '''    paper = "test"

    def __init__(self, hparams: KeepHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        if hparams.strength > 1:
            raise PrunebenchError(f"strength {hparams.strength} is above 1, this test's limit")
''').replace("from prunebench.training.method import",
             "from prunebench.errors import PrunebenchError\n"
             "from prunebench.training.method import")


@pytest.mark.slow
def test_deterministic_failure_is_not_retried_and_says_why(tmp_path: Path) -> None:
    """An option value only the method's constructor refuses: check_options fails once (the
    profile's retries do not rerun it) and the reason, from its log, is on the console."""
    workdir = _copy_workflow(tmp_path)
    (workdir / "baselines" / "zzrefuse.py").write_text(REFUSING_METHOD)
    config = _tiny_config(["zzrefuse"])
    config["methods"]["zzrefuse"] = {"options": {"strength": 2.0}}
    (workdir / "config" / "refuse.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run([SNAKEMAKE, "--cores", "1", "--configfile", "config/refuse.yaml"],
                         cwd=workdir, env=_env(), capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode != 0, log[-4000:]
    assert log.count("localrule check_options:") == 1, log[-4000:]
    assert "Trying to restart" not in log, log[-4000:]
    assert "strength 2.0 is above 1, this test's limit" in log, log[-4000:]


@pytest.mark.slow
def test_a_deployed_copy_refuses_conda_without_the_engine(tmp_path: Path) -> None:
    """The workflow's files without prunebench/ beside them (a deployed copy) plan and run with
    the installed engine, which the rules' conda environment lacks: `--use-conda` stops before
    any job, saying why; without it the copy's jobs run the installed engine (no PYTHONPATH)."""
    copy = _workflow_only(tmp_path / "deployed")
    args = [SNAKEMAKE, "-n", "-p", "--cores", "1", "aggregate_runs"]
    refused = subprocess.run([*args, "--use-conda"], cwd=copy, env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0
    assert "holds no prunebench/ (a deployed copy)" in refused.stdout + refused.stderr
    plain = subprocess.run(args, cwd=copy, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert " python -m prunebench run " in plain.stdout and "PYTHONPATH=" not in plain.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_runs_with_the_engine_installed_from_the_wheel(wheel: Path, tmp_path: Path) -> None:  # noqa: F811
    """The workflow's files without the engine, run from another folder by a virtualenv holding
    the wheel (its dependencies from this environment): the installed engine plans and runs
    every job (no PYTHONPATH in the commands), to the PDF, and the runs record its version."""
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk is not installed (make test installs it as root on Debian)")
    bin_dir = fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    python = str(bin_dir / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--no-index", "--quiet",
                              str(wheel)], env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    workflow = _workflow_only(tmp_path / "workflow")
    workdir = tmp_path / "work"
    workdir.mkdir()
    configfile = tmp_path / "tiny.yaml"
    configfile.write_text(yaml.safe_dump(_tiny_config(["dense", "random"])))
    out = subprocess.run([python, "-m", "snakemake", "-s", str(workflow / "Snakefile"), "-d",
                          str(workdir), "--cores", "2", "--configfile", str(configfile)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "python -m prunebench run " in log and "PYTHONPATH=" not in log, log[-3000:]
    assert (workdir / "results/report/report.pdf").read_bytes().startswith(b"%PDF")
    version = _metadata(wheel)["Version"]
    for metrics in (workdir / "results/runs").rglob("metrics.json"):
        recorded = json.loads(metrics.read_text())
        assert recorded["prunebench_version"] == version and recorded["git_commit"] == ""
