"""GPU slots on a machine with several GPUs (prunebench/training/gpus.py), tested on CPU with a fake
device list (CUDA_VISIBLE_DEVICES): the local profile admits one GPU job per slot, each job
claims its own slot, and a run asked for a GPU never runs on the CPU."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_workflow import REPO, SNAKEMAKE, _env, _snakemake, _tiny_config, _write_config

from prunebench import paths
from prunebench.errors import PrunebenchError
from prunebench.training import gpus

FAKE_4_GPUS = "0,1,2,3"


@pytest.fixture
def no_claim(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's claims start empty and are released afterwards."""
    monkeypatch.setattr(gpus, "_claimed", [])
    monkeypatch.setattr(gpus, "_unpinned", [])
    monkeypatch.delenv(gpus.CLAIMED_ENV, raising=False)
    yield
    for claim in gpus._claimed:
        os.close(claim.fd)


def test_slots_spread_over_devices_and_are_never_handed_out_twice(
        tmp_path: Path, no_claim: None) -> None:
    devices = FAKE_4_GPUS.split(",")
    claims = [gpus.try_claim(devices, 2, tmp_path) for _ in range(8)]
    assert [c.device for c in claims] == devices * 2  # one per device before a second on any
    assert len({c.lock_file for c in claims}) == 8
    assert gpus.try_claim(devices, 2, tmp_path) is None  # all 8 held
    os.close(claims[5].fd)  # that run ended
    again = gpus.try_claim(devices, 2, tmp_path)
    assert (again.device, again.slot) == (devices[1], 1)
    for claim in [*claims[:5], *claims[6:], again]:
        os.close(claim.fd)


def test_visible_devices_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    for listed, expected in [("0,1,2,3", ["0", "1", "2", "3"]), ("2, 3", ["2", "3"]),
                             ("", []), ("-1", []), ("1,-1,2", ["1"]),
                             ("GPU-8e1c,GPU-77aa", ["GPU-8e1c", "GPU-77aa"])]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
        assert gpus.visible_devices() == expected, listed


