"""Which GPU a run uses on a machine with several: every run that wants a GPU claims one device
slot with an flock before CUDA starts and pins itself to that device (CUDA_VISIBLE_DEVICES), so
N jobs on an N-GPU machine each get their own device and no slot is ever handed out twice.
A process that sees one device has no choice to make and claims nothing (training/cuda.py
decides when to claim: more than one visible device that CUDA can use).

Devices are the entries of CUDA_VISIBLE_DEVICES when it is set, else every GPU the NVIDIA driver
lists (/proc/driver/nvidia/gpus). `PRUNEBENCH_JOBS_PER_GPU` (default 1) lets small runs share a
device: slots = devices x jobs per GPU, spread over the devices first. profiles/default sizes
Snakemake's `gpu` resource to the same slot count (tests/test_gpus.py keeps the two equal).
Inside a SLURM allocation (SLURM_JOB_ID set) the slots are the allocation's own: their locks
live in a folder of that job (another job on the node numbers its devices from 0 too).
Locks live in /tmp/prunebench-gpus (PRUNEBENCH_GPU_LOCK_DIR) and are held until the process
exits or gives its claim back (the kernel frees them even on SIGKILL). Torch-free."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prunebench.errors import PrunebenchError

DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")
JOBS_PER_GPU_ENV = "PRUNEBENCH_JOBS_PER_GPU"
LOCK_DIR_ENV = "PRUNEBENCH_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("/tmp/prunebench-gpus")
# Set with CUDA_VISIBLE_DEVICES by a claim: child processes share their parent's device slot.
CLAIMED_ENV = "PRUNEBENCH_GPU_CLAIMED"



@dataclass(frozen=True)
class Claim:
    """A device slot held by this process: `device` is its CUDA_VISIBLE_DEVICES entry."""

    device: str
    slot: int
    lock_file: Path
    fd: int  # holds the lock while open


_claimed: list[Claim] = []  # this process's claim (its fd stays open until the process ends)
_unpinned: list[str | None] = []  # CUDA_VISIBLE_DEVICES before the claim pinned the process


def visible_devices() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        devices = []
        for entry in (e.strip() for e in listed.split(",")):
            if not entry or entry.startswith("-"):
                break  # CUDA stops at the first invalid entry ("-1" hides every device)
            devices.append(entry)
        return devices
    try:
        return [str(i) for i in range(len(os.listdir(DRIVER_GPUS)))]
    except OSError:
        return []


def jobs_per_gpu() -> int:
    """Runs sharing one device (PRUNEBENCH_JOBS_PER_GPU, default 1)."""
    text = os.environ.get(JOBS_PER_GPU_ENV, "1")
    if not text.isdigit() or int(text) < 1:
        raise PrunebenchError(f"{JOBS_PER_GPU_ENV}={text!r}: must be a whole number >= 1")
    return int(text)


def slot_count() -> int:
    """How many GPU runs this machine takes at once: devices x jobs per GPU."""
    return len(visible_devices()) * jobs_per_gpu()


def lock_dir() -> Path:
    """Where the slot locks live: one folder per machine, shared by every user's runs (not under
    TMPDIR, which can differ between jobs)."""
    folder = Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    try:
        folder.mkdir(parents=True)
        folder.chmod(0o1777)  # sticky and world-writable, like /tmp
    except FileExistsError:
        pass
    job = os.environ.get("SLURM_JOB_ID")
    if job:  # the allocation's devices, numbered from 0 in every job on the node
        folder = folder / f"slurm-{re.sub(r'[^A-Za-z0-9_.-]', '_', job)}"
        folder.mkdir(exist_ok=True)
    return folder


def _open_lock(path: Path) -> tuple[int, bool]:
    """An fd on a lock file, writable when this user may write it (another user's lock file
    is still lockable read-only); and whether it is writable."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY), False
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # lockable by every user's runs (only the creator may chmod)
    return fd, True


def _slot_files(devices: list[str], per_gpu: int, folder: Path) -> list[tuple[str, int, Path]]:
    slots = []
    for k in range(per_gpu):  # one run on every device before a second run on any
        for device in devices:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", device)
            slots.append((device, k, folder / f"gpu{name}.slot{k}.lock"))
    return slots


def try_claim(devices: list[str], per_gpu: int, folder: Path) -> Claim | None:
    """Lock the first free slot (held while the claim's fd is open); None if all are held."""
    for device, k, path in _slot_files(devices, per_gpu, folder):
        fd, writable = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        return Claim(device, k, path, fd)
    return None


def claim_device(wait_seconds: float | None = None, poll_seconds: float = 1.0
                 ) -> Claim | None:
    """Claim a free slot and pin this process to its device (CUDA_VISIBLE_DEVICES); wait while
    every slot is held (by runs started outside Snakemake). None without GPUs and in a child of
    a process holding a claim (it shares that slot). A process claims once: later calls return
    its claim."""
    if _claimed:
        return _claimed[0]
    devices = visible_devices()
    inherited = os.environ.get(CLAIMED_ENV)
    if not devices or (inherited and devices == [inherited]):
        return None
    per_gpu, folder = jobs_per_gpu(), lock_dir()
    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    said = False
    while (claim := try_claim(devices, per_gpu, folder)) is None:
        if deadline is not None and time.monotonic() > deadline:
            raise PrunebenchError(
                f"no free GPU slot after {wait_seconds:.0f} s: all {len(devices) * per_gpu} "
                f"slots ({len(devices)} devices x {per_gpu} jobs per GPU) are held; the holders' "
                f"pids are in {folder}/gpu*.lock")
        if not said:
            print(f"prunebench: every GPU slot is held (locks in {folder}); waiting for one",
                  file=sys.stderr)
            said = True
        time.sleep(poll_seconds)
    _claimed.append(claim)
    _unpinned.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
    os.environ["CUDA_VISIBLE_DEVICES"] = os.environ[CLAIMED_ENV] = claim.device
    return claim


def held() -> str | None:
    """This process's slot as DEVICE.SLOT (recorded in metrics.json); None without a claim."""
    return f"{_claimed[0].device}.{_claimed[0].slot}" if _claimed else None


def release() -> None:
    """Give this process's claim back (a run that falls back to the CPU) and unpin it."""
    while _claimed:
        os.close(_claimed.pop().fd)
        os.environ.pop(CLAIMED_ENV, None)
        before = _unpinned.pop()
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
