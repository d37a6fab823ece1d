"""Fault injection: runs killed (SIGKILL) or preempted (SIGTERM/SIGUSR1) at random and at precise
points, again and again, end with exactly the result of an uninterrupted run (CPU, same seed);
crafted pickles, hostile archives, corrupt data and invalid workflow configs are refused; a
diverged run stays visible as failed; aggregation loses nothing.

Kill points are injected by tests/faultlaunch.py, which monkeypatches the engine in the child
process only. The tallies are printed and written to <pytest basetemp>/fault_summary.json (or
$PRUNEBENCH_FAULT_SUMMARY) by the last test, `test_fault_summary`. Run the whole file:
    .venv/bin/python -m pytest tests/test_faults.py -q -s
"""
from __future__ import annotations

import copy
import csv
import fcntl
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import tarfile
import time
import zipfile
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import PYTHON, REPO, cli_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from prunebench import archives
from prunebench.aggregate import SUMMARY, SUMMARY_BY_SETTING
from prunebench.cli import main
from prunebench.data import load_prepared
from prunebench.errors import PrunebenchError

pytestmark = pytest.mark.slow

LAUNCHER = Path(__file__).resolve().parent / "faultlaunch.py"
FAULT_SEED = int(os.environ.get("PRUNEBENCH_FAULT_SEED", "7"))
# Timing and provenance fields: not part of a result (others may commit while the suite runs).
VOLATILE = {"train_seconds", "wall_seconds", "run_dir", "git_commit"}
KILLED, PREEMPTED = -signal.SIGKILL, 75
FIGURES: Counter[str] = Counter()  # the tallies test_fault_summary reports

# The runs under fault: digits, conv2, seed 3, a few epochs; (method, sparsity, overrides).
SETTINGS: dict[str, tuple[str, str | None, list[str]]] = {
    "dense": ("dense", None, ["epochs=3", "selection=val"]),
    "random": ("random", "0.5", ["epochs=3"]),
    "magnitude_ft": ("magnitude_ft", "0.8", ["epochs=2", "method.ft_epochs=1"]),
    "gumbel": ("gumbel", None, ["epochs=2"]),
    "reparam": ("reparam", "0.8", ["epochs=2"]),
    "edgepopup": ("edgepopup", "0.5", ["epochs=2"]),
    "snip": ("snip", "0.8", ["epochs=2"]),
    "supermask": ("supermask", None, ["epochs=2"]),
}
EPOCHS = {"dense": 3, "random": 3, "magnitude_ft": 3}  # all phases; the others 2
BATCH = 32  # the digits recipe


# -- the launcher ----------------------------------------------------------------------------------

class Launcher:
    """tests/faultlaunch.py in server mode: one fresh (forked) process per attempt."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([PYTHON, str(LAUNCHER)], cwd=REPO, env=cli_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline()
        assert "ready" in ready, f"fault launcher did not start: {ready!r}"

    def attempt(self, argv: list[str], log: Path, faults: list[dict[str, Any]] | None = None,
                kill_after: float | None = None) -> int:
        request = {"argv": argv, "faults": faults or [], "log": str(log),
                   "kill_after": kill_after}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the fault launcher died"
        return json.loads(reply)["rc"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def launcher() -> Launcher:
    launch = Launcher()
    yield launch
    launch.close()


def run_args(setting: str, data_dir: Path, run_dir: Path | None = None,
             out: Path | None = None, extra: tuple[str, ...] = (), seed: int = 3) -> list[str]:
    method, sparsity, overrides = SETTINGS[setting]
    argv = ["run", "--dataset", "digits", "--arch", "conv2", "--method", method,
            "--seed", str(seed),
            *overrides, *extra, f"data_dir={data_dir}", "device=cpu"]
    if sparsity is not None:
        argv += ["--sparsity", sparsity]
    return argv + (["--run-dir", str(run_dir)] if run_dir else ["--out", str(out)])


# -- what a run folder holds -----------------------------------------------------------------------

def read_csv(path: Path, drop: str = "") -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != drop} for row in csv.DictReader(f)]


def stable_metrics(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in VOLATILE}


def outcome(run_dir: Path) -> dict[str, Any]:
    """The result of a finished run, without timings."""
    return {"metrics": stable_metrics(run_dir),
            "history": read_csv(run_dir / "history.csv", drop="epoch_seconds"),
            "layers": read_csv(run_dir / "layers.csv")}


def temp_folders(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob(".*.tmp"))


def log_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def reference(launcher: Launcher, digits_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`reference(setting)`: the outcome of an uninterrupted run (computed once)."""
    root = tmp_path_factory.mktemp("reference")
    cache: dict[str, dict[str, Any]] = {}

    def get(setting: str) -> dict[str, Any]:
        if setting not in cache:
            d, log = root / setting, root / f"{setting}.log"
            start = time.monotonic()
            rc = launcher.attempt(run_args(setting, digits_dir, d), log)
            get.seconds[setting] = time.monotonic() - start
            assert rc == 0, log_text(log)[-3000:]
            cache[setting] = outcome(d)
        return cache[setting]

    get.seconds = {}  # wall time of each uninterrupted run, to aim the random-time kills
    return get


def steps_per_epoch(data_dir: Path) -> int:
    manifest = json.loads((data_dir / "digits.json").read_text())
    val = torch.load(data_dir / "digits.pt", weights_only=True)["val_idx"]
    return (manifest["num_train"] - len(val)) // BATCH


def steps_left(run_dir: Path, setting: str, per_epoch: int) -> int:
    """Training steps a rerun still has to do, read from the run's checkpoint."""
    total = EPOCHS.get(setting, 2) * per_epoch
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.exists():
        return total
    ckpt = torch.load(ckpt_path, weights_only=True)
    mid = ckpt["mid_epoch"]
    return total - ckpt["loop"]["global_epoch"] * per_epoch - (mid["step"] if mid else 0)


