"""What only a CUDA device does, in one place: whether CUDA is usable and why not (build, visible
devices, driver version), native bf16, the precision, cuDNN and determinism switches, the CUDA
random stream and device slots on multi-GPU machines.

A run decides once how it computes (`Accel`, from its train settings and the hardware): bf16
autocast only where the device has native bf16, else fp32; fp32 is IEEE fp32 (TF32 off);
`deterministic` sets PyTorch's three switches; otherwise cuDNN autotunes (every training shape
is fixed). On a CPU these paths do nothing, except under the test-only switch
PRUNEBENCH_GPU_PATHS_ON_CPU, which runs their CPU equivalents (bf16 autocast on "cpu",
channels_last, torch.compile, device slots) so the tests exercise what a GPU run does."""
from __future__ import annotations

import ctypes
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from prunebench import paths
from prunebench.data.archives import one_line
from prunebench.plan.config import TrainConfig
from prunebench.training import gpus

FORCE_ENV = paths.GPU_PATHS_ON_CPU_ENV
"""Test-only: "1" (or a torch.compile backend name: inductor, aot_eager, eager) runs the CUDA
paths on the CPU; the value names the backend `compile=true` uses there."""
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = ":4096:8"


def forced_backend() -> str | None:
    """The compile backend of the test-only CPU emulation of the GPU paths; None when off."""
    value = paths.gpu_paths_on_cpu()
    return "inductor" if value == "1" else value


def gpu_paths(device: torch.device) -> bool:
    """Whether `device` takes the GPU paths: CUDA, or the CPU under the test-only switch."""
    return device.type == "cuda" or (device.type == "cpu" and forced_backend() is not None)


# -- is CUDA usable ------------------------------------------------------------------------------
def _nvml() -> ctypes.CDLL | None:
    """The NVIDIA management library, initialised; None without a driver. Reading it never
    initialises CUDA, so a process can still pin itself to a device afterwards."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    return lib if lib.nvmlInit_v2() == 0 else None


def driver_versions() -> tuple[str, int] | None:
    """(driver version, newest CUDA version it runs as major*1000 + minor*10), e.g.
    ("580.65.06", 13000); None when no NVIDIA driver answers."""
    lib = _nvml()
    if lib is None:
        return None
    try:
        text = ctypes.create_string_buffer(96)
        cuda = ctypes.c_int()
        if (lib.nvmlSystemGetDriverVersion(text, 96) != 0
                or lib.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(cuda)) != 0):
            return None
        return text.value.decode(), cuda.value
    finally:
        lib.nvmlShutdown()


def _as_version(cuda: int) -> str:
    return f"{cuda // 1000}.{cuda % 1000 // 10}"


def preinit_problem() -> str | None:
    """Why CUDA cannot work here, found without initialising CUDA (the process may still pin
    itself to a device): a CPU-only torch build, no visible GPU, or a driver too old for the
    build's CUDA major version. None when nothing speaks against it."""
    build = torch.version.cuda
    if build is None:
        return (f"torch {torch.__version__} is a CPU-only build; install a CUDA build of torch "
                "(docs/getting-started.md, GPUs)")
    if not gpus.visible_devices():
        return (f"no NVIDIA GPU is visible (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}, {gpus.DRIVER_GPUS} lists none)")
    versions = driver_versions()
    if versions is not None and versions[1] // 1000 < int(build.split(".")[0]):
        return (f"the NVIDIA driver {versions[0]} runs CUDA up to {_as_version(versions[1])}, "
                f"torch {torch.__version__} is built for CUDA {build}: {_too_old(build)}")
    return None


def _too_old(build: str) -> str:
    return ("the usual cause is an NVIDIA driver too old for this torch build: `nvidia-smi` must "
            f"show 'CUDA Version' >= {build}; update the driver or install a torch build for the "
            "driver's CUDA version (docs/getting-started.md, GPUs)")


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, naming the usual cause; None when it can. Initialises
    CUDA: claim a device slot first."""
    problem = preinit_problem()
    if problem:
        return problem
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            return None
    said = "; ".join(one_line(w.message) for w in caught)
    return (f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no usable "
            f"GPU{f' ({said})' if said else ''}. T{_too_old(str(torch.version.cuda))[1:]}")


# -- device slots --------------------------------------------------------------------------------
def claim_slot() -> gpus.Claim | None:
    """Claim a device slot and pin this process to its device, when there is a choice: more
    than one visible device that CUDA can use (on the CPU: under the test-only switch). Call
    before CUDA is initialised."""
    if len(gpus.visible_devices()) <= 1:
        return None
    if forced_backend() is None and preinit_problem() is not None:
        return None
    return gpus.claim_device()


# -- how a run computes --------------------------------------------------------------------------
def bf16_native(device: torch.device) -> bool:
    """bf16 in hardware: CUDA devices of compute capability 8.0 or later (not emulated, as on
    V100 or T4); the CPU emulation of the GPU paths counts as native."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return gpu_paths(device)


