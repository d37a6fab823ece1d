"""Benchmarks 2-4, per registered method against `dense` on the same arch, batch and device:
training-step time (through the engine's own loop), peak memory, and inference time of the
extracted, folded subnetwork."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import Any

import torch

from benchmarks.common import (
    REPO,
    Context,
    PhaseStepper,
    build,
    clock_name,
    median,
    no_parametrizations_left,
    paired,
    spread,
    synthetic_prepared,
    timed,
    timed_phases,
)

TARGETS = {"cpu": 1.15, "cuda": 1.10}  # step-time ratio to dense of every masking method
INFERENCE_BAND = 0.10  # an extracted subnetwork must run within 10 % of dense


def _device_data(device: torch.device, n: int, size: int):
    from prunebench.data.prepared import DeviceData

    return DeviceData(synthetic_prepared(n, 0, size), device, 0.0,
                      channels_last=device.type == "cuda")


def _parametrization(built) -> str:
    from prunebench.training.masking import prunable_layers, weight_transform

    layers = prunable_layers(built.model)
    t = weight_transform(layers[0][1]) if layers else None
    return type(t).__name__ if t is not None else "none"


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def overhead(ctx: Context, device: torch.device, arch: str, size: int, batch: int,
             steps: int, repeats: int, methods: list[str], note: str = ""
             ) -> list[dict[str, Any]]:
    """Step time of every (method, training phase) relative to dense, paired and interleaved."""
    data = _device_data(device, steps * batch, size)
    dense = PhaseStepper(build(arch, "dense", data, device, batch), 0)
    dense.step_seconds()
    common = dict(benchmark="method_overhead", arch=arch, batch_size=batch, image_size=size,
                  steps_per_measurement=steps, repeats=repeats, clock=clock_name(device))
    target = TARGETS[device.type]
    rows = []
    all_dense: list[float] = []
    for method in methods:
        if method == "dense":
            continue
        try:
            indices = timed_phases(build(arch, method, data, device, batch))
        except Exception as e:  # noqa: BLE001 - a method under development: note it, go on
            rows.append(ctx.row(device, **common, method=method,
                                status=f"skipped: failed to build: {_error(e)}"))
            continue
        for index in indices:
            try:
                built = build(arch, method, data, device, batch)
                stepper = PhaseStepper(built, index)
                stepper.step_seconds()
                t_dense, t_method, ratios = paired(dense.step_seconds, stepper.step_seconds,
                                                   repeats)
            except Exception as e:  # noqa: BLE001
                rows.append(ctx.row(device, **common, method=method,
                                    status=f"skipped: failed to train: {_error(e)}"))
                continue
            all_dense += t_dense
            ratio = median(ratios)
            rows.append(ctx.row(
                device, **common, method=method, phase=stepper.phase.name,
                parametrization=_parametrization(built),
                method_step_ms=1e3 * median(t_method), dense_step_ms=1e3 * median(t_dense),
                ratio=ratio, ratio_range=spread(ratios), target=f"<= {target:g}",
                target_met=ratio <= target, status="ok",
                note="ratio = median of paired (dense, method) epoch times per step, "
                     "interleaved A B B A; engine's Trainer.train_epoch" + note))
            del built, stepper
    if not all_dense:
        all_dense = [dense.step_seconds() for _ in range(repeats)]
    dense_ms = 1e3 * median(all_dense)
    rows.insert(0, ctx.row(device, **{**common, "repeats": len(all_dense)}, method="dense",
                           phase="train", parametrization="none", method_step_ms=dense_ms,
                           dense_step_ms=dense_ms, ratio=1.0, status="ok",
                           note="reference: every dense epoch of the pairs" + note))
    return rows


# -- peak memory --------------------------------------------------------------------------------
def state_bytes(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> int:
    """Bytes of every distinct tensor a run holds between steps: parameters (parametrization
    originals included), buffers (masks), tensors cached as module attributes, gradients and
    optimizer state."""
    seen: dict[int, int] = {}

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for p in model.parameters():
        add(p)
        add(p.grad)
    for b in model.buffers():
        add(b)
    for m in model.modules():  # tensors a module caches outside its state (FixedMask's cast)
        for v in vars(m).values():
            add(v)
    for o in optimizers:
        for st in o.state.values():
            for v in st.values():
                add(v)
    return sum(seen.values())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_hwm() -> bool:
    """Reset the resident set's high-water mark to the current resident set (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_memory(arch: str, method: str, device: torch.device, size: int, batch: int,
                   steps: int) -> dict[str, Any]:
    """Peak memory of building + prepare() and of 2 epochs of `steps` training steps of the
    method's last training phase (and of those epochs alone). On CUDA:
    torch.cuda.max_memory_allocated above what was allocated before the model existed. On CPU
    (call in a fresh process): growth of the resident set's high-water mark (VmHWM) above the
    resident set before the model was built."""
    import prunebench.training.run  # noqa: F401 - imports and registry filled before the baseline
    from prunebench.training.registry import list_methods

    list_methods()
    data = _device_data(device, steps * batch, size)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_bytes()
    built = build(arch, method, data, device, batch)
    # the peak of the training steps alone, beside the peak that includes prepare()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        prepare_peak = torch.cuda.max_memory_allocated(device) - base
        torch.cuda.reset_peak_memory_stats(device)
        resettable = True
    else:
        prepare_peak = _hwm_bytes() - base
        resettable = _reset_hwm()
    stepper = PhaseStepper(built, timed_phases(built)[-1] if timed_phases(built) else 0)
    stepper.step_seconds()
    stepper.step_seconds()  # the second epoch holds optimizer state while activations live
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        train_peak = torch.cuda.max_memory_allocated(device) - base
    else:
        train_peak = _hwm_bytes() - base
    return {"peak_bytes": max(prepare_peak, train_peak),
            "train_peak_bytes": train_peak if resettable else float("nan"),
            "state_bytes": state_bytes(built.model, stepper.optimizers),
            "phase": stepper.phase.name}


