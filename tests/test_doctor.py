"""`prunebench doctor`: the report of what a run would meet, and exit 1 with a one-line reason
when it would fail (on this CPU-only machine, and with a fake CUDA device)."""
from __future__ import annotations

import pytest
import torch

from prunebench.cli import main
from prunebench.training import cuda, gpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["doctor", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_gpu_run_that_would_fail_exits_1_saying_why(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    rc, out, err = _run(capsys, "--no-compile", "--no-probe")
    assert rc == 1
    assert f"torch {torch.__version__}" in out and "CUDA: not usable" in out
    assert err.strip() == ("prunebench: error: a GPU run would fail: no NVIDIA GPU is visible "
                           "(CUDA_VISIBLE_DEVICES='', /proc/driver/nvidia/gpus lists none)")


def test_a_fake_gpu_is_reported_with_its_memory_and_bf16(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv(cuda.FORCE_ENV, raising=False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cuda, "driver_versions", lambda: ("580.65.06", 13000))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Fake H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (9, 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *_: (70 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    rc, out, _ = _run(capsys, "--no-compile", "--no-probe")
    assert rc == 0, out
    assert "NVIDIA driver: 580.65.06, runs CUDA up to 13.0" in out
    assert ("cuda:0 Fake H100, compute capability 9.0, 70.0 of 80.0 GiB free, bf16 native"
            in out)
    assert "precision bf16" in out and "cuDNN autotuning True" in out
    assert gpus.visible_devices() == ["0"]


@pytest.mark.slow
def test_cpu_probe_trains_one_step_of_each_arch(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "--device", "cpu", "--no-compile")
    assert rc == 0, out
    for arch in ("conv4", "resnet18"):
        (line,) = [ln for ln in out.splitlines() if ln.startswith(f"probe {arch}: loss ")]
        assert " ms at batch 16 " in line
    assert out.strip().endswith("ok: a run on this device should start")


def test_a_step_that_cannot_run_is_the_one_line_reason(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import prunebench.training.models as models

    def broken(*_args: object) -> None:
        raise RuntimeError("CUDA error: out of memory\nmore lines")

    monkeypatch.setattr(models, "create_model", broken)
    rc, _, err = _run(capsys, "--device", "cpu", "--no-compile")
    assert rc == 1
    assert err.strip() == ("prunebench: error: one training step of conv4 fails on cpu: "
                           "CUDA error: out of memory more lines")