def check_interrupted(run_dir: Path, ref: dict[str, Any]) -> None:
    """What a killed run leaves never looks finished unless it is, and is never half-written."""
    assert not (run_dir / "failed.json").exists()
    if (run_dir / "metrics.json").exists():
        assert outcome(run_dir) == ref
    for name in ("history.csv", "layers.csv"):
        if (run_dir / name).exists():
            assert read_csv(run_dir / name, "epoch_seconds") == ref[name.split(".")[0]]
    if (run_dir / "checkpoint.pt").exists():
        torch.load(run_dir / "checkpoint.pt", weights_only=True)  # complete, or this raises
    if (run_dir / "config.json").exists():
        assert json.loads((run_dir / "config.json").read_text())["digest"]


def check_finished(run_dir: Path, ref: dict[str, Any]) -> None:
    got = outcome(run_dir)
    lost = got != ref
    FIGURES["results_compared"] += 1
    FIGURES["results_lost"] += lost
    assert not lost, f"{run_dir}: result differs from the uninterrupted run"
    assert not (run_dir / "checkpoint.pt").exists()
    assert not (run_dir / "failed.json").exists()
    assert temp_folders(run_dir) == []


# -- kill plans ------------------------------------------------------------------------------------

WHENS = ("mid", "before_rename", "after_rename")
# Faults that need training left (the step is drawn among the steps left), and faults that come
# after training. Each is (faults, kill_after, the exit code when it fires).
EARLY = ("step kill", "step signal", "checkpoint write", "kill in preemption checkpoint",
         "config write", "random-time kill")
LATE = ("extraction signal", "metrics write", "history/layers write")


def early_fault(kind: str, rng: random.Random, left: int, seconds_left: float
                ) -> tuple[list[dict[str, Any]], float | None, int]:
    step = rng.randint(1, left)
    if kind == "step kill":
        return [{"at": "step", "n": step, "action": "kill"}], None, KILLED
    if kind == "step signal":
        return [{"at": "step", "n": step, "action": rng.choice(["term", "usr1"])}], None, PREEMPTED
    if kind == "checkpoint write":
        return [{"at": "write", "file": "checkpoint.pt", "n": 1, "when": rng.choice(WHENS),
                 "action": "kill"}], None, KILLED
    if kind == "kill in preemption checkpoint":
        return [{"at": "step", "n": step, "action": rng.choice(["term", "usr1"])},
                {"at": "write", "file": "checkpoint.pt", "n": 1, "when": "mid",
                 "action": "kill"}], None, KILLED
    if kind == "config write":
        return [{"at": "write", "file": "config.json", "n": 1, "when": rng.choice(WHENS),
                 "action": "kill"}], None, KILLED
    assert kind == "random-time kill"  # anywhere in the rest of the run, startup included
    return [], rng.uniform(0.02, 0.6) * seconds_left, KILLED


def late_fault(kind: str, rng: random.Random) -> tuple[list[dict[str, Any]], float | None, int]:
    if kind == "extraction signal":
        action = rng.choice(["kill", "term", "usr1"])
        return [{"at": "extract", "action": action}], None, KILLED if action == "kill" else 75
    name = "metrics.json" if kind == "metrics write" else rng.choice(["history.csv",
                                                                       "layers.csv"])
    return [{"at": "write", "file": name, "n": 1, "when": rng.choice(WHENS),
             "action": "kill"}], None, KILLED


def plans() -> dict[str, tuple[list[str], str]]:
    """Per setting: three early fault kinds and one late one, dealt so every kind occurs."""
    rng = random.Random(FAULT_SEED)
    early = [EARLY[i % len(EARLY)] for i in range(3 * len(SETTINGS))]
    late = [LATE[i % len(LATE)] for i in range(len(SETTINGS))]
    rng.shuffle(early)
    rng.shuffle(late)
    # a random-time kill may come too late (the run finished): it goes last, skipping least
    last = "random-time kill"
    return {s: (sorted(early[3 * i:3 * i + 3], key=lambda k: k == last), late[i])
            for i, s in enumerate(SETTINGS)}


PLANS = plans()


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_killed_again_and_again_ends_with_the_uninterrupted_result(
        setting: str, launcher: Launcher, reference, digits_dir: Path, tmp_path: Path) -> None:
    """Kill, rerun, kill again (3 times while training, once after), then finish: the folder
    holds exactly the uninterrupted run's metrics, history and layers, and nothing else."""
    ref = reference(setting)
    rng = random.Random(f"{FAULT_SEED}-{setting}")
    per_epoch = steps_per_epoch(digits_dir)
    total = EPOCHS.get(setting, 2) * per_epoch
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    argv = run_args(setting, digits_dir, run_dir)
    early, late = PLANS[setting]
    for kind in [*early, late]:
        left = steps_left(run_dir, setting, per_epoch)
        if kind in EARLY:
            assert left > 0, "no training left for an early fault"
            seconds_left = reference.seconds[setting] * left / total
            faults, kill_after, expected = early_fault(kind, rng, left, seconds_left)
        else:
            faults, kill_after, expected = late_fault(kind, rng)
        rc = launcher.attempt(argv, log, faults, kill_after)
        if kill_after is not None and rc == 0:  # the run finished before the timer
            FIGURES["random-time kills that came too late"] += 1
            break
        assert rc == expected, f"{kind} {faults}: exit {rc}\n{log_text(log)[-3000:]}"
        FIGURES["kills" if rc == KILLED else "preemptions"] += 1
        FIGURES[f"fault: {kind}"] += 1
        for f in faults:
            if f["at"] == "write" and rc == KILLED:  # the kill hit inside the atomic write
                assert any(n.startswith(f".{f['file']}.") for n in temp_folders(run_dir)), f
        check_interrupted(run_dir, ref)
    rc = launcher.attempt(argv, log)
    assert rc == 0, log_text(log)[-3000:]
    check_finished(run_dir, ref)
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    assert launcher.attempt(argv, log) == 0  # a finished run is skipped, untouched
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp
    FIGURES["kill plans completed"] += 1


