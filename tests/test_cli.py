"""The one-run CLI: complete run folders, exact budgets, and one clear line per user error.
Most calls run `prunebench.cli.main` in-process (`python -m prunebench` is `sys.exit(main())`);
one test starts the real entry point."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, cli_env

from prunebench.cli import main
from prunebench.paths import EXIT_USAGE


def prunebench(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """`python -m prunebench args` in-process: its exit code, stdout and stderr."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["prunebench", *args], code, out.out, out.err)


@pytest.mark.slow
def test_dense_digits_conv4_reaches_90_percent(digits_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    res = prunebench(capsys, "run", "--dataset", "digits", "--arch", "conv4", "--method", "dense",
                     "--seed", "0", "--out", str(tmp_path), f"data_dir={digits_dir}")
    assert res.returncode == 0, res.stderr
    run = tmp_path / "digits/conv4/dense/snone/seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_top1"] >= 90
    assert metrics["sparsity_achieved"] == 0
    for name in ("history.csv", "layers.csv", "log.txt", "config.json"):
        assert (run / name).is_file()
    for key in ("dataset", "arch", "method", "seed", "train_lr", "test_top1", "val_top1",
                "density_achieved", "params_total", "params_nonzero", "macs_dense",
                "macs_effective", "git_commit", "torch_version", "device", "epoch_selected",
                "selection", "wall_seconds", "layers_collapsed"):
        assert key in metrics, key
    assert len((run / "history.csv").read_text().splitlines()) == 1 + metrics["epochs_run"]


def test_random_hits_exact_budget(digits_dir: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    res = prunebench(capsys, "run", "--dataset", "digits", "--arch", "conv4", "--method", "random",
                     "--sparsity", "0.9", "--seed", "0", "--out", str(tmp_path), "epochs=1",
                     f"data_dir={digits_dir}")
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "digits/conv4/random/s0.9/seed0/metrics.json").read_text())
    assert m["kept_prunable"] == round(0.1 * m["num_prunable"])
    layers = (tmp_path / "digits/conv4/random/s0.9/seed0/layers.csv").read_text().splitlines()
    assert sum(int(line.split(",")[4]) for line in layers[1:]) == m["kept_prunable"]
    assert m["macs_effective"] < 0.2 * m["macs_dense"]


