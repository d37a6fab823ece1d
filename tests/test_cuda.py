"""What only a CUDA device does (prunebench/training/cuda.py), tested on the CPU with a fake
device: torch.cuda's answers monkeypatched, device lists given by CUDA_VISIBLE_DEVICES. Each test
names the defect of issue 21 it pins (old behaviour beside the new)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from prunebench.errors import PrunebenchError
from prunebench.plan.config import TrainConfig
from prunebench.training import cuda, gpus

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A CUDA build whose devices work (no claim held before, locks in tmp_path); the test
    sets CUDA_VISIBLE_DEVICES."""
    monkeypatch.setattr(gpus, "_claimed", [])
    monkeypatch.setattr(gpus, "_unpinned", [])
    monkeypatch.delenv(gpus.CLAIMED_ENV, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv(cuda.FORCE_ENV, raising=False)
    monkeypatch.setenv(gpus.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cuda, "driver_versions", lambda: ("580.65.06", 13000))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Fake GPU")
    yield
    for claim in gpus._claimed:
        os.close(claim.fd)


def _never_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim that would wait for a slot raises instead (a process blocked for good)."""
    def wait(_seconds: float) -> None:
        raise TimeoutError("waiting for a free GPU slot")
    monkeypatch.setattr(gpus.time, "sleep", wait)


def _second_process(monkeypatch: pytest.MonkeyPatch, visible: str) -> None:
    """What a second process sees: no claim of its own, the original device list."""
    monkeypatch.setattr(gpus, "_claimed", [])
    monkeypatch.setattr(gpus, "_unpinned", [])
    monkeypatch.delenv(gpus.CLAIMED_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_runs_on_a_one_gpu_machine_all_start(monkeypatch: pytest.MonkeyPatch,
                                             fake_gpus: None) -> None:
    """Defect 2 (the window never packed): every device=cuda run claimed the one slot of a
    one-GPU machine and runs 2..N waited for run 1. A process that sees one device has no
    choice to make and claims nothing."""
    from prunebench.training.run import resolve_device

    _never_wait(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    held = []
    for _ in range(3):
        _second_process(monkeypatch, "0")
        assert resolve_device("cuda") == CUDA
        held += gpus._claimed
    assert held == [] and list(Path(os.environ[gpus.LOCK_DIR_ENV]).iterdir()) == []


def test_auto_decides_cuda_before_claiming_and_claims_nothing_without_it(
        monkeypatch: pytest.MonkeyPatch, fake_gpus: None) -> None:
    """Defect 8: device=auto claimed a slot before knowing CUDA worked and kept it through the
    CPU fallback. A driver too old for the build (read without starting CUDA) claims nothing;
    CUDA failing after the claim gives the slot back and unpins the process."""
    from prunebench.training.run import resolve_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setattr(cuda, "driver_versions", lambda: ("535.54.03", 12020))
    assert resolve_device("auto") == CPU
    assert gpus._claimed == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    with pytest.raises(PrunebenchError, match="driver 535.54.03 runs CUDA up to 12.2, torch .* "
                                              "built for CUDA 13.0"):
        resolve_device("cuda")
    monkeypatch.setattr(cuda, "driver_versions", lambda: ("580.65.06", 13000))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # fails once started
    assert resolve_device("auto") == CPU
    assert gpus._claimed == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert gpus.try_claim(["0"], 1, gpus.lock_dir()) is not None  # the slot is free again


def test_jobs_inside_a_multi_gpu_slurm_allocation_get_distinct_devices(
        monkeypatch: pytest.MonkeyPatch, fake_gpus: None) -> None:
    """Defect 8: inside a 4-GPU SLURM allocation (the local profile run under salloc) nothing
    was claimed and every job landed on cuda:0. Now each claims its own device, with locks of
    that allocation only (another job on the node numbers its devices from 0 too)."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _never_wait(monkeypatch)
    devices = []
    for _ in range(4):
        _second_process(monkeypatch, "0,1,2,3")
        claim = cuda.claim_slot()
        assert claim is not None
        devices.append(os.environ["CUDA_VISIBLE_DEVICES"])
        assert claim.lock_file.parent.name == "slurm-4242"
    assert sorted(devices) == ["0", "1", "2", "3"]
    _second_process(monkeypatch, "0")  # a SLURM job given one GPU: the scheduler pinned it
    assert cuda.claim_slot() is None


def test_bf16_only_where_the_gpu_has_it_natively(monkeypatch: pytest.MonkeyPatch,
                                                 fake_gpus: None) -> None:
    """Defect 5: bf16 autocast was on for any CUDA device (V100 and T4 emulate it). Off there,
    fp32 recorded and said; on where native; never on the CPU path."""
    from benchmarks.common import synthetic_prepared
    from prunebench.data.prepared import DeviceData
    from prunebench.plan.config import resolve
    from prunebench.training.models import create_model
    from prunebench.training.run import build_method
    from prunebench.training.train import Trainer

    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)  # a V100
    run = resolve("cifar10", "conv2", "dense", None, 0)
    cfg = run.train
    data = DeviceData(synthetic_prepared(8, 0, 8), CPU, 0.0)
    trainer = Trainer(create_model("conv2", 10, 3, 8), build_method(run, data, CPU), data, cfg,
                      0, CUDA, save=lambda _c: None, log=lambda _m: None)
    assert trainer.amp is False
    assert trainer.accel.record()["precision"] == "fp32"
    assert "Fake GPU has no native bf16" in trainer.accel.note
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert cuda.accel_for(cfg, CUDA).amp is True
    assert cuda.accel_for(cfg, CPU).amp is False


