"""`prunebench doctor`: what a GPU run would meet here, in a few seconds, before any run starts.

Prints the torch build and its CUDA version, the NVIDIA driver, every visible device with its free
memory and native bf16, whether torch.compile works, and one timed training step of conv4 and
resnet18 in the precision a run would use. Exits 1 with a one-line reason when a run on
`--device` would fail (the GPU workflow jobs and the GPU window run it first)."""
from __future__ import annotations

import argparse
import time
from typing import Any

PROBE_ARCHS = ("conv4", "resnet18")
PROBE_BATCH = {"cuda": 128, "cpu": 16}  # a CPU step of resnet18 at 128 takes a minute


SUMMARY = "check what a GPU run would meet here"
DESCRIPTION = ("Prints the torch build and CUDA version, the NVIDIA driver, the visible devices "
               "with their free memory and bf16 support, whether torch.compile works, and one "
               "timed training step of conv4 and resnet18 in the precision a run would use. "
               "Exits 1 with a one-line reason when a run on --device would fail; the GPU "
               "workflow jobs and the GPU window run it first.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `doctor` subcommand's options (the CLI's parser makes the subcommand)."""
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="the device a run would use (cpu: check the CPU path)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile check (a first compilation takes seconds on a "
                   "GPU, up to minutes on a CPU with a cold cache)")
    p.add_argument("--no-probe", action="store_true", help="skip the training-step probe")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> None:
    """Print the report; raise PrunebenchError (exit 1, one line) naming what would fail."""
    import torch

    from prunebench.errors import PrunebenchError
    from prunebench.training import cuda, gpus

    say = print
    say(f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none (CPU-only)'}, "
        f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else '-'}")
    versions = cuda.driver_versions()
    say("NVIDIA driver: " + (f"{versions[0]}, runs CUDA up to {versions[1] // 1000}."
                             f"{versions[1] % 1000 // 10}" if versions else "none answers (NVML)"))
    say(f"visible devices: {', '.join(gpus.visible_devices()) or 'none'}")
    if args.device == "cpu":
        device = torch.device("cpu")
    else:
        if cuda.preinit_problem() is None and cuda.claim_slot() is not None:
            say(f"device slot {gpus.held()} (the device a run started now would use)")
        problem = cuda.cuda_problem()
        if problem:
            say("CUDA: not usable")
            raise PrunebenchError(f"a GPU run would fail: {problem}")
        device = torch.device("cuda")
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            major, minor = torch.cuda.get_device_capability(i)
            say(f"  cuda:{i} {torch.cuda.get_device_name(i)}, compute capability "
                f"{major}.{minor}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free, bf16 "
                f"{'native' if torch.cuda.is_bf16_supported(including_emulation=False) else 'no'}")
    accel = cuda.accel_for(_train_settings(), device)
    say(f"a run here: device {device}, precision {accel.record()['precision']}"
        f"{f' ({accel.note})' if accel.note else ''}, channels_last {accel.channels_last}, "
        f"cuDNN autotuning {accel.cudnn_benchmark}")
    if not args.no_compile:
        say(f"torch.compile: {_compile_check(device)}")
    if not args.no_probe:
        with cuda.applied(accel):
            for arch in PROBE_ARCHS:
                say(f"probe {arch}: {_probe(arch, device, accel)}")
    say("ok: a run on this device should start")


def _train_settings() -> Any:
    from prunebench.plan.config import TrainConfig

    return TrainConfig()


def _compile_check(device: Any) -> str:
    """Compile a small function with inductor on `device` and compare it with eager."""
    import torch

    from prunebench.data.archives import one_line
    from prunebench.errors import PrunebenchError

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x * 2.0 + 1.0).sum(dim=1)

    x = torch.randn(64, 32, device=device)
    t0 = time.perf_counter()
    try:
        got = torch.compile(f)(x)
    except Exception as e:  # noqa: BLE001 - any compile failure is the answer
        raise PrunebenchError(f"torch.compile fails on {device} (runs with compile=true would "
                              f"fail): {one_line(e)[:300]}") from None
    if not torch.allclose(got, f(x), rtol=1e-5, atol=1e-5):
        raise PrunebenchError(f"torch.compile on {device} computes a different result than eager")
    return f"works ({time.perf_counter() - t0:.1f} s for a first compilation)"


def _probe(arch: str, device: Any, accel: Any) -> str:
    """One SGD step of `arch` on a CIFAR-sized batch as a run would take it: its time."""
    import torch

    from prunebench.data.archives import one_line
    from prunebench.errors import PrunebenchError
    from prunebench.training.models import create_model

    try:
        model = create_model(arch, 10, 3, 32).to(device)
        batch = PROBE_BATCH[device.type]
        x = torch.randn(batch, 3, 32, 32, device=device)
        if accel.channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        times = []
        for _ in range(3):  # the first step includes cuDNN autotuning and allocation
            _sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=accel.amp):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            times.append(time.perf_counter() - t0)
        value = float(loss.detach())
    except Exception as e:  # noqa: BLE001 - a step that cannot run is the answer
        raise PrunebenchError(f"one training step of {arch} fails on {device}: "
                              f"{one_line(e)[:300]}") from None
    if value != value or abs(value) == float("inf"):
        raise PrunebenchError(f"one training step of {arch} on {device} gives loss {value}")
    return (f"loss {value:.3f}, step {1e3 * times[-1]:.1f} ms at batch {batch} (first "
            f"{1e3 * times[0]:.0f} ms)")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