def test_signal_in_the_last_epoch_and_during_extraction(launcher: Launcher, reference,
                                                        digits_dir: Path, tmp_path: Path) -> None:
    """SIGUSR1 at the very last step: the epoch ends, is checkpointed, exit 75; SIGTERM while
    the network is extracted: exit 75, no metrics; the rerun finishes with the reference."""
    ref = reference("dense")
    per_epoch = steps_per_epoch(digits_dir)
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    argv = run_args("dense", digits_dir, run_dir)
    kill = {"at": "write", "file": "checkpoint.pt", "n": 2, "when": "after_rename",
            "action": "kill"}
    assert launcher.attempt(argv, log, [kill]) == KILLED  # two of three epochs done
    assert steps_left(run_dir, "dense", per_epoch) == per_epoch
    rc = launcher.attempt(argv, log, [{"at": "step", "n": per_epoch, "action": "usr1"}])
    assert rc == PREEMPTED, log_text(log)[-3000:]
    assert steps_left(run_dir, "dense", per_epoch) == 0
    assert not (run_dir / "metrics.json").exists()
    rc = launcher.attempt(argv, log, [{"at": "extract", "action": "term"}])
    assert rc == PREEMPTED, log_text(log)[-3000:]
    assert "outside the training loop" in log_text(log)
    assert not (run_dir / "metrics.json").exists() and (run_dir / "checkpoint.pt").exists()
    FIGURES["kills"] += 1
    FIGURES["preemptions"] += 2
    assert launcher.attempt(argv, log) == 0
    check_finished(run_dir, ref)


def test_real_process_start_matches_the_launcher(reference, digits_dir: Path,
                                                 tmp_path: Path) -> None:
    """Without the forking launcher: `python tests/faultlaunch.py` kills a run mid-write of its
    first checkpoint, `python -m prunebench run` resumes it; same result as the reference."""
    ref = reference("random")
    run_dir = tmp_path / "run"
    argv = run_args("random", digits_dir, run_dir)
    faults = [{"at": "write", "file": "checkpoint.pt", "n": 1, "when": "mid", "action": "kill"}]
    killed = subprocess.run([PYTHON, str(LAUNCHER), json.dumps(faults), *argv], cwd=REPO,
                            env=cli_env(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    assert temp_folders(run_dir) and not (run_dir / "checkpoint.pt").exists()
    FIGURES["kills"] += 1
    done = subprocess.run([PYTHON, "-m", "prunebench", *argv], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "removed .checkpoint.pt." in (run_dir / "log.txt").read_text()
    check_finished(run_dir, ref)


@pytest.mark.parametrize("file,when", [("digits.pt", "mid"), ("digits.json", "before_rename")])
def test_prepare_killed_while_writing(file: str, when: str, launcher: Launcher,
                                      digits_dir: Path, tmp_path: Path) -> None:
    """`prepare` killed inside a write leaves a temp folder and no usable dataset; rerun, it
    removes the leftover and writes the same bytes as an uninterrupted prepare."""
    data, log = tmp_path / "data", tmp_path / "prepare.log"
    argv = ["prepare", "--dataset", "digits", "--data-dir", str(data)]
    kill = [{"at": "write", "file": file, "n": 1, "when": when, "action": "kill"}]
    assert launcher.attempt(argv, log, kill) == KILLED
    assert temp_folders(data)
    with pytest.raises(PrunebenchError):
        load_prepared("digits", data)
    assert launcher.attempt(argv, log) == 0, log_text(log)[-3000:]
    assert temp_folders(data) == []
    for name in ("digits.pt", "digits.json"):
        assert (data / name).read_bytes() == (digits_dir / name).read_bytes()
    FIGURES["kills"] += 1
    FIGURES["results_compared"] += 1


def test_a_folder_in_use_is_refused(launcher: Launcher, digits_dir: Path,
                                    tmp_path: Path) -> None:
    """Two processes never write one run folder: the second stops with a one-line error."""
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 12345 on elsewhere\n")
        held.flush()
        wait = {"at": "set", "name": "prunebench.run.LOCK_WAIT_SECONDS", "value": 2.0}
        start = time.monotonic()
        rc = launcher.attempt(run_args("dense", digits_dir, run_dir), log, [wait])
        assert time.monotonic() - start >= 2.0  # it waited for the lock first
    err = log_text(log).strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "in use by another prunebench process (pid 12345 on elsewhere)" in err
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


# -- checkpoints and datasets that are not what they claim -----------------------------------------

class Payload:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def crafted(path: Path, marker: Path, form: str) -> Path:
    """A file that runs code when loaded by plain pickle / torch.load(weights_only=False)."""
    if form == "pickle":
        path.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=2))
    else:
        torch.save({"model": Payload(marker), "train_x": torch.zeros(1)}, path)
    return path


def proves_live(form: str, tmp_path: Path) -> None:
    """Control: the crafted file really does run code when loaded unsafely."""
    control = tmp_path / "control-marker"
    path = crafted(tmp_path / f"control-{form}.pt", control, form)
    if form == "pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert control.read_text() == "pwned"


@pytest.mark.parametrize("case", ["pickle code", "torch.save code", "other run's", "truncated"])
def test_bad_checkpoint_is_ignored_and_the_run_starts_afresh(
        case: str, launcher: Launcher, reference, digits_dir: Path, tmp_path: Path) -> None:
    """A checkpoint is a cache of the engine's own making: one that cannot be loaded as plain
    tensors, or was written under another config, is logged and ignored, never executed; the
    run starts afresh and, being deterministic, ends with the reference result."""
    ref = reference("dense")
    per_epoch = steps_per_epoch(digits_dir)
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    argv = run_args("dense", digits_dir, run_dir)
    kill = [{"at": "step", "n": per_epoch + 5, "action": "kill"}]
    assert launcher.attempt(argv, log, kill) == KILLED
    FIGURES["kills"] += 1
    ckpt, marker = run_dir / "checkpoint.pt", tmp_path / "marker"
    if case.endswith("code"):
        form = case.split()[0]
        proves_live(form, tmp_path)
        crafted(ckpt, marker, form)
    elif case == "other run's":  # same method and network, another seed: it would load
        other = tmp_path / "other"
        rc = launcher.attempt(run_args("dense", digits_dir, other, seed=4), log, kill)
        assert rc == KILLED
        shutil.copy(other / "checkpoint.pt", ckpt)
    else:
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert launcher.attempt(argv, log) == 0, log_text(log)[-3000:]
    assert not marker.exists()
    text = (run_dir / "log.txt").read_text()
    assert f"checkpoint {ckpt} cannot be used" in text and "starting from scratch" in text
    assert "resumed from" not in text.split("cannot be used")[-1]
    FIGURES["crafted pickles refused" if case.endswith("code") else "bad checkpoints ignored"] += 1
    check_finished(run_dir, ref)


def test_every_load_of_a_file_is_data_only() -> None:
    """Static check over the engine, methods and workflow: every torch.load passes
    weights_only=True, and nothing calls pickle.load(s) (CIFAR batches go through the
    restricted unpickler in prunebench/downloads.py)."""
    import ast

    unsafe = []
    files = [p for d in ("prunebench", "methods", "baselines") for p in (REPO / d).rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = getattr(node.func.value, "id", "")
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                           for k in node.keywords)
                if not safe:
                    unsafe.append(where)
            if owner == "pickle" and node.func.attr in ("load", "loads"):
                unsafe.append(where)
    assert not unsafe, f"unsafe loads: {unsafe}"
    for smk in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")]:
        assert "torch.load" not in smk.read_text() and "pickle" not in smk.read_text()


@pytest.fixture
def data_copy(digits_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for name in ("digits.pt", "digits.json"):
        shutil.copy(digits_dir / name, d / name)
    return d


def replace_dataset(data_dir: Path, write) -> Path:
    """Overwrite digits.pt and make the manifest's checksum match it (a consistent forgery)."""
    path = data_dir / "digits.pt"
    write(path)
    manifest = json.loads((data_dir / "digits.json").read_text())
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (data_dir / "digits.json").write_text(json.dumps(manifest))
    return path


def one_line_load_error(data_dir: Path) -> str:
    with pytest.raises(PrunebenchError) as e:
        load_prepared("digits", data_dir)
    assert "\n" not in str(e.value) and str(data_dir / "digits.pt") in str(e.value)
    return str(e.value)


def cli_refuses(launcher: Launcher, argv: list[str], log: Path, *fragments: str) -> str:
    rc = launcher.attempt(argv, log)
    err = log_text(log).strip()
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("prunebench: error:"), err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize("form", ["pickle", "torch.save"])
def test_crafted_dataset_file_is_refused_before_any_run(
        form: str, launcher: Launcher, data_copy: Path, tmp_path: Path) -> None:
    proves_live(form, tmp_path)
    marker = tmp_path / "marker"
    path = replace_dataset(data_copy, lambda p: crafted(p, marker, form))
    assert "cannot be loaded" in one_line_load_error(data_copy)
    runs = tmp_path / "runs"
    cli_refuses(launcher, run_args("dense", data_copy, out=runs), tmp_path / "cli.log", str(path))
    assert not marker.exists() and not runs.exists()  # nothing ran, no run folder
    FIGURES["crafted pickles refused"] += 1


def _tensors(data_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(data_dir / "digits.pt", weights_only=True)


WRONG_CONTENTS = {
    "a bare tensor": (lambda t: torch.zeros(3), "not the prepared tensors"),
    "missing tensor": (lambda t: {k: v for k, v in t.items() if k != "test_y"}, "lacks"),
    "wrong image shape": (lambda t: {**t, "train_x": t["train_x"][:, :, :4]}, "train_x"),
    "labels out of range": (lambda t: {**t, "test_y": t["test_y"] + 5}, "labels outside 0..9"),
    "float images": (lambda t: {**t, "test_x": t["test_x"].float()}, "test_x torch.float32"),
    "bad validation indices": (lambda t: {**t, "val_idx": t["val_idx"] + 10**6}, "val_idx"),
}


@pytest.mark.parametrize("case", list(WRONG_CONTENTS))
def test_dataset_file_with_other_contents_is_refused(case: str, data_copy: Path) -> None:
    """A file whose checksum matches its manifest but whose tensors do not: one line, no run."""
    change, fragment = WRONG_CONTENTS[case]
    contents = change(_tensors(data_copy))
    replace_dataset(data_copy, lambda p: torch.save(contents, p))
    assert fragment in one_line_load_error(data_copy)
    FIGURES["corrupt or wrong data refused"] += 1


def test_truncated_dataset_file_stops_the_cli_before_any_run(launcher: Launcher, data_copy: Path,
                                                             tmp_path: Path) -> None:
    pt = data_copy / "digits.pt"
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 3])
    runs = tmp_path / "runs"
    cli_refuses(launcher, run_args("dense", data_copy, out=runs), tmp_path / "cli.log", str(pt),
                "checksum")
    assert not runs.exists()
    FIGURES["corrupt or wrong data refused"] += 1


def image_tree(root: Path) -> Path:
    for split in ("train", "test"):
        for label, name in enumerate(("cat", "dog")):
            d = root / split / name
            d.mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (8, 8), (40 * label, 30 * k, 7)).save(d / f"{k}.png")
                Image.new("RGB", (8, 8), (40 * label, 30 * k, 9)).save(d / f"{k}.jpg",
                                                                      quality=95)
    return root


