"""The engine's speed changes, each against the implementation it replaced (kept here as the
baseline), interleaved in one run: the batched augmentation (one gather instead of 4-D advanced
indexing + a flip pass; index_select instead of x[idx]); reparam computing h_t(w) once per step
(the budget loss reuses the forward's sums; its layers listed once, not walked per step);
edge-popup's top-k without a host sync per layer and step; evaluation with the counts kept on
the device and each parametrized weight computed once per pass. And a candidate that was
measured and not adopted: FixedMask multiplying by a cached float copy of its bool mask on CPU."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import (
    Context,
    PhaseStepper,
    build,
    clock_name,
    interleaved,
    median,
    paired,
    spread,
    synthetic_prepared,
    timed,
)


def previous_augment(x: torch.Tensor, crop_padding: int, flip: bool,
                     generator: torch.Generator) -> torch.Tensor:
    """prunebench.data.prepared.augment as it was before commit 3acb27c: the baseline."""
    b, _, h, w = x.shape
    dev = generator.device
    if crop_padding > 0:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        flip_mask = torch.rand(b, generator=generator, device=dev).to(x.device) < 0.5
        x = torch.where(flip_mask[:, None, None, None], x.flip(3), x)
    return x


def augmentation(ctx: Context, device: torch.device, n_images: int, batch: int, repeats: int
                 ) -> list[dict[str, Any]]:
    """One epoch of batches (gather + crop + flip, before normalisation), old vs new."""
    from prunebench.data.prepared import augment

    x = synthetic_prepared(n_images, 0, 32).tensors["train_x"].to(device)
    order = torch.randperm(n_images, device=device)
    steps = n_images // batch

    def epoch(new: bool):
        def go() -> None:
            gen = torch.Generator(device=device).manual_seed(0)
            for i in range(steps):
                idx = order[i * batch:(i + 1) * batch]
                if new:
                    augment(x.index_select(0, idx), 4, True, gen)
                else:
                    previous_augment(x[idx], 4, True, gen)
        return lambda: timed(go, device)

    old_fn, new_fn = epoch(False), epoch(True)
    old_fn(), new_fn()
    t_old, t_new, ratios = paired(old_fn, new_fn, repeats)
    return [ctx.row(device, benchmark="engine_change", case="augmentation: one gather",
                    batch_size=batch, images_per_epoch=steps * batch, repeats=repeats,
                    before_ms_per_batch=1e3 * median(t_old) / steps,
                    after_ms_per_batch=1e3 * median(t_new) / steps, ratio=median(ratios),
                    ratio_range=spread(ratios), ratio_of="after / before", clock=clock_name(device),
                    status="ok",
                    note="x.index_select + one gather with the flip folded in, vs x[idx] + 4-D "
                         "advanced indexing + torch.where flip; bit-identical outputs")]


def _cast_mask_forward(self: Any, weight: torch.Tensor) -> torch.Tensor:
    """Candidate FixedMask.forward: multiply by a float copy of the bool mask, renewed when the
    buffer changes (version counter) or moves (data pointer)."""
    key = (self.mask._version, self.mask.data_ptr(), weight.dtype)
    if getattr(self, "_bench_key", None) != key:
        self._bench_cast = self.mask.to(weight.dtype)
        self._bench_key = key
    return weight * self._bench_cast


def fixed_mask(ctx: Context, device: torch.device, arch: str, size: int, batch: int,
               steps: int, repeats: int) -> list[dict[str, Any]]:
    """Training step of `random` (a FixedMask method) with the engine's bool-mask multiply vs
    the cast-mask candidate (CPU kernels cast a bool operand through a temporary on every
    multiply, forward and backward)."""
    from prunebench.data.prepared import DeviceData
    from prunebench.training.masking import FixedMask

    current = FixedMask.forward
    data = DeviceData(synthetic_prepared(steps * batch, 0, size), device, 0.0)
    steppers = {name: PhaseStepper(build(arch, "random", data, device, batch), 0)
                for name in ("engine", "candidate")}

    def measure(name: str):
        def go() -> float:
            FixedMask.forward = current if name == "engine" else _cast_mask_forward
            try:
                return steppers[name].step_seconds()
            finally:
                FixedMask.forward = current
        return go

    engine, candidate = measure("engine"), measure("candidate")
    engine(), candidate()
    t_old, t_new, ratios = paired(engine, candidate, repeats)
    return [ctx.row(device, benchmark="engine_change",
                    case="candidate, not adopted: FixedMask cast mask", arch=arch,
                    method="random", batch_size=batch, image_size=size,
                    steps_per_measurement=steps, repeats=repeats,
                    before_ms_per_step=1e3 * median(t_old), after_ms_per_step=1e3 * median(t_new),
                    ratio=median(ratios), ratio_range=spread(ratios),
                    ratio_of="candidate / engine", clock=clock_name(device), status="ok",
                    note="weight * bool mask (the engine) vs weight * a cached float copy of the "
                         "mask; the copy costs 4 bytes per prunable weight")]


@torch.no_grad()
def previous_evaluate(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                      amp: bool) -> dict[str, float]:
    """training.metrics.evaluate before the change: the baseline (a host sync per batch, each
    parametrized weight recomputed per batch)."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = torch.zeros((), dtype=torch.float64)
    for x, y in batches:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        out = out.float()
        loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").double().cpu()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hits = top == y[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        total += len(y)
    if total == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan")}
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total,
            "loss": float(loss_sum) / total}