def test_cudnn_autotunes_unless_deterministic_and_fp32_is_ieee(
        monkeypatch: pytest.MonkeyPatch, fake_gpus: None) -> None:
    """Defects 4, 5, 7: no determinism setting existed, cudnn.benchmark was never set, and fp32
    convolutions ran in TF32. A run applies its settings while it computes and restores the
    process's switches after."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.delenv(cuda.CUBLAS_ENV, raising=False)
    fast = cuda.accel_for(TrainConfig(), CUDA)
    exact = cuda.accel_for(TrainConfig(deterministic=True), CUDA)
    assert (fast.cudnn_benchmark, fast.deterministic) == (True, False)
    assert (exact.cudnn_benchmark, exact.deterministic) == (False, True)
    assert cuda.accel_for(TrainConfig(), CPU).cudnn_benchmark is False
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
              cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    with cuda.applied(fast):
        assert cudnn.benchmark and not cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled()
        assert cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert cuda.CUBLAS_ENV not in os.environ
    with cuda.applied(exact):
        assert not cudnn.benchmark and cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ[cuda.CUBLAS_ENV] == ":4096:8"
        assert cudnn.conv.fp32_precision == "ieee"
    after = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    assert after == before and cuda.CUBLAS_ENV not in os.environ


def test_cuda_random_stream_goes_through_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 1: generator states must reach set_rng_state as CPU byte tensors, whatever device
    the checkpoint's tensors were loaded to."""
    seen = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: seen.append(
        (state.device.type, state.dtype, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device: torch.zeros(16, dtype=torch.uint8))
    state = cuda.rng_state(CUDA)
    cuda.set_rng_state(CUDA, state)
    cuda.set_rng_state(CPU, state)  # nothing to restore off CUDA
    assert cuda.rng_state(CPU) is None
    assert seen == [("cpu", torch.uint8, CUDA)]


def test_preinit_problem_names_each_cause(monkeypatch: pytest.MonkeyPatch,
                                          fake_gpus: None) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "no NVIDIA GPU is visible" in cuda.preinit_problem()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert cuda.preinit_problem() is None
    monkeypatch.setattr(cuda, "driver_versions", lambda: ("470.1", 11040))
    assert "'CUDA Version' >= 13.0" in cuda.preinit_problem()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in cuda.preinit_problem()


def test_the_test_only_switch_takes_the_gpu_paths_on_the_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cuda.FORCE_ENV, raising=False)
    assert not cuda.gpu_paths(CPU) and cuda.accel_for(TrainConfig(compile=True), CPU) == \
        cuda.Accel(False, False, None, False, False)
    monkeypatch.setenv(cuda.FORCE_ENV, "1")
    accel = cuda.accel_for(TrainConfig(compile=True), CPU)
    assert (accel.amp, accel.channels_last, accel.compile_backend) == (True, True, "inductor")
    monkeypatch.setenv(cuda.FORCE_ENV, "aot_eager")
    assert cuda.accel_for(TrainConfig(compile=True), CPU).compile_backend == "aot_eager"
    assert cuda.accel_for(TrainConfig(amp=False), CPU).record()["precision"] == "fp32"


def test_an_older_torch_turns_tf32_off_through_its_flags(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU machine's own Python may have a torch without the fp32_precision settings (< 2.9):
    TF32 goes off through allow_tf32 there, and the flags come back after the run."""
    monkeypatch.setattr(cuda, "_fp32_api", lambda: False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True, raising=False)
    with cuda.applied(cuda.Accel(False, False, None, False, False)):
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is True and torch.backends.cuda.matmul.allow_tf32
