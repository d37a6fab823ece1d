"""Kill-and-resume: runs killed (SIGKILL) or preempted (SIGTERM/SIGUSR1) at precise points, and at
random ones, again and again, end with exactly the result of an uninterrupted run (CPU, same
seed); outputs are atomic; SIGTERM saves a mid-epoch checkpoint; a checkpoint that cannot be
used is ignored, never executed; a diverged run keeps its last good checkpoint.

Kill points are injected by tests/faultlaunch.py, which monkeypatches the engine in the child
process only: every kill lands where the test says (no timers), except the one random-time kill
per plan that probes the points nobody named. The tallies are printed at the end of a session
that runs the whole fault set (see docs/reliability.md).
"""
from __future__ import annotations

import fcntl
import json
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import PYTHON, REPO, cli_env
from faultlaunch import (
    EPOCHS,
    FAULT_SEED,
    FIGURES,
    KILLED,
    PREEMPTED,
    SETTINGS,
    Launcher,
    check_finished,
    check_interrupted,
    crafted,
    log_text,
    outcome,
    proves_live,
    read_csv,
    run_args,
    steps_left,
    steps_per_epoch,
    temp_folders,
)

from prunebench.cli import main
from prunebench.data.prepared import load_prepared
from prunebench.errors import PrunebenchError
from prunebench.reporting.aggregate import SUMMARY, SUMMARY_BY_SETTING

pytestmark = pytest.mark.slow

LAUNCHER = Path(__file__).resolve().parent / "faultlaunch.py"


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
        if kill_after is not None and (rc == 0 or (run_dir / "metrics.json").exists()):
            FIGURES["random-time kills that came too late"] += 1  # the run had finished
            check_interrupted(run_dir, ref)
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


def test_kill_plans_deal_every_fault_kind() -> None:
    """The plans (fixed by the fault seed) place every kind of fault at least once, 32 in all."""
    dealt = [kind for early, late in PLANS.values() for kind in (*early, late)]
    assert set(dealt) == {*EARLY, *LATE} and len(dealt) == 4 * len(SETTINGS)


# -- kills and preemptions at named points ---------------------------------------------------------

def kill_points(per_epoch: int) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Named points: (setting, faults). Each kills the run once (SIGKILL)."""
    return {
        "after the first checkpoint": ("dense", [{"at": "write", "file": "checkpoint.pt", "n": 1,
                                                  "when": "after_rename", "action": "kill"}]),
        "mid second epoch": ("dense", [{"at": "step", "n": per_epoch + per_epoch // 2,
                                        "action": "kill"}]),
        "in the last epoch": ("random", [{"at": "step", "n": 2 * per_epoch + 3,
                                          "action": "kill"}]),
        "after metrics.json": ("random", [{"at": "write", "file": "metrics.json", "n": 1,
                                           "when": "after_rename", "action": "kill"}]),
    }


@pytest.mark.parametrize("point", ["after the first checkpoint", "mid second epoch",
                                   "in the last epoch", "after metrics.json"])
def test_sigkill_then_resume_matches_uninterrupted(point: str, launcher: Launcher, reference,
                                                   digits_dir: Path, tmp_path: Path) -> None:
    """SIGKILL at a named point: a metrics.json left behind is the finished result; the rerun
    ends with the uninterrupted run's metrics and history and no checkpoint."""
    setting, faults = kill_points(steps_per_epoch(digits_dir))[point]
    ref = reference(setting)
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    argv = run_args(setting, digits_dir, run_dir)
    assert launcher.attempt(argv, log, faults) == KILLED, log_text(log)[-3000:]
    assert (run_dir / "metrics.json").exists() == (point == "after metrics.json")
    check_interrupted(run_dir, ref)
    assert launcher.attempt(argv, log) == 0, log_text(log)[-3000:]
    got = outcome(run_dir)
    assert got["metrics"] == ref["metrics"]
    assert got["history"] == ref["history"]
    assert not (run_dir / "checkpoint.pt").exists()


def test_sigterm_saves_mid_epoch_checkpoint_and_resumes_exactly(
        launcher: Launcher, reference, digits_dir: Path, tmp_path: Path) -> None:
    ref = reference("dense")
    per_epoch = steps_per_epoch(digits_dir)
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    argv = run_args("dense", digits_dir, run_dir)
    term = [{"at": "step", "n": per_epoch + 7, "action": "term"}]
    assert launcher.attempt(argv, log, term) == PREEMPTED, log_text(log)[-3000:]
    assert "preempted" in log_text(log)
    assert not (run_dir / "metrics.json").exists()
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["loop"]["global_epoch"] == 1 and ckpt["mid_epoch"]["step"] > 0
    assert launcher.attempt(argv, log) == 0, log_text(log)[-3000:]
    got = outcome(run_dir)
    assert got["metrics"] == ref["metrics"]
    assert got["history"] == ref["history"]