def test_claim_pins_the_process_and_waits_only_as_long_as_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_claim: None) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    monkeypatch.setenv(gpus.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    held = gpus.try_claim(["5"], 1, tmp_path)  # another run holds device 5
    assert held is not None and held.device == "5"
    claim = gpus.claim_device(wait_seconds=0)
    assert claim.device == "7" and os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    assert gpus.claim_device() is claim  # one claim per process
    assert os.environ[gpus.CLAIMED_ENV] == "7"
    monkeypatch.setattr(gpus, "_claimed", [])  # a second process: both slots are held
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    monkeypatch.delenv(gpus.CLAIMED_ENV)
    with pytest.raises(PrunebenchError, match="no free GPU slot after 0 s"):
        gpus.claim_device(wait_seconds=0, poll_seconds=0.01)
    os.close(held.fd)
    os.close(claim.fd)


def test_slurm_allocation_slots_lock_apart_from_other_jobs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_claim: None) -> None:
    """Inside a SLURM allocation the slots are the job's own: two jobs on one node both number
    their devices from 0, so their locks must not meet (tests/test_cuda.py: a multi-GPU
    allocation pins its jobs to distinct devices; a one-GPU job claims nothing)."""
    monkeypatch.setenv(gpus.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    claims = []
    for job in ("101", "102"):
        monkeypatch.setenv("SLURM_JOB_ID", job)
        monkeypatch.setattr(gpus, "_claimed", [])
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
        claims.append(gpus.claim_device(wait_seconds=0))
    assert [c.device for c in claims] == ["0", "0"]
    assert [c.lock_file.parent.name for c in claims] == ["slurm-101", "slurm-102"]
    for claim in claims:
        os.close(claim.fd)
    monkeypatch.setattr(gpus, "_claimed", [])


def test_child_of_a_claiming_process_shares_its_slot(
        monkeypatch: pytest.MonkeyPatch, no_claim: None) -> None:
    """What a parent's claim leaves in the environment: its one device, marked as claimed."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv(gpus.CLAIMED_ENV, "3")
    assert gpus.claim_device(wait_seconds=0) is None


@pytest.mark.parametrize(("listed", "per_gpu", "expected"), [
    (FAKE_4_GPUS, "1", 4), (FAKE_4_GPUS, "2", 8), ("3", "1", 1), ("", "1", 1)])
def test_local_profile_gpu_resource_is_the_slot_count(
        monkeypatch: pytest.MonkeyPatch, listed: str, per_gpu: str, expected: int) -> None:
    """Parsed as Snakemake parses `snakemake` in the repository (profiles/default applied)."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    monkeypatch.setenv(gpus.JOBS_PER_GPU_ENV, per_gpu)
    _, args = parse_args([])
    assert args.resources["gpu"].value == expected
    assert max(gpus.slot_count(), 1) == expected


def test_fake_4_gpu_machine_runs_4_gpu_jobs_at_once_on_distinct_devices(tmp_path: Path) -> None:
    """Six GPU jobs under the local profile on a fake 4-GPU machine: 4 hold a slot at once, each
    on its own device, and never more. The jobs meet at a barrier (tests/gpu_job.py) instead of
    sleeping for a time that a loaded machine's start-up could exceed. Red when a slot's flock
    is skipped (try_claim): every job then reports device 0."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""
        rule all:
            input: expand("job{{i}}.txt", i=range(6))

        rule gpu_job:
            output: "job{{i}}.txt"
            resources: gpu=1
            shell: "{sys.executable} {REPO}/tests/gpu_job.py > {{output}}"
        """))
    env = {**_env(), "CUDA_VISIBLE_DEVICES": FAKE_4_GPUS, gpus.LOCK_DIR_ENV: str(tmp_path),
           "PYTHONPATH": str(REPO), "PB_BARRIER": "4", "PB_JOBS": "6"}
    env.pop("SLURM_JOB_ID", None)
    env.pop(gpus.CLAIMED_ENV, None)
    out = subprocess.run(
        [SNAKEMAKE, "--workflow-profile", str(REPO / "profiles/default"), "--cores", "8"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    at_once = (tmp_path / "full").read_text().split()
    assert sorted(at_once) == sorted(FAKE_4_GPUS.split(",")), at_once  # 4 distinct devices
    jobs = [(tmp_path / f"job{i}.txt").read_text().split() for i in range(6)]
    assert all(device in FAKE_4_GPUS.split(",") for device, _ in jobs), jobs
    assert max(int(held) for _, held in jobs) == 4, jobs  # never a fifth slot


def test_cuda_run_never_falls_back_to_the_cpu(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_claim: None) -> None:
    """A driver too old for the torch build: `cuda` stops naming the cause, `auto` may choose."""
    import warnings

    import torch

    from prunebench.training.run import resolve_device

    def old_driver() -> bool:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old "
                      "(found version 11040)", UserWarning, stacklevel=1)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", old_driver)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv(gpus.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(PrunebenchError) as e:
        resolve_device("cuda")
    assert "driver on your system is too old" in str(e.value)
    assert "NVIDIA driver too old for this torch build" in str(e.value)
    assert "'CUDA Version' >= 13.0" in str(e.value)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(PrunebenchError, match="CPU-only build"):
        resolve_device("cuda:0")


@pytest.mark.slow
def test_gpu_job_without_cuda_fails_before_touching_its_folder(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is usable here")
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "prunebench", "run", "--dataset", "digits", "--arch", "conv2",
         "--method", "dense", "--run-dir", str(run_dir), "device=cuda", "epochs=0"],
        cwd=REPO, env={**_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=120)
    assert out.returncode == 1, out.stderr
    assert "device=cuda requested but CUDA is not usable here" in out.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize(("gpu", "device", "emulated", "expected"), [
    (1, None, False, "device=cuda"), (0, None, False, ""), (1, "cpu", False, None),
    (1, "cpu", True, "device=cpu")])
def test_job_requesting_a_gpu_runs_with_device_cuda(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu: int, device: str | None,
        emulated: bool, expected: str | None) -> None:
    """train_run's command: `cuda` for a job with gpu > 0 unless the config names a device,
    after `prunebench doctor --device cuda`; a GPU requested for CPU runs is refused before any
    job (expected None), except under the test-only switch, where the CPU stands in for the GPU
    (the SLURM test's fake one) and no doctor runs."""
    monkeypatch.setenv(paths.GPU_PATHS_ON_CPU_ENV, "1" if emulated else "0")
    (tmp_path / "config").mkdir()
    config = _tiny_config(["dense"])
    config["train"].pop("device")
    if device:
        config["train"]["device"] = device
    config["resources"]["train"]["gpu"] = gpu
    configfile = str(tmp_path / _write_config(tmp_path, config))
    out = _snakemake("aggregate_runs", "-n", "-p", "--forceall", "--directory", str(tmp_path),
                     "--configfile", configfile, timeout=300)
    if expected is None:
        assert out.returncode != 0
        assert "the job would hold a GPU and train on the CPU" in out.stdout + out.stderr
        return
    assert out.returncode == 0, out.stdout[-3000:]
    (command,) = [ln for ln in out.stdout.splitlines() if "prunebench run " in ln]
    devices = [arg for arg in command.split() if arg.startswith("device=")]
    assert devices == ([expected] if expected else []), command
    assert ("doctor --device cuda" in command) == (expected == "device=cuda"), command
