"""tests/ci_skips.py: with CI=true, a skip for missing TeX, SLURM or the CIFAR-10 copy fails
the run (setup-time skipif and in-test skip alike); other skips and every skip outside CI stay
skips."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SAMPLE = '''
import pytest

@pytest.mark.skipif(True, reason="latexmk not installed")
def test_tex_at_setup():
    pass

def test_slurm_in_call():
    pytest.skip("SLURM is not installed (slurmctld missing)")

def test_cifar_copy():
    pytest.skip("the shared CIFAR-10 JPEG copy is absent")

def test_cuda():
    pytest.skip("needs a CUDA device")

@pytest.mark.xfail(reason="TeX bug", run=False)
def test_expected_failure():
    pass
'''


def _run(tmp_path: Path, ci: str | None) -> str:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(TESTS) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "ci_skips", "-p",
                          "no:cacheprovider", "-q", "-rA", "-c", os.devnull,
                          "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return res.stdout + res.stderr


def test_in_ci_a_skip_for_tex_slurm_or_the_cifar_copy_fails(tmp_path: Path) -> None:
    out = _run(tmp_path, "TRUE")  # CI's value, in any case
    assert "2 failed, 1 skipped, 1 xfailed, 1 error" in out, out  # setup-time: an error
    assert "ERROR test_sample.py::test_tex_at_setup" in out, out
    for name in ("test_slurm_in_call", "test_cifar_copy"):
        assert f"FAILED test_sample.py::{name}" in out, out
    assert "CI=true: this test must run in CI, but it skipped" in out
    assert "SKIPPED [1] test_sample.py" in out and "needs a CUDA device" in out


def test_outside_ci_they_stay_skips(tmp_path: Path) -> None:
    assert "4 skipped, 1 xfailed" in _run(tmp_path, "false")
