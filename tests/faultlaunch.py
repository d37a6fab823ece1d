"""Fault injection for the tests: runs `python -m prunebench ...` in a child process that kills
(or signals) itself at a chosen point, and the test-side helpers that drive and check such runs.
Production code has no test hooks: the points are monkeypatched here, in the child only.

Server mode (no arguments): import the engine once, then for every JSON request on stdin fork a
child that runs `prunebench.cli.main(argv)` with the requested faults, and answer one JSON line
`{"rc": exit code or -signal}`. Forking a pre-imported process skips the ~4 CPU-seconds of
`import torch, timm` per attempt; each attempt is still its own process, killed for real.
Request: {"argv": [...], "faults": [...], "log": path, "kill_after": seconds or null}.

One-shot mode: `python tests/faultlaunch.py '<faults JSON>' run --dataset ...` (no fork).

A fault is a dict with `at` and `action` (kill = SIGKILL, term = SIGTERM, usr1 = SIGUSR1,
enospc = the write fails with "No space left on device", as on a full disk):
  {"at": "step", "n": N}        before the N-th training step of this process
  {"at": "write", "file": F, "n": N, "when": W}
                                 the N-th atomic write of file name F in this process, where W is
                                 "mid" (temp file half written), "before_rename" (temp complete
                                 and synced) or "after_rename" (renamed, temp folder not removed)
  {"at": "extract"}             after training, before the network is folded and measured
A setting is {"at": "set", "name": "module.CONSTANT", "value": v}: set before the run starts.

Test side (imported by tests/test_resume.py, test_aggregate.py, test_data_errors.py, ...):
`Launcher` (the `launcher` fixture in conftest.py), the runs under fault (`SETTINGS`,
`run_args`), what a run folder holds (`outcome`), the checks after a kill (`check_interrupted`,
`check_finished`), crafted pickles (`Payload`) and the fault tallies (`FIGURES`, reported by
`report_tallies` at the end of a session that ran every kill plan).
"""
from __future__ import annotations

import csv
import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "usr1": signal.SIGUSR1}


def _fire(fault: dict[str, Any]) -> None:
    print(f"faultlaunch: {fault['action']} at {fault}", file=sys.stderr, flush=True)
    if fault["action"] == "enospc":  # the disk fills up: the write fails as the kernel's would
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), SIGNALS[fault["action"]])


def install(faults: list[dict[str, Any]]) -> None:
    """Monkeypatch the engine (in this process only) so that each fault fires at its point."""
    import prunebench.fileio as fileio
    import prunebench.training.run as run
    import prunebench.training.train as train

    steps = [f for f in faults if f["at"] == "step"]
    writes = [f for f in faults if f["at"] == "write"]
    extracts = [f for f in faults if f["at"] == "extract"]
    unknown = [f for f in faults if f["at"] not in ("step", "write", "extract", "set")]
    if unknown:
        raise ValueError(f"unknown fault point(s): {unknown}")
    for f in faults:
        if f["at"] == "set":
            module, name = f["name"].rsplit(".", 1)
            setattr(importlib.import_module(module), name, f["value"])

    if steps:
        real_set_lr = train.Trainer._set_lr
        count = Counter()

        def set_lr(self: Any, *args: Any) -> float:  # called once before each training step
            count["step"] += 1
            for f in steps:
                if f["n"] == count["step"]:
                    _fire(f)
            return real_set_lr(self, *args)

        train.Trainer._set_lr = set_lr

    if writes:
        real_atomic_write = fileio.atomic_write
        real_replace = os.replace
        count = Counter()

        def atomic_write(path: Any, write: Any) -> None:
            name = Path(path).name
            count[name] += 1
            due = [f for f in writes if f["file"] == name and f["n"] == count[name]]
            if not due:
                return real_atomic_write(path, write)
            f = due[0]

            def faulty(tmp: Path) -> None:
                write(tmp)
                if f["when"] == "mid":
                    data = tmp.read_bytes()
                    tmp.write_bytes(data[: len(data) // 2])
                    _fire(f)
                elif f["when"] == "before_rename":
                    _fire(f)
                elif f["when"] == "after_rename":
                    def replace(src: Any, dst: Any) -> None:
                        real_replace(src, dst)
                        _fire(f)
                    fileio.os.replace = replace  # only this call: the process ends in it
                else:
                    raise ValueError(f"unknown write point {f['when']!r}")

            return real_atomic_write(path, faulty)

        fileio.atomic_write = atomic_write

    if extracts:
        real_fold = run.fold

        def fold(model: Any) -> None:
            for f in extracts:
                _fire(f)
            real_fold(model)

        run.fold = fold


def run_cli(argv: list[str], faults: list[dict[str, Any]]) -> int:
    from prunebench.cli import main

    install(faults)
    return main(argv)


def preload() -> None:
    """Everything a run imports, imported before forking (no tensor work: no threads start)."""
    import prunebench.baselines  # noqa: F401
    import prunebench.cli  # noqa: F401
    import prunebench.methods  # noqa: F401
    import prunebench.training.run  # noqa: F401


def _child(request: dict[str, Any]) -> None:
    """In the forked child: redirect output to the log, run, exit without returning."""
    code = 1
    try:
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)
        code = run_cli(request["argv"], request.get("faults", []))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - a crash is reported as exit 1 with its traceback
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, kill_after: float | None) -> int:
    deadline = None if kill_after is None else time.monotonic() + kill_after
    while True:
        done, status = os.waitpid(pid, os.WNOHANG if deadline else 0)
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline and time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = None
        time.sleep(0.01)