@pytest.mark.parametrize("case", ["truncated jpeg", "truncated png", "empty file"])
def test_truncated_image_names_the_file(case: str, launcher: Launcher, tmp_path: Path) -> None:
    """An image tree that arrived cut short: `prepare` stops in one line naming the file and
    writes no prepared dataset."""
    tree = image_tree(tmp_path / "tree")
    suffix = {"truncated jpeg": "jpg", "truncated png": "png", "empty file": "png"}[case]
    bad = tree / "train" / "dog" / f"1.{suffix}"
    bad.write_bytes(b"" if case == "empty file" else bad.read_bytes()[: bad.stat().st_size // 2])
    data = tmp_path / "data"
    argv = ["prepare", "--dataset", "imagefolder", "--root", str(tree), "--data-dir", str(data)]
    cli_refuses(launcher, argv, tmp_path / "cli.log", str(bad))
    assert not list(data.glob("imagefolder.*")) and not list(data.glob(".*.tmp"))
    FIGURES["corrupt or wrong data refused"] += 1


# -- hostile archives (tests/test_archives.py holds the main cases; these add the rest) ------------

def _tar(path: Path, infos: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> Path:
    with tarfile.open(path, "w:gz", format=fmt) as tf:
        for info, data in infos:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


def _zip(path: Path, members: list[tuple[str, int, bytes]]) -> Path:
    """members: (name, unix mode or 0, data)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, mode, data in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def hostile_archives(d: Path, outside: Path) -> dict[str, tuple[Path, str]]:
    """name -> (archive, words the refusal must contain). `outside` is where an escape lands."""
    ok = (_info("train/a/0.png"), b"fine")
    up = os.path.relpath(outside, d / "out")
    return {
        "tar block device": (_tar(d / "blk.tar.gz", [ok, (_info("dev", tarfile.BLKTYPE), b"")],
                                  tarfile.GNU_FORMAT), "device file or FIFO"),
        "tar PAX path escaping": (_tar(d / "pax.tar.gz", [ok, (_info(
            "innocent.txt", pax_headers={"path": f"{up}/pax.txt"}), b"x")], tarfile.PAX_FORMAT),
            "escape"),
        "tar GNU long name escaping": (_tar(d / "long.tar.gz", [ok, (_info(
            f"{up}/{'n' * 120}.txt"), b"x")], tarfile.GNU_FORMAT), "escape"),
        "tar absolute long name": (_tar(d / "abs.tar.gz", [ok, (_info(
            f"{outside}/{'a' * 120}.txt"), b"x")], tarfile.GNU_FORMAT), "escape"),
        "tar folder escaping": (_tar(d / "dir.tar.gz", [ok, (_info(f"{up}/evil-dir",
                                                                    tarfile.DIRTYPE), b"")],
                                     tarfile.GNU_FORMAT), "escape"),
        "tar hard link to an absolute path": (_tar(d / "hard.tar.gz", [ok, (_info(
            "train/a/1.png", tarfile.LNKTYPE, linkname="/etc/passwd"), b"")], tarfile.GNU_FORMAT),
            "hard link"),
        "zip absolute path": (_zip(d / "abs.zip", [("train/a/0.png", 0, b"fine"),
                                                   (f"{outside}/abs.txt", 0, b"x")]), "escape"),
        "zip UNC path": (_zip(d / "unc.zip", [("\\\\server\\share\\evil.txt", 0, b"x")]),
                         "escape"),
        "zip drive letter": (_zip(d / "drive.zip", [("C:\\evil.txt", 0, b"x")]), "escape"),
        "zip character device": (_zip(d / "chr.zip", [("dev", 0o020644, b"")]), "special file"),
        "zip FIFO": (_zip(d / "fifo.zip", [("fifo", 0o010644, b"")]), "special file"),
        "zip symlink": (_zip(d / "sym.zip", [("link", 0o120777, str(outside).encode())]),
                        "symbolic link"),
    }


def test_hostile_archives_are_refused_without_writing(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "archives"
    src.mkdir()
    cases = hostile_archives(src, outside)
    readers = [("safe_extract", lambda a: archives.safe_extract(a, tmp_path / "archives/out"))]
    if hasattr(archives, "read_files"):  # the in-memory reader used for imagefolder archives
        readers.append(("read_files", archives.read_files))
    for name, (archive, words) in cases.items():
        for reader, read in readers:
            with pytest.raises(PrunebenchError) as e:
                read(archive)
            msg = str(e.value)
            assert str(archive) in msg and words in msg and "\n" not in msg, (name, reader, msg)
            FIGURES["hostile archive reads refused"] += 1
        out = src / "out"
        assert not out.exists() or not any(out.rglob("*")), name
    assert list(outside.iterdir()) == []
    assert not Path("/abs.txt").exists() and not Path("/evil.txt").exists()


def test_hostile_archive_through_the_cli(launcher: Launcher, tmp_path: Path) -> None:
    """`prepare --dataset imagefolder --root <archive>`: one line naming the archive, no data."""
    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "archives"
    src.mkdir()
    archive, words = hostile_archives(src, outside)["tar PAX path escaping"]
    data = tmp_path / "data"
    argv = ["prepare", "--dataset", "imagefolder", "--root", str(archive), "--data-dir", str(data)]
    cli_refuses(launcher, argv, tmp_path / "cli.log", str(archive), words)
    assert list(outside.iterdir()) == [] and not list(data.rglob("*.pt"))
    FIGURES["hostile archive reads refused"] += 1


# -- numerical faults ------------------------------------------------------------------------------

def test_divergence_after_good_epochs_keeps_the_last_good_checkpoint(
        launcher: Launcher, reference, digits_dir: Path, tmp_path: Path) -> None:
    """magnitude_ft with a fine-tuning lr of 1e12: two good dense epochs, then the loss becomes
    NaN in the fine-tuning epoch. Exit 3, failed.json with the reason and the good epochs, no
    metrics.json, the checkpoint of the last good state kept; a rerun fails the same way; the
    aggregated table lists the setting as failed, with nothing averaged."""
    ref = reference("magnitude_ft")
    runs, log = tmp_path / "runs", tmp_path / "run.log"
    argv = run_args("magnitude_ft", digits_dir, out=runs, extra=("method.ft_lr=1e12",))
    run_dir = runs / "digits/conv2/magnitude_ft/s0.8/seed3"
    for _ in range(2):
        rc = launcher.attempt(argv, log)
        assert rc == 3, log_text(log)[-3000:]
        assert "training diverged: loss became nan in epoch 3 (phase finetune)" in log_text(log)
        assert not (run_dir / "metrics.json").exists()
        failed = json.loads((run_dir / "failed.json").read_text())
        assert "the last good checkpoint is kept" in failed["reason"]
        good = [{k: str(v) for k, v in row.items() if k != "epoch_seconds"}
                for row in failed["history"]]
        assert good == ref["history"][:2]  # the dense epochs, as in the healthy run
        ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert (ckpt["loop"]["phase"], ckpt["loop"]["global_epoch"]) == (1, 2)
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values()
                   if v.is_floating_point())
    FIGURES["diverged runs recorded as failed"] += 1
    assert main(["aggregate", "--runs", str(runs), "--out", str(tmp_path / "results")]) == 0
    table = read_csv(tmp_path / "results" / SUMMARY)
    by_setting = read_csv(tmp_path / "results" / SUMMARY_BY_SETTING)
    assert [(r["method"], r["status"]) for r in table] == [("magnitude_ft", "failed")]
    assert "loss became nan" in table[0]["reason"]
    assert [(r["n"], r["n_failed"], r["test_top1_pct_mean"]) for r in by_setting] == [
        ("0", "1", "")]


# -- aggregation never loses a result --------------------------------------------------------------

def test_aggregation_sees_every_run_and_flags_the_doubtful(
        launcher: Launcher, reference, digits_dir: Path, tmp_path: Path) -> None:
    """Real run folders: finished, interrupted, diverged, killed in its first write; rerun after
    more finish; an identical copy kept once; a conflicting copy and a stale folder reported."""
    runs, log, results = tmp_path / "runs", tmp_path / "run.log", tmp_path / "results"

    def leaf(setting: str) -> Path:
        method, sparsity, _ = SETTINGS[setting]
        return runs / f"digits/conv2/{method}/s{sparsity or 'none'}/seed3"

    def aggregate() -> tuple[dict[str, dict[str, str]], list[dict[str, str]]]:
        assert main(["aggregate", "--runs", str(runs), "--out", str(results)]) == 0
        table = read_csv(results / SUMMARY)
        return {r["run_id"]: r for r in table}, read_csv(results / SUMMARY_BY_SETTING)

    assert launcher.attempt(run_args("dense", digits_dir, out=runs), log) == 0
    kill = [{"at": "step", "n": 50, "action": "kill"}]
    assert launcher.attempt(run_args("random", digits_dir, out=runs), log, kill) == KILLED
    first_write = [{"at": "write", "file": "config.json", "n": 1, "when": "mid",
                    "action": "kill"}]
    assert launcher.attempt(run_args("snip", digits_dir, out=runs), log, first_write) == KILLED
    assert launcher.attempt(run_args("magnitude_ft", digits_dir, out=runs,
                                     extra=("method.ft_lr=1e12",)), log) == 3
    FIGURES["kills"] += 2
    rows, _ = aggregate()
    assert {k: r["status"] for k, r in rows.items()} == {
        "digits/conv2/dense/snone/seed3": "ok",
        "digits/conv2/random/s0.5/seed3": "incomplete",
        "digits/conv2/magnitude_ft/s0.8/seed3": "failed",
    }  # the snip run never wrote its config: no row, and its temp folder is not a run
    assert temp_folders(leaf("snip"))

    for setting in ("random", "snip"):  # both finish; one more run joins
        assert launcher.attempt(run_args(setting, digits_dir, out=runs), log) == 0
        check_finished(leaf(setting), reference(setting))
    assert launcher.attempt(run_args("random", digits_dir, out=runs, seed=4), log) == 0
    rows, settings = aggregate()
    assert sorted(r["status"] for r in rows.values()) == ["failed", "ok", "ok", "ok", "ok"]
    random_row = next(r for r in settings if r["method"] == "random")
    assert (random_row["n"], random_row["seeds"]) == ("2", "3;4")
    finished = sorted(p.parent.relative_to(runs).as_posix() for p in runs.rglob("metrics.json"))
    assert finished == sorted(k for k, r in rows.items() if r["status"] == "ok")

    shutil.copytree(leaf("dense"), runs / "backup" / leaf("dense").relative_to(runs))
    rows, settings = aggregate()
    dense = [r for r in rows.values() if r["method"] == "dense"]
    assert sorted(r["status"] for r in dense) == ["duplicate", "ok"]
    assert next(r for r in settings if r["method"] == "dense")["n"] == "1"

    other = runs / "old" / leaf("dense").relative_to(runs)  # same setting, other config
    shutil.rmtree(runs / "backup")
    assert launcher.attempt(run_args("dense", digits_dir, other, extra=("epochs=1",)), log) == 0
    stale = leaf("snip")
    config = json.loads((stale / "config.json").read_text())
    config["config"]["train"]["lr"] = 0.05  # the folder's config changed after it finished
    config["digest"] = "0" * 16
    (stale / "config.json").write_text(json.dumps(config))
    rows, settings = aggregate()
    status = {k: r["status"] for k, r in rows.items()}
    assert [status[k] for k in sorted(status) if "/dense/" in k] == ["duplicate", "duplicate"]
    assert status[stale.relative_to(runs).as_posix()] == "stale"
    assert not list(runs.rglob(".*.tmp"))
    assert len(rows) == len(list(runs.rglob("config.json")))  # every run folder has its row
    dense_setting = next(r for r in settings if r["method"] == "dense")
    assert (dense_setting["n"], dense_setting["n_excluded"]) == ("0", "2")
    FIGURES["aggregations checked"] += 4


# -- invalid workflow configs ----------------------------------------------------------------------

WORKFLOW_FILES = ("Snakefile", "rules", "config", "profiles", "prunebench", "methods",
                  "baselines", "report", "environment.yml")


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workflow in a folder of its own: dry runs see no results and write nothing here."""
    d = tmp_path_factory.mktemp("workflow")
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, d / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, d / name)
    return d


def snakemake(workdir: Path, config: dict[str, Any], dry_run: bool) -> tuple[str | None, str]:
    """Load the Snakefile with `config` as --configfile (and dry-run it): (error or None, log)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
    )

    path = workdir / "config" / "fault-test.yaml"
    path.write_text(yaml.safe_dump(config))
    buf = io.StringIO()
    try:
        with redirect_stderr(buf), redirect_stdout(buf), SnakemakeApi(OutputSettings()) as api:
            wf = api.workflow(ResourceSettings(cores=1), ConfigSettings(configfiles=[path]),
                              snakefile=workdir / "Snakefile", workdir=workdir)
            if dry_run:
                wf.dag(DAGSettings()).execute_workflow(executor="dryrun")
            else:
                wf.list_rules()
    except Exception as e:  # noqa: BLE001 - the message is what is tested
        return f"{type(e).__name__}: {e}", buf.getvalue()
    return None, buf.getvalue()


def base_config() -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["grids"] = [{"name": "small", "datasets": ["digits"], "archs": ["conv2"],
                        "methods": ["dense", "random", "gumbel", "snip"],
                        "sparsities": [0.5, 0.9], "seeds": [0, 1]}]
    # config.yaml lists only what differs from the defaults: give every method both sections.
    from prunebench.registry import list_methods

    config["methods"] = {m: {"train": {}, "options": {}, **config["methods"].get(m, {})}
                         for m in list_methods()}
    return config


NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
BAD_TRAIN = {  # key -> values the schema or the engine must refuse
    "epochs": st.one_of(st.integers(max_value=-1), st.just(1.5), st.just("ten")),
    "batch_size": st.one_of(st.integers(max_value=0), st.just("big")),
    "optimizer": st.sampled_from(["lion", "SGD", ""]),
    "lr": st.one_of(st.floats(max_value=0.0, allow_nan=False), NON_FINITE, st.just("fast")),
    "momentum": st.one_of(st.floats(max_value=-1e-9, allow_nan=False), NON_FINITE),
    "weight_decay": st.one_of(st.floats(max_value=-1e-9, allow_nan=False), NON_FINITE),
    "schedule": st.sampled_from(["linear", "Cosine", ""]),
    "val_fraction": st.one_of(st.floats(min_value=1.0, allow_nan=False),
                              st.floats(max_value=-1e-9, allow_nan=False), NON_FINITE),
    "selection": st.sampled_from(["best", "test"]),
    "crop_padding": st.integers(max_value=-1),
    "flip": st.sampled_from(["yes", 1, "true"]),
    "eval_batch_size": st.integers(max_value=0),
    "device": st.sampled_from(["gpu", "cuda:x", "tpu", ""]),
}
def _known_names() -> set[str]:
    from prunebench.config import DATASETS
    from prunebench.models import ARCHS
    from prunebench.registry import list_methods

    return {*DATASETS, *ARCHS, *list_methods()}


KNOWN = _known_names()
NAMES = st.from_regex(r"[a-z][a-z0-9_]{2,8}", fullmatch=True).filter(lambda n: n not in KNOWN)


@st.composite
def invalid_configs(draw: st.DrawFn) -> tuple[str, dict[str, Any], list[str]]:
    """(what was broken, the config, fragments one of which the error must contain)."""
    config = base_config()
    block = config["grids"][0]
    kind = draw(st.sampled_from([
        "train value", "method train value", "unknown train key", "unknown top-level key",
        "grid list", "grid name", "sparsity", "seed", "missing grid key", "unknown method section",
        "unknown option", "option value", "resources", "data_roots", "no grids"]))
    if kind in ("train value", "method train value"):
        key = draw(st.sampled_from(sorted(BAD_TRAIN)))
        value = draw(BAD_TRAIN[key])
        section = (config["train"] if kind == "train value"
                   else config["methods"][draw(st.sampled_from(block["methods"]))]["train"])
        section[key] = value
        return f"{kind} {key}={value!r}", config, [key]
    if kind == "unknown train key":
        key = draw(NAMES.filter(lambda k: k not in BAD_TRAIN))
        config["train"][key] = 1
        return kind, config, [key]
    if kind == "unknown top-level key":
        key = draw(NAMES.filter(lambda k: k not in base_config()))
        config[key] = [0]
        return kind, config, [key]
    if kind == "grid list":
        key = draw(st.sampled_from(["datasets", "archs", "methods", "seeds"]))
        how = draw(st.sampled_from(["empty", "duplicate", "unknown"]))
        if how == "empty":
            block[key] = []
        elif how == "duplicate":
            block[key] = block[key] + block[key][:1]
        elif key == "seeds":
            block[key] = block[key] + [draw(st.sampled_from([-1, "one", 2.5]))]
        else:
            block[key] = block[key] + [draw(NAMES)]
        return f"{kind} {key} {how}", config, [key]
    if kind == "grid name":
        block["name"] = draw(st.sampled_from([5, None, ["a"]]))
        return kind, config, ["name"]
    if kind == "sparsity":
        value = draw(st.one_of(st.floats(min_value=1.0, allow_nan=False),
                               st.floats(max_value=-1e-9, allow_nan=False), NON_FINITE,
                               st.just(0.1234567), st.just("half")))
        block["sparsities"] = [0.5, value]
        return f"sparsity {value!r}", config, ["sparsities"]
    if kind == "seed":
        block["seeds"] = [draw(st.sampled_from([-3, 0.5, "0", True, None]))]
        return kind, config, ["seeds"]
    if kind == "missing grid key":
        key = draw(st.sampled_from(["datasets", "archs", "methods", "seeds"]))
        del block[key]
        return kind, config, [key]
    if kind == "unknown method section":
        name = draw(NAMES.filter(lambda n: n not in config["methods"]))
        config["methods"][name] = {"train": {}, "options": {}}
        return kind, config, [name]
    if kind == "unknown option":
        method = draw(st.sampled_from(["gumbel", "snip", "random"]))
        option = draw(NAMES.filter(lambda n: n not in config["methods"][method]["options"]))
        config["methods"][method]["options"][option] = 1
        return kind, config, [option]
    if kind == "option value":
        method, option, value = draw(st.sampled_from([
            ("gumbel", "tau", "hot"), ("gumbel", "tau", float("nan")),
            ("gumbel", "logit_lr", float("inf")), ("gumbel", "smart_rescale", "maybe"),
            ("snip", "samples_per_class", 2.5),
            ("random", "rescale", "perhaps"), ("snip", "score_batch_size", "many")]))
        config["methods"][method]["options"][option] = value
        return f"{kind} {method}.{option}={value!r}", config, [option]
    if kind == "resources":
        key = draw(st.sampled_from(["gpu", "cpus_per_task", "mem_mb", "runtime", "gpus"]))
        config["resources"]["train"][key] = -1 if key != "gpus" else 1
        return f"{kind} {key}", config, [key]
    if kind == "data_roots":
        if draw(st.booleans()):
            config["data_roots"]["mnist"] = "/data/mnist"
            return kind, config, ["mnist"]
        config["data_roots"]["cifar10"] = ""
        return kind, config, ["cifar10"]
    config.pop("grids")
    return kind, config, ["grids"]


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=invalid_configs())
def test_invalid_configs_are_rejected_naming_the_key(case, workflow_copy: Path) -> None:
    """Each generated config breaks one key; the workflow refuses it while loading (before any
    job can start) with a message naming that key."""
    what, config, fragments = case
    error, _ = snakemake(workflow_copy, config, dry_run=False)
    assert error is not None, f"accepted an invalid config ({what})"
    assert any(f in error for f in fragments), f"{what}: no {fragments} in: {error[:1500]}"
    FIGURES["invalid configs rejected"] += 1


NON_FINITE_SETTINGS = {  # each was accepted before this suite (NaN passes every JSON-schema bound)
    "train.lr": (lambda c: c["train"].update(lr=float("inf")), "lr"),
    "train.momentum": (lambda c: c["train"].update(momentum=float("nan")), "momentum"),
    "methods.gumbel.train.weight_decay": (
        lambda c: c["methods"]["gumbel"]["train"].update(weight_decay=float("inf")),
        "weight_decay"),
    "methods.gumbel.options.tau": (
        lambda c: c["methods"]["gumbel"]["options"].update(tau=float("nan")), "tau"),
    "methods.edgepopup.options.lr": (
        lambda c: c["methods"]["edgepopup"]["options"].update(lr=float("inf")), "lr"),
    "grids[0].sparsities": (lambda c: c["grids"][0].update(sparsities=[float("nan")]),
                            "sparsities"),
}


@pytest.mark.parametrize("key", list(NON_FINITE_SETTINGS))
def test_non_finite_settings_are_rejected(key: str, workflow_copy: Path) -> None:
    change, fragment = NON_FINITE_SETTINGS[key]
    config = base_config()
    config["grids"][0]["methods"].append("edgepopup")
    change(config)
    error, _ = snakemake(workflow_copy, config, dry_run=False)
    assert error is not None and fragment in error, f"{key}: {error}"
    FIGURES["invalid configs rejected"] += 1


SPARSITIES = st.floats(min_value=0.0, max_value=0.999, allow_nan=False).map(lambda s: round(s, 3))


@st.composite
def valid_configs(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """A random valid config and the number of train_run jobs its grid has."""
    from prunebench.registry import get_method

    config = base_config()
    methods = draw(st.lists(st.sampled_from(["dense", "random", "magnitude", "gumbel", "snip",
                                             "edgepopup", "reparam", "supermask"]),
                            min_size=1, max_size=4, unique=True))
    sparsities = draw(st.lists(SPARSITIES, min_size=1, max_size=3, unique=True))
    seeds = draw(st.lists(st.integers(0, 99), min_size=1, max_size=3, unique=True))
    archs = draw(st.lists(st.sampled_from(["conv2", "conv4", "conv6"]), min_size=1, max_size=2,
                          unique=True))
    config["grids"] = [{"datasets": ["digits"], "archs": archs, "methods": methods,
                        "sparsities": sparsities, "seeds": seeds}]
    config["train"] = draw(st.fixed_dictionaries({}, optional={
        "epochs": st.integers(0, 50), "lr": st.floats(1e-5, 1.0),
        "momentum": st.floats(0.0, 0.99), "schedule": st.sampled_from(["cosine", "constant"]),
        "flip": st.booleans(), "device": st.just("cpu")}))
    budgeted = 0
    for m in methods:
        cls = get_method(m)
        hp = cls.hparams_cls.from_dict(config["methods"][m]["options"], m)
        budgeted += cls(hp, None).is_budgeted()
    runs = len(archs) * len(seeds) * (budgeted * len(sparsities) + len(methods) - budgeted)
    return config, runs


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=valid_configs())
def test_valid_configs_always_dry_run(case, workflow_copy: Path) -> None:
    config, runs = case
    error, out = snakemake(workflow_copy, config, dry_run=True)
    assert error is None, error
    counts = re.findall(r"^train_run\s+(\d+)\s*$", out, flags=re.M)
    assert counts and int(counts[-1]) == runs, out[-2000:]
    FIGURES["valid configs dry-run"] += 1


def test_invalid_config_starts_no_job(workflow_copy: Path, tmp_path: Path) -> None:
    """The real command line, not a dry run: a bad key stops snakemake before any job."""
    workdir = tmp_path / "wf"
    shutil.copytree(workflow_copy, workdir)
    config = copy.deepcopy(base_config())
    config["methods"]["gumbel"]["options"]["tau"] = float("nan")
    (workdir / "config" / "bad.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(PYTHON).parent
    env = {**cli_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run([str(bin_dir / "snakemake"), "--configfile", "config/bad.yaml",
                          "--cores", "1"], cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode != 0
    assert "tau" in res.stderr and "nan" in res.stderr, res.stderr[-2000:]
    assert not (workdir / "results").exists()
    FIGURES["invalid configs rejected"] += 1


# -- the figures -----------------------------------------------------------------------------------

SUITE_START = time.monotonic()


def test_fault_summary(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Print and save the tallies (run last: the file's tests run in order)."""
    if FIGURES["kill plans completed"] < len(SETTINGS):
        pytest.skip("the kill tests did not all run (select the whole file for the summary)")
    summary = {
        "kills_survived": FIGURES["kills"],
        "preemptions_survived": FIGURES["preemptions"],
        "results_compared_with_uninterrupted_runs": FIGURES["results_compared"],
        "results_lost": FIGURES["results_lost"],
        "crafted_pickles_refused": FIGURES["crafted pickles refused"],
        "bad_checkpoints_ignored": FIGURES["bad checkpoints ignored"],
        "hostile_archive_reads_refused": FIGURES["hostile archive reads refused"],
        "corrupt_or_wrong_data_refused": FIGURES["corrupt or wrong data refused"],
        "invalid_configs_rejected": FIGURES["invalid configs rejected"],
        "valid_configs_dry_run": FIGURES["valid configs dry-run"],
        "diverged_runs_recorded_as_failed": FIGURES["diverged runs recorded as failed"],
        "aggregations_checked": FIGURES["aggregations checked"],
        "kill_points": {k[len("fault: "):]: v for k, v in sorted(FIGURES.items())
                        if k.startswith("fault: ")},
        "random_time_kills_too_late": FIGURES["random-time kills that came too late"],
        "fault_seed": FAULT_SEED,
        "suite_seconds": round(time.monotonic() - SUITE_START, 1),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
    }
    path = Path(os.environ.get("PRUNEBENCH_FAULT_SUMMARY")
                or tmp_path_factory.getbasetemp() / "fault_summary.json")
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nfault summary ({path}):\n{json.dumps(summary, indent=2)}")
    assert summary["kills_survived"] >= 20
    assert summary["results_lost"] == 0