def test_mid_epoch_checkpoint_from_another_device_type_resumes(
        launcher: Launcher, digits_dir: Path, tmp_path: Path) -> None:
    """A mid-epoch checkpoint written on CUDA (a 16-byte Philox generator state) resumed on the
    CPU finishes, saying its random streams restarted; it crashed every retry with "Expected a
    CPUGeneratorImplState" when the saved state was handed to a CPU generator."""
    per_epoch = steps_per_epoch(digits_dir)
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    argv = run_args("dense", digits_dir, run_dir)
    term = [{"at": "step", "n": per_epoch + 7, "action": "term"}]
    assert launcher.attempt(argv, log, term) == PREEMPTED, log_text(log)[-3000:]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["mid_epoch"]["gen_state"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA Philox state
    ckpt["mid_epoch"]["gen_device"] = "cuda"
    ckpt["mid_epoch"]["cuda_rng"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(ckpt, run_dir / "checkpoint.pt")
    assert launcher.attempt(argv, log) == 0, log_text(log)[-3000:]
    assert "saved on cuda, resumed on cpu" in log_text(log)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == EPOCHS["dense"]


def test_finished_run_is_skipped_and_changed_config_refused(launcher: Launcher,
                                                             digits_dir: Path,
                                                             tmp_path: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    argv = run_args("dense", digits_dir, run_dir, extra=("epochs=1",))
    assert launcher.attempt(argv, log) == 0, log_text(log)[-3000:]
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    assert launcher.attempt(argv, log) == 0
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp
    changed, log = run_args("dense", digits_dir, run_dir, extra=("epochs=2",)), tmp_path / "2.log"
    assert launcher.attempt(changed, log) == 1
    assert "different config" in log_text(log) and "train_epochs" in log_text(log)
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp


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
        wait = {"at": "set", "name": "prunebench.training.run.LOCK_WAIT_SECONDS", "value": 2.0}
        start = time.monotonic()
        rc = launcher.attempt(run_args("dense", digits_dir, run_dir), log, [wait])
        assert time.monotonic() - start >= 2.0  # it waited for the lock first
    err = log_text(log).strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "in use by another prunebench process (pid 12345 on elsewhere)" in err
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


# -- checkpoints that are not what they claim ------------------------------------------------------

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


# -- every method on timm's test models ------------------------------------------------------------

def _timm_args(method: str, arch: str, data_dir: Path, run_dir: Path) -> list[str]:
    """A two-epoch run of `method` on a timm test model (32x32 digit images, 4 steps an epoch),
    with a budget of 0.5 when it has one; magnitude_ft fine-tunes one epoch more."""
    from prunebench.training.registry import get_method

    cls = get_method(method)
    argv = ["run", "--dataset", "imagefolder", "--arch", arch, "--method", method, "--seed", "0",
            "--run-dir", str(run_dir), "epochs=2", "batch_size=32", f"data_dir={data_dir}",
            "device=cpu"]
    if method == "magnitude_ft":
        argv.append("method.ft_epochs=1")
    return argv + (["--sparsity", "0.5"] if cls(cls.hparams_cls(), None).is_budgeted() else [])


def _timm_cases() -> list[tuple[str, str]]:
    from conftest import TIMM_TEST_ARCHS

    from prunebench.training.registry import list_methods

    return [(m, a) for a in TIMM_TEST_ARCHS for m in list_methods()]


@pytest.mark.parametrize(("method", "arch"), _timm_cases())
def test_timm_model_killed_mid_epoch_resumes_to_the_uninterrupted_result(
        method: str, arch: str, launcher: Launcher, small_images_dir: Path,
        tmp_path: Path) -> None:
    """SIGTERM mid-epoch (a mid-epoch checkpoint), then SIGKILL in the second epoch (back to the
    first epoch's checkpoint), then the rerun: exactly the uninterrupted run's metrics, history
    and layers, for every method on every timm test model."""
    reference, log = tmp_path / "reference", tmp_path / "run.log"
    assert launcher.attempt(_timm_args(method, arch, small_images_dir, reference), log) == 0, \
        log_text(log)[-3000:]
    run_dir = tmp_path / "run"
    argv = _timm_args(method, arch, small_images_dir, run_dir)
    term = [{"at": "step", "n": 2, "action": "term"}]  # epoch 1, step 2 of 4
    assert launcher.attempt(argv, log, term) == PREEMPTED, log_text(log)[-3000:]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["mid_epoch"] is not None
    kill = [{"at": "step", "n": 4, "action": "kill"}]  # resumed at step 3: epoch 2, step 2
    assert launcher.attempt(argv, log, kill) == KILLED, log_text(log)[-3000:]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["loop"]["global_epoch"] == 1 and ckpt["mid_epoch"] is None
    assert launcher.attempt(argv, log) == 0, log_text(log)[-3000:]
    FIGURES["kills"] += 1
    FIGURES["preemptions"] += 1
    assert outcome(run_dir) == outcome(reference)
    assert "resumed from" in (run_dir / "log.txt").read_text()