def serve() -> None:
    preload()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        rc = _wait(pid, request.get("kill_after"))
        print(json.dumps({"rc": rc, "pid": pid}), flush=True)


# -- test side: the launcher ---------------------------------------------------------------------

FAULT_SEED = int(os.environ.get("PRUNEBENCH_FAULT_SEED", "7"))
KILLED, PREEMPTED = -signal.SIGKILL, 75
# Timing and provenance fields: not part of a result (others may commit while the suite runs).
VOLATILE = {"train_seconds", "wall_seconds", "run_dir", "git_commit"}
FIGURES: Counter[str] = Counter()  # fault tallies over the session, see report_tallies


class Launcher:
    """This file in server mode: one fresh (forked) process per attempt."""

    def __init__(self) -> None:
        from conftest import cli_env

        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=REPO,
                                     env=cli_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline()
        assert "ready" in ready, f"fault launcher did not start: {ready!r}"

    def attempt(self, argv: list[str], log: Path, faults: list[dict[str, Any]] | None = None,
                kill_after: float | None = None) -> int:
        """Run `prunebench argv` once with `faults`, its output appended to `log`: exit code."""
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


# -- test side: the runs under fault ---------------------------------------------------------------

# digits, conv2, seed 3, a few epochs; (method, sparsity, overrides). Chosen settings for these
# methods; every other registered method (a new file in methods/ or baselines/) runs at 0.8 when
# it has a budget, with its defaults and 2 epochs, so the kill plans cover it with no edit.
CHOSEN: dict[str, tuple[str, str | None, list[str]]] = {
    "dense": ("dense", None, ["epochs=3", "selection=val"]),
    "random": ("random", "0.5", ["epochs=3"]),
    "magnitude_ft": ("magnitude_ft", "0.8", ["epochs=2", "method.ft_epochs=1"]),
    "gumbel": ("gumbel", None, ["epochs=2"]),
    "reparam": ("reparam", "0.8", ["epochs=2"]),
    "edgepopup": ("edgepopup", "0.5", ["epochs=2"]),
    "snip": ("snip", "0.8", ["epochs=2"]),
    "supermask": ("supermask", None, ["epochs=2"]),
}


def _settings() -> dict[str, tuple[str, str | None, list[str]]]:
    from prunebench.plan.catalogue import method_catalogue

    out = dict(CHOSEN)
    for name, spec in method_catalogue().items():
        if name not in out:
            budgeted = spec.is_budgeted({}, f"method {name}")
            out[name] = (name, "0.8" if budgeted else None, ["epochs=2"])
    return out


SETTINGS = _settings()
EPOCHS = {"dense": 3, "random": 3, "magnitude_ft": 3}  # all phases; the others 2
BATCH = 32  # the digits recipe


def run_args(setting: str, data_dir: Path, run_dir: Path | None = None,
             out: Path | None = None, extra: tuple[str, ...] = (), seed: int = 3) -> list[str]:
    """`prunebench` arguments of a setting's run, into `run_dir` or under `out`."""
    method, sparsity, overrides = SETTINGS[setting]
    argv = ["run", "--dataset", "digits", "--arch", "conv2", "--method", method,
            "--seed", str(seed), *overrides, *extra, f"data_dir={data_dir}", "device=cpu",
            "checkpoint_every_s=0"]  # a checkpoint every epoch: the kill plans count them
    if sparsity is not None:
        argv += ["--sparsity", sparsity]
    return argv + (["--run-dir", str(run_dir)] if run_dir else ["--out", str(out)])


def log_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


