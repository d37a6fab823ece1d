"""Disk full and other write errors (issue 22, item 11): one line naming the file and the cause
(the errno), never a raw traceback (before: `RuntimeError: [enforce fail at
inline_container.cc:672] . unexpected pos ...` naming neither), and never a half-written file that
looks finished; the same command with room again finishes as the uninterrupted run.

The full disk is a file-size limit (RLIMIT_FSIZE, which any user may lower for a child process):
every write past it fails with EFBIG the way a full disk fails with ENOSPC, at a chosen size."""
from __future__ import annotations

import errno
import io
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli_env
from faultlaunch import FIGURES, check_finished, log_text, run_args, temp_folders

from prunebench import fileio
from prunebench.errors import PrunebenchError


def test_a_failed_write_names_the_file_and_the_errno(tmp_path: Path) -> None:
    def half_then_full(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "metrics.json"
    with pytest.raises(PrunebenchError) as e:
        fileio.atomic_write(target, half_then_full)
    assert str(e.value) == f"cannot write {target}: No space left on device (ENOSPC)"
    assert not target.exists() and temp_folders(tmp_path) == []


def limited(limit: int) -> None:
    """In the child: writes past `limit` bytes of any file fail with EFBIG (not a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


class FullDisk(io.FileIO):
    """A file on a disk with `room` bytes left: a write past them fails as the kernel's does."""

    room = 50_000

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.mark.parametrize("room", [0, 600, 50_000])
def test_torch_save_keeps_the_errno(room: int, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save's writer hides the OSError behind `RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos ...` when the disk fills mid-record; the suite
    brings the errno back."""
    monkeypatch.setattr(FullDisk, "room", room)
    monkeypatch.setattr(fileio, "open", lambda path, mode: FullDisk(path, mode), raising=False)
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(PrunebenchError) as e:
        fileio.save_torch(target, {"w": torch.zeros(100_000)})
    assert str(e.value) == f"cannot write {target}: No space left on device (ENOSPC)"
    assert not target.exists() and temp_folders(tmp_path) == []


@pytest.mark.slow
def test_torch_save_on_a_full_disk_is_one_line(tmp_path: Path) -> None:
    """torch.save to a path hides the errno (its C++ writer raises a RuntimeError); the suite
    writes through a Python file object, which keeps it."""
    target = tmp_path / "checkpoint.pt"
    code = ("from prunebench import fileio; import torch; "
            f"fileio.save_torch({str(target)!r}, {{'w': torch.zeros(100000)}})")
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True,
                         text=True, timeout=300, preexec_fn=lambda: limited(50_000))
    assert out.returncode == 1 and "PrunebenchError" in out.stderr, out.stderr
    assert f"cannot write {target}: File too large (EFBIG)" in out.stderr, out.stderr
    assert not target.exists() and temp_folders(tmp_path) == []


def check_stopped(run_dir: Path, log_tail: str, file: str, cause: str) -> None:
    """One error line naming the file and the cause, no traceback, nothing looking finished."""
    lines = log_tail.strip().splitlines()
    assert "Traceback" not in log_tail and "Logging error" not in log_tail, log_tail
    assert lines[-1] == f"prunebench: error: cannot write {run_dir / file}: {cause}", log_tail
    assert not (run_dir / "metrics.json").exists() and temp_folders(run_dir) == []


# Sizes past which a digits conv2 dense run's writes fail: config.json (~1 KB) and the first
# checkpoint (~4 MB; the log stays under 1 KB).
LIMITS = {300: "config.json", 3_000: "checkpoint.pt"}


@pytest.mark.slow
@pytest.mark.parametrize("limit", list(LIMITS))
def test_run_past_a_file_size_limit_stops_in_one_line_and_resumes(
        limit: int, digits_dir: Path, tmp_path: Path, reference) -> None:
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "prunebench", *run_args("dense", digits_dir, run_dir)]
    full = subprocess.run(argv, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=600, preexec_fn=lambda: limited(limit))
    assert full.returncode == 1, full.stderr[-3000:]
    check_stopped(run_dir, full.stderr, LIMITS[limit], "File too large (EFBIG)")
    again = subprocess.run(argv, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    check_finished(run_dir, reference("dense"))
    FIGURES["disk-full writes survived"] += 1


# Every file a run writes, in the order it writes them (the checkpoint twice: a later one fails
# after an earlier one succeeded).
WRITES = [("config.json", 1), ("checkpoint.pt", 1), ("checkpoint.pt", 2),
          ("network.safetensors", 1), ("masks.safetensors", 1), ("history.csv", 1),
          ("layers.csv", 1), ("metrics.json", 1)]


@pytest.mark.slow
@pytest.mark.parametrize("file,n", WRITES)
def test_disk_full_at_every_write_stops_in_one_line_and_resumes(
        file: str, n: int, launcher, digits_dir: Path, tmp_path: Path, reference) -> None:
    """The disk fills up inside the n-th write of `file` (its temp file half written): the run
    stops with exit 1 and one line naming the file and ENOSPC; the rerun finishes equal to
    the uninterrupted run."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    argv = run_args("dense", digits_dir, run_dir)
    fault = {"at": "write", "file": file, "n": n, "when": "mid", "action": "enospc"}
    assert launcher.attempt(argv, log, [fault]) == 1, log_text(log)[-3000:]
    check_stopped(run_dir, log_text(log).replace(f"faultlaunch: enospc at {fault}\n", ""),
                  file, "No space left on device (ENOSPC)")
    assert launcher.attempt(argv, log) == 0, log_text(log)[-3000:]
    check_finished(run_dir, reference("dense"))
    FIGURES["disk-full writes survived"] += 1
