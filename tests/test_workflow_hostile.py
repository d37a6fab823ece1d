"""Hostile strings in everything a user controls that reaches a rule's command: the checkout's
folder, the working folder, the config file's name, a data root, a method option, a SLURM
resource. The dry run prints each inside one shell word, and real jobs (check_options,
prepare_dataset, aggregate_runs, plot_figures, build_report) run with them: nothing is executed,
names with spaces, quotes and newlines work."""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from runfactory import make_run
from test_workflow import SNAKEMAKE, WORKFLOW_FILES, _env, _tiny_config

from prunebench import paths

# Each would create a file named PWNED* if a shell read it as code.
HOSTILE = "a b $(touch PWNED1) `touch PWNED2`; touch PWNED3 & 'q' \"dq\" \\ * x"
HOSTILE_NAME = HOSTILE + "\nline two"  # a file name may also hold a newline


def _copy_checkout(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = Path(__file__).resolve().parent.parent / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _pwned(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("PWNED*")]


def _snakemake(checkout: Path, workdir: Path, configfile: Path, *args: str
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SNAKEMAKE, "-s", str(checkout / "Snakefile"), "-d", str(workdir),
                           *args, "--configfile", str(configfile)], cwd=workdir, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _commands(stdout: str) -> list[list[str]]:
    """The printed shell commands (`-p`), split as the shell splits them."""
    found = []
    for block in stdout.split("Shell command: ")[1:]:
        command = block.split("\n\n", 1)[0].split("\n[", 1)[0].strip()
        found.append(shlex.split(command))
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_hostile_names_and_values_execute_nothing(tmp_path: Path) -> None:
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk is not installed (make test installs it as root on Debian)")
    checkout = _copy_checkout(tmp_path / f"checkout {HOSTILE}")
    workdir = tmp_path / f"work {HOSTILE}"
    (workdir / "cfg").mkdir(parents=True)
    archive = workdir / f"cifar {HOSTILE}.tar.gz"
    archive.write_bytes(b"not an archive")
    config = _tiny_config(["dense", "magnitude"])
    config["share_dense_phase"] = False
    config["methods"]["magnitude"] = {"options": {"dense_from": HOSTILE}}
    config["grids"].append({**config["grids"][0], "datasets": ["cifar10"], "methods": ["dense"]})
    config["data_roots"] = {"cifar10": str(archive)}
    config["resources"]["train"]["constraint"] = HOSTILE
    configfile = workdir / "cfg" / f"{HOSTILE_NAME}.yaml"
    configfile.write_text(yaml.safe_dump(config))

    # The dry run: every hostile value is one shell word of its command (or inside one).
    dry = _snakemake(checkout, workdir, configfile, "-n", "-p", "--forceall")
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-4000:]
    words = [w for command in _commands(dry.stdout) for w in command]
    assert f"PYTHONPATH={checkout}" in " ".join(words)
    assert str(archive) in words and f"method.dense_from={HOSTILE}" in words
    assert str(configfile) in words
    assert not _pwned(tmp_path, Path.cwd())

    # Real jobs: the option check with the hostile option and prepare with the hostile root
    # (it fails: not an archive).
    _snakemake(checkout, workdir, configfile, f"{paths.CHECKS_DIR}/magnitude.ok",
               f"{paths.DATA_DIR}/cifar10.pt", "--cores", "1")
    logs = workdir / paths.LOGS_DIR
    assert (logs / "check_options" / "magnitude.log").is_file()
    assert (logs / "prepare_dataset" / "cifar10.log").is_file()
    assert not _pwned(tmp_path, Path.cwd())

    # Then aggregation, figures and the report of made-up digits runs (their train_run markers
    # present), under a config file whose name is hostile too.
    config["grids"].pop()
    report_config = workdir / "cfg" / f"report {HOSTILE_NAME}.yaml"
    report_config.write_text(yaml.safe_dump(config))
    for method, sparsity in (("dense", None), ("magnitude", 0.9)):
        folder = make_run(workdir / paths.RUNS_ROOT, dataset="digits", arch="conv2",
                          method=method, sparsity=sparsity, epochs=1)
        (folder / paths.WORKFLOW_DONE).touch()
    real = _snakemake(checkout, workdir, report_config, f"{paths.REPORT_DIR}/{paths.REPORT_PDF}",
                      "--cores", "1", "--allowed-rules", "aggregate_runs", "plot_figures",
                      "build_report")
    assert real.returncode == 0, (real.stdout + real.stderr)[-4000:]
    assert (workdir / paths.REPORT_DIR / paths.REPORT_PDF).read_bytes().startswith(b"%PDF")
    assert not _pwned(tmp_path, Path.cwd())