class References:
    """`reference(setting)`: the outcome of an uninterrupted run (computed once), and
    `reference.seconds[setting]`: its wall time, to aim the random-time kills."""

    def __init__(self, launcher: Launcher, data_dir: Path, root: Path) -> None:
        self.launcher, self.data_dir, self.root = launcher, data_dir, root
        self.cache: dict[str, dict[str, Any]] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, setting: str) -> dict[str, Any]:
        if setting not in self.cache:
            d, log = self.root / setting, self.root / f"{setting}.log"
            start = time.monotonic()
            rc = self.launcher.attempt(run_args(setting, self.data_dir, d), log)
            self.seconds[setting] = time.monotonic() - start
            assert rc == 0, log_text(log)[-3000:]
            self.cache[setting] = outcome(d)
        return self.cache[setting]


def steps_per_epoch(data_dir: Path) -> int:
    import torch

    manifest = json.loads((data_dir / "digits.json").read_text())
    val = torch.load(data_dir / "digits.pt", weights_only=True)["val_idx"]
    return (manifest["num_train"] - len(val)) // BATCH


def steps_left(run_dir: Path, setting: str, per_epoch: int) -> int:
    """Training steps a rerun still has to do, read from the run's checkpoint."""
    import torch

    total = EPOCHS.get(setting, 2) * per_epoch
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.exists():
        return total
    ckpt = torch.load(ckpt_path, weights_only=True)
    mid = ckpt["mid_epoch"]
    return total - ckpt["loop"]["global_epoch"] * per_epoch - (mid["step"] if mid else 0)


# -- test side: what a run folder holds ------------------------------------------------------------

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


def check_interrupted(run_dir: Path, ref: dict[str, Any]) -> None:
    """What a killed run leaves never looks finished unless it is, and is never half-written."""
    import torch

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
    """A finished run holds exactly the uninterrupted run's result and nothing left over."""
    got = outcome(run_dir)
    lost = got != ref
    FIGURES["results_compared"] += 1
    FIGURES["results_lost"] += lost
    assert not lost, f"{run_dir}: result differs from the uninterrupted run"
    assert not (run_dir / "checkpoint.pt").exists()
    assert not (run_dir / "failed.json").exists()
    assert temp_folders(run_dir) == []


# -- test side: files that run code when loaded unsafely -------------------------------------------

class Payload:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def crafted(path: Path, marker: Path, form: str) -> Path:
    """A file that runs code when loaded by plain pickle / torch.load(weights_only=False)."""
    import pickle

    import torch

    if form == "pickle":
        path.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=2))
    else:
        torch.save({"model": Payload(marker), "train_x": torch.zeros(1)}, path)
    return path


def proves_live(form: str, tmp_path: Path) -> None:
    """Control: the crafted file really does run code when loaded unsafely."""
    import pickle

    import torch

    control = tmp_path / "control-marker"
    path = crafted(tmp_path / f"control-{form}.pt", control, form)
    if form == "pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert control.read_text() == "pwned"


def cli_refuses(capsys: Any, argv: list[str], *fragments: str) -> str:
    """`python -m prunebench argv` in-process (pytest's capsys): exit 1 and one error line on
    stderr holding every fragment."""
    from prunebench.cli import main

    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("prunebench: error:"), err
    for fragment in fragments:
        assert fragment in err, err
    return err


# -- test side: the tallies ------------------------------------------------------------------------

SESSION_START = time.monotonic()


def report_tallies(write_line: Any) -> None:
    """At the end of a session that ran every kill plan: print the fault tallies (the figures
    of docs/reliability.md) and save them to $PRUNEBENCH_FAULT_SUMMARY when it is set."""
    if FIGURES["kill plans completed"] < len(SETTINGS):
        return
    import torch

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
        "out_of_range_values_refused": FIGURES["out-of-range values refused"],
        "hostile_configs_refused": FIGURES["hostile configs refused"],
        "finished_runs_kept_from_replacement": FIGURES["finished runs kept from replacement"],
        "dense_runs_of_another_setting_refused": FIGURES["dense runs of another setting refused"],
        "tampered_saved_networks_refused": FIGURES["tampered saved networks refused"],
        "disk_full_writes_survived": FIGURES["disk-full writes survived"],
        "aggregations_checked": FIGURES["aggregations checked"],
        "kill_points": {k[len("fault: "):]: v for k, v in sorted(FIGURES.items())
                        if k.startswith("fault: ")},
        "random_time_kills_too_late": FIGURES["random-time kills that came too late"],
        "fault_seed": FAULT_SEED,
        "session_seconds": round(time.monotonic() - SESSION_START, 1),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
    }
    text = json.dumps(summary, indent=2)
    if os.environ.get("PRUNEBENCH_FAULT_SUMMARY"):
        Path(os.environ["PRUNEBENCH_FAULT_SUMMARY"]).write_text(text + "\n")
    write_line("fault summary:")
    for line in text.splitlines():
        write_line(line)


if __name__ == "__main__":
    if len(sys.argv) == 1:
        serve()
    else:
        sys.exit(run_cli(sys.argv[2:], json.loads(sys.argv[1])))