@pytest.mark.parametrize("quiet", [["-q", "run"], ["run", "--quiet"]])
def test_quiet_run_prints_nothing_but_logs_everything(
        quiet: list[str], digits_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--quiet (before or after the subcommand): no closing line, no per-epoch lines on the
    terminal; log.txt keeps them. Without it, both are printed."""
    args = ["--dataset", "digits", "--arch", "conv2", "--method", "dense", "epochs=1",
            f"data_dir={digits_dir}"]
    loud = prunebench(capsys, "run", *args, "--out", str(tmp_path / "loud"))
    assert loud.returncode == 0 and '"test_top1"' in loud.stdout and "done:" in loud.stderr
    res = prunebench(capsys, *quiet, *args, "--out", str(tmp_path / "quiet"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    log = (tmp_path / "quiet/digits/conv2/dense/snone/seed0/log.txt").read_text()
    assert "done:" in log and "epoch" in log


def test_print_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = prunebench(capsys, "run", "--dataset", "digits", "--arch", "conv4", "--method", "random",
                     "--sparsity", "0.95", "--seed", "2", "--out", str(tmp_path),
                     "--print-run-dir")
    assert res.stdout.strip() == str(tmp_path / "digits/conv4/random/s0.95/seed2")
    assert not (tmp_path / "digits").exists()


@pytest.mark.parametrize("args,message", [
    (["--dataset", "mnist", "--arch", "conv4", "--method", "dense"],
     "argument --dataset: unknown dataset 'mnist'; allowed: digits, cifar10"),
    (["--dataset", "digits", "--arch", "conv5", "--method", "dense"],
     "argument --arch: unknown arch 'conv5'; allowed: conv2, conv4"),
    (["--dataset", "digits", "--arch", "conv4", "--method", "prune_it"],
     "argument --method: unknown method 'prune_it'; registered methods: dense"),
    (["--dataset", "digits", "--arch", "conv4", "--method", "random", "--sparsity", "1.0"],
     "argument --sparsity: sparsity '1.0' is not a number in [0, 1)"),
    (["--dataset", "digits", "--arch", "conv4", "--method", "random", "--sparsity", "-0.1"],
     "argument --sparsity: sparsity '-0.1' is not a number in [0, 1)"),
])
def test_bad_command_line_values_exit_2_listing_what_is_allowed(
        args: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", *args, "--out", str(tmp_path)])
    assert e.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,message", [
    (["--dataset", "digits", "--arch", "conv4", "--method", "random"],
     "method random needs --sparsity"),
    (["--dataset", "digits", "--arch", "conv4", "--method", "dense", "--sparsity", "0.5"],
     "method dense takes no --sparsity"),
    (["--dataset", "digits", "--arch", "conv4", "--method", "dense", "lr=fast"],
     "override.lr: 'fast' is not a valid float"),
    (["--dataset", "digits", "--arch", "conv4", "--method", "dense", "warmup=3"],
     "unknown train option 'warmup'"),
    (["--dataset", "digits", "--arch", "conv4", "--method", "dense", "method.tau=2"],
     "method dense options: unknown option(s) tau"),
    (["--dataset", "cifar10", "--arch", "conv4", "--method", "dense", "data_dir=/nonexistent"],
     "dataset 'cifar10' is not prepared"),
])
def test_user_errors_are_one_line(args: list[str], message: str, digits_dir: Path,
                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = [] if any(a.startswith("data_dir=") for a in args) else [f"data_dir={digits_dir}"]
    res = prunebench(capsys, "run", *args, "--out", str(tmp_path), *extra)
    assert res.returncode == 1, res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.slow
def test_entry_point_prints_one_line_error_and_exit_code(tmp_path: Path) -> None:
    """The real `python -m prunebench`: a user error is one line on stderr and exit code 1."""
    res = subprocess.run([PYTHON, "-m", "prunebench", "run", "--dataset", "cifar10", "--arch",
                          "conv4", "--method", "dense", "--out", str(tmp_path / "runs"),
                          f"data_dir={tmp_path / 'none'}"],
                         env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith("prunebench: error: dataset 'cifar10' is not prepared"), (
        res.stderr)
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stdout == "" and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_user_files_and_a_reader_stopping_early_change_nothing(tmp_path: Path) -> None:
    """From a folder holding a user's methods.py and baselines.py (first on `python -m`'s path),
    the method packages are still prunebench's own; `prunebench list | head`: no
    BrokenPipeError traceback when the reader is gone (`true` exits at once, long before the
    first line is written)."""
    for name in ("methods.py", "baselines.py"):
        (tmp_path / name).write_text("raise SystemExit('the user file was imported')\n")
    res = subprocess.run(f"{PYTHON} -m prunebench list | true", shell=True, env=cli_env(),
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.stderr == "", res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", [["prepare"], ["run", "--arch", "conv4", "--method", "dense"]])
def test_same_bad_dataset_same_exit_code_everywhere(command: list[str], tmp_path: Path) -> None:
    """The entry point refuses a dataset it does not know with exit 2 on every subcommand,
    naming the allowed ones."""
    res = subprocess.run([PYTHON, "-m", "prunebench", *command, "--dataset", "mnist"],
                         env=cli_env(), cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == EXIT_USAGE, res.stderr
    assert ("argument --dataset: unknown dataset 'mnist'; allowed: digits, cifar10, cifar100, "
            "tinyimagenet, imagefolder") in res.stderr
    assert res.stdout == "" and not list(tmp_path.iterdir())


def test_nan_loss_stops_with_failed_record(digits_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    res = prunebench(capsys, "run", "--dataset", "digits", "--arch", "conv2", "--method", "dense",
                     "--run-dir", str(tmp_path / "run"), "lr=1e12", "epochs=3",
                     "schedule=constant", f"data_dir={digits_dir}")
    assert res.returncode == 3, res.stderr
    assert "training diverged" in res.stderr and "epoch" in res.stderr
    assert not (tmp_path / "run/metrics.json").exists()
    failed = json.loads((tmp_path / "run/failed.json").read_text())
    assert "loss became" in failed["reason"]


def test_list_shows_registered_methods(capsys: pytest.CaptureFixture[str]) -> None:
    res = prunebench(capsys, "list")
    assert res.returncode == 0
    assert "dense" in res.stdout and "random" in res.stdout and "conv4" in res.stdout
