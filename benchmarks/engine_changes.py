"""The engine's speed changes, each against the implementation it replaced (kept here as the
baseline), interleaved in one run: the batched augmentation (one gather instead of 4-D advanced
indexing + a flip pass; index_select instead of x[idx]). And a candidate that was measured and
not adopted: FixedMask multiplying by a cached float copy of its bool mask on CPU."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import (
    Context,
    PhaseStepper,
    build,
    clock_name,
    median,
    paired,
    spread,
    synthetic_prepared,
    timed,
)


def previous_augment(x: torch.Tensor, crop_padding: int, flip: bool,
                     generator: torch.Generator) -> torch.Tensor:
    """prunebench.data.augment as it was before commit 3acb27c: the baseline."""
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
    from prunebench.data import augment

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
    from prunebench.data import DeviceData
    from prunebench.masking import FixedMask

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
