"""Kill-and-resume: a run killed at any point and restarted ends with exactly the metrics of an
uninterrupted run (CPU, same seed); outputs are atomic; SIGTERM saves a mid-epoch checkpoint."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, cli_env

VOLATILE = {"train_seconds", "wall_seconds", "run_dir", "git_commit"}  # others commit meanwhile


def run_cmd(method: str, sparsity: str | None, out: Path, data: Path, epochs: int = 12
            ) -> list[str]:
    cmd = [PYTHON, "-m", "prunebench", "run", "--dataset", "digits", "--arch", "conv2",
           "--method", method, "--seed", "3", "--run-dir", str(out),
           f"epochs={epochs}", f"data_dir={data}"]
    if sparsity is not None:
        cmd += ["--sparsity", sparsity]
    return cmd


def stable_metrics(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in VOLATILE}


def stable_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = {}
    for method, sparsity in (("dense", None), ("random", "0.5")):
        d = tmp_path_factory.mktemp("ref") / method
        subprocess.run(run_cmd(method, sparsity, d, digits_dir), check=True, env=cli_env(),
                       cwd=REPO, capture_output=True)
        out[method] = (stable_metrics(d), stable_history(d))
    return out


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None or time.time() - t0 > timeout:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


@pytest.mark.parametrize("method,sparsity,delay", [
    ("dense", None, 0.0), ("dense", None, 0.7), ("random", "0.5", 0.3), ("random", "0.5", 1.1),
])
def test_sigkill_then_resume_matches_uninterrupted(reference, digits_dir: Path, tmp_path: Path,
                                                   method: str, sparsity: str | None,
                                                   delay: float) -> None:
    d = tmp_path / "run"
    proc = subprocess.Popen(run_cmd(method, sparsity, d, digits_dir), env=cli_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(d / "checkpoint.pt", proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (d / "metrics.json").exists() or proc.returncode == 0
    subprocess.run(run_cmd(method, sparsity, d, digits_dir), check=True, env=cli_env(),
                   cwd=REPO, capture_output=True)
    metrics, history = reference[method]
    assert stable_metrics(d) == metrics
    assert stable_history(d) == history
    assert not (d / "checkpoint.pt").exists()


def test_sigterm_saves_mid_epoch_checkpoint_and_resumes_exactly(reference, digits_dir: Path,
                                                               tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = subprocess.Popen(run_cmd("dense", None, d, digits_dir), env=cli_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(d / "checkpoint.pt", proc)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "preempted" in err
    assert not (d / "metrics.json").exists()
    subprocess.run(run_cmd("dense", None, d, digits_dir), check=True, env=cli_env(), cwd=REPO,
                   capture_output=True)
    metrics, history = reference["dense"]
    assert stable_metrics(d) == metrics
    assert stable_history(d) == history


def test_finished_run_is_skipped_and_changed_config_refused(digits_dir: Path,
                                                             tmp_path: Path) -> None:
    d = tmp_path / "run"
    cmd = run_cmd("dense", None, d, digits_dir, epochs=1)
    subprocess.run(cmd, check=True, env=cli_env(), cwd=REPO, capture_output=True)
    stamp = (d / "metrics.json").stat().st_mtime_ns
    subprocess.run(cmd, check=True, env=cli_env(), cwd=REPO, capture_output=True)
    assert (d / "metrics.json").stat().st_mtime_ns == stamp
    changed = run_cmd("dense", None, d, digits_dir, epochs=2)
    res = subprocess.run(changed, env=cli_env(), cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 1
    assert "different config" in res.stderr and "train_epochs" in res.stderr
    assert (d / "metrics.json").stat().st_mtime_ns == stamp