def _previous_reparam_forward(self: Any, weight: torch.Tensor) -> torch.Tensor:
    return weight * self.gate(weight) * self.mask


def _previous_reparam_regularizer(self: Any, model: nn.Module) -> torch.Tensor:
    from prunebench.methods.reparam import budget_loss

    return self.hp.lam * budget_loss(self.soft_cost(model), self.k, self.c_init)


def _previous_fast_topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    flat = score.detach().flatten()
    if k <= 0 or k >= flat.numel():
        return torch.full_like(score, k > 0, dtype=torch.bool)
    threshold = torch.topk(flat, k, sorted=False).values.min()
    keep = flat > threshold
    ties = torch.nonzero(flat == threshold).flatten()
    keep[ties[: k - int(keep.sum())]] = True
    return keep.view_as(score)


@contextmanager
def previous_code(method: str) -> Iterator[None]:
    """Swap in the code a method's speed change replaced (reparam: h_t(w) computed again by the
    budget loss, layers walked per step; edgepopup: top-k with host syncs)."""
    if method == "reparam":
        from prunebench.methods.reparam import BudgetReparam, Reparam

        saved = [(BudgetReparam, "forward", _previous_reparam_forward),
                 (Reparam, "regularizer", _previous_reparam_regularizer)]
    elif method == "edgepopup":
        import prunebench.baselines.edgepopup as module

        saved = [(module, "fast_topk_mask", _previous_fast_topk_mask)]
    else:
        raise ValueError(f"no previous code kept for {method!r}")
    current = [getattr(owner, name) for owner, name, _ in saved]
    for owner, name, old in saved:
        setattr(owner, name, old)
    try:
        yield
    finally:
        for (owner, name, _), now in zip(saved, current, strict=True):
            setattr(owner, name, now)


def method_step(ctx: Context, device: torch.device, method: str, arch: str, size: int,
                batch: int, steps: int, repeats: int) -> list[dict[str, Any]]:
    """Training step of `method` with its previous code vs now, each also as a ratio to dense
    (dense, before, after interleaved in one run)."""
    from prunebench.data.prepared import DeviceData

    data = DeviceData(synthetic_prepared(steps * batch, 0, size), device, 0.0,
                      channels_last=device.type == "cuda")
    steppers = {name: PhaseStepper(build(arch, m, data, device, batch), 0)
                for name, m in (("dense", "dense"), ("before", method), ("after", method))}

    def measure(name: str):
        def go() -> float:
            if name != "before":
                return steppers[name].step_seconds()
            with previous_code(method):
                return steppers[name].step_seconds()
        return go

    fns = [measure(n) for n in ("dense", "before", "after")]
    for fn in fns:
        fn()
    dense, before, after = interleaved(fns, repeats)
    ratios = [a / b for a, b in zip(after, before, strict=True)]
    return [ctx.row(device, benchmark="engine_change", case=CHANGE_CASES[method], arch=arch,
                    method=method, batch_size=batch, image_size=size,
                    steps_per_measurement=steps, repeats=repeats,
                    before_ms_per_step=1e3 * median(before),
                    after_ms_per_step=1e3 * median(after),
                    dense_ms_per_step=1e3 * median(dense),
                    before_vs_dense=median(b / d for b, d in zip(before, dense, strict=True)),
                    after_vs_dense=median(a / d for a, d in zip(after, dense, strict=True)),
                    ratio=median(ratios), ratio_range=spread(ratios), ratio_of="after / before",
                    clock=clock_name(device), status="ok", note=CHANGE_NOTES[method])]


CHANGE_CASES = {"reparam": "reparam: h_t(w) once per step",
                "edgepopup": "edgepopup: top-k without host sync"}
CHANGE_NOTES = {
    "reparam": "budget loss sums the gates the forward computed (was: h_t(w) again over every "
               "layer, the layers found by walking the model each step); same loss, gradients "
               "equal up to float summation order",
    "edgepopup": "ties of the k-th score counted with a cumsum on the device (was: nonzero + "
                 "int(sum) per layer and forward, a host sync each on CUDA); identical masks",
}


def evaluation(ctx: Context, device: torch.device, method: str, arch: str, size: int,
               n_images: int, batch: int, repeats: int) -> list[dict[str, Any]]:
    """One evaluation pass over `n_images` (eval batches of `batch`), previous code vs now."""
    from prunebench.data.prepared import DeviceData
    from prunebench.training.metrics import evaluate

    data = DeviceData(synthetic_prepared(batch, n_images, size), device, 0.0,
                      channels_last=device.type == "cuda")
    model = build(arch, method, data, device, batch).model
    amp = device.type == "cuda"

    def measure(fn):
        return lambda: timed(lambda: fn(model, data.eval_batches("test", batch), amp), device)

    before, after = measure(previous_evaluate), measure(evaluate)
    before(), after()
    t_old, t_new, ratios = paired(before, after, repeats)
    return [ctx.row(device, benchmark="engine_change", case="evaluation: device-side counts, "
                    "weights computed once", arch=arch, method=method, batch_size=batch,
                    image_size=size, images=n_images, repeats=repeats,
                    before_ms_per_pass=1e3 * median(t_old), after_ms_per_pass=1e3 * median(t_new),
                    ratio=median(ratios), ratio_range=spread(ratios), ratio_of="after / before",
                    clock=clock_name(device), status="ok",
                    note="counts and loss summed on the device, one host copy per pass (was: "
                         "int()/cpu() per batch); parametrize.cached(): every parametrized "
                         "weight computed once per pass (was: per batch); identical results")]