@dataclass(frozen=True)
class Accel:
    """How a run computes on its device, decided once from its settings and the hardware."""

    amp: bool  # bf16 autocast in training and per-epoch validation; reported numbers are fp32
    channels_last: bool
    compile_backend: str | None  # torch.compile backend of the training forward; None: eager
    deterministic: bool
    cudnn_benchmark: bool
    note: str = ""  # why a requested setting is not used

    def record(self) -> dict[str, Any]:
        """What metrics.json records of it."""
        return {"precision": "bf16" if self.amp else "fp32", "eval_precision": "fp32",
                "tf32": False, "channels_last_used": self.channels_last,
                "compiled": self.compile_backend is not None,
                "deterministic_algorithms": self.deterministic,
                "cudnn_benchmark": self.cudnn_benchmark}


def accel_for(cfg: TrainConfig, device: torch.device) -> Accel:
    """The run's `Accel`: bf16, channels_last and compile only on the GPU paths, bf16 only where
    native (else fp32, said in `note`), cuDNN autotuning on CUDA unless deterministic."""
    on_gpu = gpu_paths(device)
    amp = cfg.amp and on_gpu and bf16_native(device)
    note = ""
    if cfg.amp and on_gpu and not amp:
        note = (f"amp: {torch.cuda.get_device_name(device)} has no native bf16; training in "
                "fp32")
    backend = ("inductor" if device.type == "cuda" else forced_backend()) if on_gpu else None
    return Accel(amp=amp, channels_last=cfg.channels_last and on_gpu,
                 compile_backend=backend if cfg.compile else None,
                 deterministic=cfg.deterministic,
                 cudnn_benchmark=device.type == "cuda" and not cfg.deterministic, note=note)


@contextmanager
def applied(accel: Accel) -> Iterator[None]:
    """The process-wide switches of `accel` while a run computes (restored after): fp32 as
    IEEE fp32 (no TF32), cuDNN autotuning, and determinism as PyTorch asks for it
    (use_deterministic_algorithms, cudnn.deterministic, CUBLAS_WORKSPACE_CONFIG)."""
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
              _fp32_precision(), os.environ.get(CUBLAS_ENV))
    cudnn.benchmark = accel.cudnn_benchmark
    cudnn.deterministic = accel.deterministic
    torch.use_deterministic_algorithms(accel.deterministic)
    _set_fp32_precision(("ieee", "ieee"))
    if accel.deterministic:
        os.environ[CUBLAS_ENV] = CUBLAS_DETERMINISTIC  # read when cuBLAS starts: set it first
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic, deterministic, precision, cublas = before
        torch.use_deterministic_algorithms(deterministic)
        _set_fp32_precision(precision)
        if cublas is None:
            os.environ.pop(CUBLAS_ENV, None)
        else:
            os.environ[CUBLAS_ENV] = cublas


def _fp32_api() -> bool:
    """Whether this torch has the fp32_precision settings (>= 2.9); a GPU machine's own Python
    may have an older one, with the allow_tf32 flags."""
    return hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision")


def _fp32_precision() -> tuple[Any, Any]:
    """(convolutions, matmuls): "ieee"/"tf32" settings, or an older torch's allow_tf32 flags."""
    if _fp32_api():
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _set_fp32_precision(values: tuple[Any, Any]) -> None:
    """Set what `_fp32_precision` reads ("ieee" on an older torch: TF32 off)."""
    if _fp32_api():
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = values
    else:
        conv_tf32, matmul_tf32 = (v != "ieee" if isinstance(v, str) else v for v in values)
        torch.backends.cudnn.allow_tf32 = conv_tf32
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


# -- the CUDA random stream ----------------------------------------------------------------------
def rng_state(device: torch.device) -> torch.Tensor | None:
    """The CUDA generator state of `device` (a CPU byte tensor); None off CUDA."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(device: torch.device, state: torch.Tensor | None) -> None:
    if device.type == "cuda" and state is not None:
        torch.cuda.set_rng_state(state.cpu(), device)


def device_name(device: torch.device) -> str:
    """The GPU's marketing name; off CUDA, the CPU's architecture."""
    import platform

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()
