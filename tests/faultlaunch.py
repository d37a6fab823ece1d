"""Fault-injection launcher for tests/test_faults.py: runs `python -m prunebench ...` in a child
process that kills (or signals) itself at a chosen point. Production code has no test hooks: the
points are monkeypatched here, in the child only.

Server mode (no arguments): import the engine once, then for every JSON request on stdin fork a
child that runs `prunebench.cli.main(argv)` with the requested faults, and answer one JSON line
`{"rc": exit code or -signal}`. Forking a pre-imported process skips the ~4 CPU-seconds of
`import torch, timm` per attempt; each attempt is still its own process, killed for real.
Request: {"argv": [...], "faults": [...], "log": path, "kill_after": seconds or null}.

One-shot mode: `python tests/faultlaunch.py '<faults JSON>' run --dataset ...` (no fork).

A fault is a dict with `at` and `action` (kill = SIGKILL, term = SIGTERM, usr1 = SIGUSR1):
  {"at": "step", "n": N}        before the N-th training step of this process
  {"at": "write", "file": F, "n": N, "when": W}
                                 the N-th atomic write of file name F in this process, where W is
                                 "mid" (temp file half written), "before_rename" (temp complete
                                 and synced) or "after_rename" (renamed, temp folder not removed)
  {"at": "extract"}             after training, before the network is folded and measured
A setting is {"at": "set", "name": "module.CONSTANT", "value": v}: set before the run starts.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
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
    os.kill(os.getpid(), SIGNALS[fault["action"]])


def install(faults: list[dict[str, Any]]) -> None:
    """Monkeypatch the engine (in this process only) so that each fault fires at its point."""
    import prunebench.fileio as fileio
    import prunebench.run as run
    import prunebench.train as train

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
    import baselines  # noqa: F401
    import methods  # noqa: F401
    import prunebench.cli  # noqa: F401
    import prunebench.run  # noqa: F401


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


if __name__ == "__main__":
    if len(sys.argv) == 1:
        serve()
    else:
        sys.exit(run_cli(sys.argv[2:], json.loads(sys.argv[1])))