def _memory_subprocess(arch: str, method: str, size: int, batch: int, steps: int
                       ) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.memory_worker", "--arch", arch, "--method", method,
           "--size", str(size), "--batch", str(batch), "--steps", str(steps)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory worker exited {res.returncode}: {tail}")
    return json.loads(lines[-1])


def memory(ctx: Context, device: torch.device, arch: str, size: int, batch: int, steps: int,
           methods: list[str]) -> list[dict[str, Any]]:
    """Peak memory and held-state bytes of every method relative to dense."""
    results: dict[str, dict[str, Any] | str] = {}
    for method in ["dense"] + [m for m in methods if m != "dense"]:
        try:
            if device.type == "cuda":
                results[method] = measure_memory(arch, method, device, size, batch, steps)
            else:
                results[method] = _memory_subprocess(arch, method, size, batch, steps)
        except Exception as e:  # noqa: BLE001
            results[method] = f"skipped: failed: {_error(e)}"
    dense = results["dense"]
    common = dict(benchmark="memory", arch=arch, batch_size=batch, image_size=size, repeats=1)
    measure = ("torch.cuda.max_memory_allocated growth" if device.type == "cuda"
               else "resident-set high-water growth (VmHWM) in a fresh process")
    rows = []
    for method, r in results.items():
        if isinstance(r, str) or isinstance(dense, str):
            rows.append(ctx.row(device, **common, method=method,
                                status=r if isinstance(r, str) else "skipped: dense failed"))
            continue
        rows.append(ctx.row(
            device, **common, method=method, phase=r["phase"],
            peak_mib=r["peak_bytes"] / 2**20, dense_peak_mib=dense["peak_bytes"] / 2**20,
            ratio=r["peak_bytes"] / dense["peak_bytes"],
            train_peak_mib=r["train_peak_bytes"] / 2**20,
            train_peak_ratio=r["train_peak_bytes"] / dense["train_peak_bytes"],
            state_mib=r["state_bytes"] / 2**20, dense_state_mib=dense["state_bytes"] / 2**20,
            state_ratio=r["state_bytes"] / dense["state_bytes"], peak_measure=measure,
            status="ok",
            note="peak = max over prepare() and 2 epochs of the method's last training phase; "
                 "train_peak = the 2 epochs alone (high-water mark reset after prepare); "
                 "state = parameters + buffers + cached module tensors + gradients + "
                 "optimizer state (distinct storages)"))
    return rows


# -- inference of the extracted subnetwork -------------------------------------------------------
def extracted(arch: str, method: str, data, device: torch.device, batch: int):
    """A method's network after every phase boundary, extract() and fold(), as run.py does
    (untrained: inference cost does not depend on the weights' values)."""
    from prunebench.training.masking import fold

    built = build(arch, method, data, device, batch)
    for phase in built.trainer.phases:
        built.trainer.setup_phase(phase)
        built.method.on_phase_end(built.model, phase)
    built.model.eval()
    built.method.extract(built.model)
    fold(built.model)
    return built.model


def inference(ctx: Context, device: torch.device, arch: str, size: int, batch: int,
              repeats: int, methods: list[str], note: str = "") -> list[dict[str, Any]]:
    """Eval-mode forward time of each method's extracted subnetwork relative to dense."""
    from prunebench.training.masking import layer_densities

    data = _device_data(device, batch, size)
    x = data.normalize(data.splits["train"][0][:batch])
    amp = device.type == "cuda"

    def forward_time(model: torch.nn.Module):
        def go() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                 enabled=amp):
                model(x)
        return lambda: timed(go, device)

    dense_model = extracted(arch, "dense", data, device, batch)
    dense_fn = forward_time(dense_model)
    dense_fn()
    common = dict(benchmark="inference", arch=arch, batch_size=batch, image_size=size,
                  repeats=repeats, clock=clock_name(device))
    rows = []
    for method in methods:
        if method == "dense":
            continue
        try:
            model = extracted(arch, method, data, device, batch)
        except Exception as e:  # noqa: BLE001
            rows.append(ctx.row(device, **common, method=method,
                                status=f"skipped: failed to extract: {_error(e)}"))
            continue
        clean = no_parametrizations_left(model)
        assert clean, f"{method}: parametrizations remain after extract + fold"
        layers = layer_densities(model)
        density = sum(int(r["nonzero"]) for r in layers) / sum(int(r["numel"]) for r in layers)
        fn = forward_time(model)
        fn()
        t_dense, t_method, ratios = paired(dense_fn, fn, repeats)
        ratio = median(ratios)
        rows.append(ctx.row(
            device, **common, method=method, parametrizations_left=not clean,
            density=density, subnet_forward_ms=1e3 * median(t_method),
            dense_forward_ms=1e3 * median(t_dense), ratio=ratio, ratio_range=spread(ratios),
            target=f"1 +- {INFERENCE_BAND:g}", target_met=abs(ratio - 1) <= INFERENCE_BAND,
            status="ok",
            note="extract + fold as run.py; asserted: no parametrization left (no mask "
                 "arithmetic); dense kernels on zeroed weights" + note))
        del model
    return rows
