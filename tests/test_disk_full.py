"""Disk full and other write errors (issue 22, item 11): one line naming the file and the cause
(the errno), never a raw traceback (before: `RuntimeError: [enforce fail at
inline_container.cc:672] . unexpected pos ...` naming neither), and never a half-written file that
looks finished; the same command with room again finishes as the uninterrupted run.

The full disk is a file-size limit (RLIMIT_FSIZE, which any user may lower for a child process):
every write past it fails with EFBIG the way a full disk fails with ENOSPC, at a chosen size."""
from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli_env
from faultlaunch import FIGURES, check_finished, run_args, temp_folders

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
    assert torch.zeros(1) is not None


# Sizes at which a digits conv2 dense run's writes fail: config.json, the log, the first
# checkpoint, a later checkpoint or the network (checkpoints are ~60 KB).
LIMITS = [300, 3_000, 30_000, 100_000]


@pytest.mark.slow
@pytest.mark.parametrize("limit", LIMITS)
def test_run_on_a_full_disk_stops_in_one_line_and_resumes(limit: int, digits_dir: Path,
                                                          tmp_path: Path, reference) -> None:
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "prunebench", *run_args("dense", digits_dir, run_dir)]
    full = subprocess.run(argv, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=600, preexec_fn=lambda: limited(limit))
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr and "Logging error" not in full.stderr, full.stderr
    assert lines[-1].startswith(f"prunebench: error: cannot write {run_dir}"), full.stderr
    assert lines[-1].endswith("File too large (EFBIG)"), full.stderr
    assert not (run_dir / "metrics.json").exists() and temp_folders(run_dir) == []
    again = subprocess.run(argv, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    check_finished(run_dir, reference("dense"))
    FIGURES["disk-full sizes survived"] += 1
