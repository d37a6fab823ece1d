"""The training loop shared by every method: optimisers and schedules per phase, device-side
data, bf16 autocast, channels_last and torch.compile on the GPU paths (training/cuda.py),
checkpoints at epoch ends (at most every `checkpoint_every_s`) and phase ends, exact resume,
preemption checkpoints on SIGTERM/SIGUSR1, and NaN detection.

An epoch is three steps: `begin_epoch` (its random streams and sample order, fresh or from the
preempted epoch's `EpochState`), `run_steps` (the optimiser steps, nothing read back from the
device) and `end_epoch` (the epoch's sums read once, validation, history row, checkpoint)."""
from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from prunebench import console
from prunebench.data.prepared import DeviceData
from prunebench.errors import Preempted, TrainingDiverged
from prunebench.plan.config import TrainConfig
from prunebench.training import cuda
from prunebench.training.method import OptimGroup, Phase, PruningMethod
from prunebench.training.metrics import evaluate

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# The history column of `test_each_epoch`: the test accuracy after each epoch (a diagnostic).
EPOCH_TEST = "epoch_test_top1"
# Offset of the validation-augmentation stream from an epoch's seed (the epoch uses +0, +1).
VAL_AUGMENT_STREAM = 2


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch draws its randomness from (seed, epoch), so a resumed run replays exactly."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1)


def build_optimizers(groups: list[OptimGroup]) -> list[torch.optim.Optimizer]:
    """One optimiser per stage and kind (SGD, Adam), each with its own parameter groups, in
    stage order (`optimizer_stages`)."""
    by_kind: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for g in groups:
        if not g.params:
            continue
        entry: dict[str, Any] = {"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay,
                                 "name": g.name, "schedule": g.schedule, "stage": g.stage}
        if g.optimizer == "sgd":
            entry["momentum"] = g.momentum
            entry["nesterov"] = g.nesterov
        by_kind.setdefault((g.stage, g.optimizer), []).append(entry)
    optimizers: list[torch.optim.Optimizer] = []
    for (_, kind), entries in sorted(by_kind.items()):
        if kind == "sgd":
            optimizers.append(torch.optim.SGD(entries, lr=entries[0]["lr"]))
        elif kind == "adam":
            optimizers.append(torch.optim.Adam(entries, lr=entries[0]["lr"]))
        else:
            raise ValueError(f"unknown optimizer {kind!r}; allowed: sgd, adam")
    return optimizers


def optimizer_stages(optimizers: list[torch.optim.Optimizer]
                     ) -> list[list[torch.optim.Optimizer]]:
    """The optimisers grouped by their groups' stage, in stage order: each stage gets a forward
    and backward pass of its own on every batch (one stage: a single pass)."""
    by_stage: dict[int, list[torch.optim.Optimizer]] = {}
    for o in optimizers:
        by_stage.setdefault(int(o.param_groups[0].get("stage", 0)), []).append(o)
    return [by_stage[k] for k in sorted(by_stage)]


def lr_factor(schedule: str, step: int, total_steps: int, drop_steps: tuple[int, ...] = (),
              drop_rate: float = 0.1) -> float:
    """Multiplier of every base learning rate at `step` of a phase of `total_steps`; multistep
    multiplies by `drop_rate` at each of `drop_steps` (PyTorch's MultiStepLR, counted in
    optimiser steps from the phase's start)."""
    if schedule == "multistep":
        return drop_rate ** sum(step >= d for d in drop_steps)
    if schedule == "constant" or total_steps <= 0:
        return 1.0
    frac = min(step / total_steps, 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "step":
        return 0.1 ** sum(frac >= m for m in (0.5, 0.75))
    raise ValueError(f"unknown schedule {schedule!r}; allowed: cosine, step, multistep, "
                     "constant")


def best_epoch_test(history: list[dict[str, Any]]) -> dict[str, Any]:
    """With `test_each_epoch`: the best per-epoch test accuracy of the last phase and its epoch
    (Ramanujan's code logs it beside the final one); None for both otherwise."""
    rows = [r for r in history if r.get(EPOCH_TEST) is not None]
    rows = [r for r in rows if r["phase"] == rows[-1]["phase"]] if rows else []
    best = max(rows, key=lambda r: r[EPOCH_TEST], default=None)
    return {"test_top1_best_epoch": None if best is None else best[EPOCH_TEST],
            "test_best_epoch": None if best is None else best["epoch"]}


@dataclass
class LoopState:
    """Where training stands; everything in it goes into the checkpoint."""

    phase: int = 0
    epoch: int = 0  # epochs finished within the current phase
    global_epoch: int = 0  # epochs finished over all phases
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = -1.0
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    train_seconds: float = 0.0


@dataclass
class EpochState:
    """The epoch in progress, as one record: the steps done, the running sums, its sample order
    and random-stream states. A preemption saves it (the checkpoint's `mid_epoch`) and the
    resumed run's `begin_epoch` continues from it."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    elapsed: float = 0.0
    order: torch.Tensor | None = None  # the epoch's sample order (CPU in a checkpoint)
    gen_state: torch.Tensor | None = None  # the data generator's state (a CPU byte tensor)
    gen_device: str = "cpu"  # the device type of the generator `gen_state` belongs to
    cpu_rng: torch.Tensor | None = None
    cuda_rng: torch.Tensor | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        return {"gen_state": self.gen_state, "gen_device": self.gen_device,
                "cpu_rng": self.cpu_rng, "cuda_rng": self.cuda_rng,
                "order": None if self.order is None else self.order.cpu(), "step": self.step,
                "loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen,
                "elapsed": self.elapsed}

    @classmethod
    def from_checkpoint(cls, mid: dict[str, Any]) -> EpochState:
        return cls(step=mid["step"], loss_sum=mid["loss_sum"], correct=mid["correct"],
                   seen=mid["seen"], elapsed=mid["elapsed"], order=mid["order"],
                   gen_state=mid["gen_state"], gen_device=mid.get("gen_device", "cpu"),
                   cpu_rng=mid["cpu_rng"], cuda_rng=mid.get("cuda_rng"))


@dataclass
class Epoch:
    """An epoch being trained: its record, generator and batches, and the loss and hit counts
    summed on the device (read back once, at its end or at a preemption)."""

    phase: Phase
    record: EpochState
    generator: torch.Generator
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    steps: int  # steps per epoch
    total_steps: int  # steps of the phase
    loss_acc: torch.Tensor
    correct_acc: torch.Tensor
    started: float
    lr_factor: float = 1.0

    def settled(self) -> EpochState:
        """The record with the device sums and the time so far added (one host sync)."""
        r = self.record
        return EpochState(step=r.step, loss_sum=r.loss_sum + float(self.loss_acc),
                          correct=r.correct + int(self.correct_acc), seen=r.seen,
                          elapsed=r.elapsed + time.perf_counter() - self.started, order=r.order,
                          gen_device=self.generator.device.type)


class SignalFlag:
    """Records a preemption signal; the loop checkpoints and stops at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalFlag:
        for s in PREEMPT_SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class Trainer:
    """Runs a method's phases on a model; `save(state_dict)` persists a checkpoint atomically.
    `accel` says how it computes (default: decided from `cfg` and the device)."""

    def __init__(self, model: nn.Module, method: PruningMethod, data: DeviceData,
                 cfg: TrainConfig, seed: int, device: torch.device,
                 save: Callable[[dict[str, Any]], None], log: Callable[[str], None],
                 accel: cuda.Accel | None = None) -> None:
        self.model = model
        self.method = method
        self.data = data
        self.cfg = cfg
        self.seed = seed
        self.device = device
        self.save = save
        self.log = log
        self.accel = accel or cuda.accel_for(cfg, device)
        self.amp = self.accel.amp
        self.phases = method.phases()
        self.state = LoopState()
        backend = self.accel.compile_backend
        self.forward = torch.compile(model, backend=backend) if backend else model
        self._resume_epoch: EpochState | None = None
        self._pending_optimizers: list[dict[str, Any]] | None = None
        self._saved_at: float | None = None  # when this process last saved a checkpoint

    # -- checkpointing -------------------------------------------------------------------
    def checkpoint(self, optimizers: list[torch.optim.Optimizer],
                   mid_epoch: EpochState | None = None) -> dict[str, Any]:
        s = self.state
        return {
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers],
            "loop": {"phase": s.phase, "epoch": s.epoch, "global_epoch": s.global_epoch,
                     "history": s.history, "best_val": s.best_val, "best_epoch": s.best_epoch,
                     "train_seconds": s.train_seconds},
            "best_state": s.best_state,
            "mid_epoch": None if mid_epoch is None else mid_epoch.to_checkpoint(),
        }

    def save_checkpoint(self, optimizers: list[torch.optim.Optimizer],
                        mid_epoch: EpochState | None = None, due: bool = True) -> None:
        """Save a checkpoint when `due` or when none was saved for `checkpoint_every_s`
        seconds (the first epoch end of a process always saves one)."""
        now = time.perf_counter()
        interval = self.cfg.checkpoint_every_s
        if due or self._saved_at is None or now - self._saved_at >= interval:
            self.save(self.checkpoint(optimizers, mid_epoch))
            self._saved_at = now

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint (loaded to the CPU); keeps no reference to `ckpt`."""
        self.model.load_state_dict(ckpt["model"])
        self.method.load_state_dict(ckpt["method"])
        loop = ckpt["loop"]
        self.state = LoopState(phase=loop["phase"], epoch=loop["epoch"],
                               global_epoch=loop["global_epoch"], history=list(loop["history"]),
                               best_val=loop["best_val"], best_epoch=loop["best_epoch"],
                               best_state=ckpt["best_state"],
                               train_seconds=loop["train_seconds"])
        self._pending_optimizers = list(ckpt["optimizers"])
        mid = ckpt.get("mid_epoch")
        self._resume_epoch = None if mid is None else EpochState.from_checkpoint(mid)

    # -- the loop ------------------------------------------------------------------------
    def setup_phase(self, phase: Phase) -> list[torch.optim.Optimizer]:
        """Freeze everything the method does not train in `phase`; its optimisers (restored
        from a checkpoint when one is pending)."""
        groups = self.method.param_groups(self.model, phase)
        trainable = {id(p) for g in groups for p in g.params}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in trainable)
        optimizers = build_optimizers(groups)
        for o in optimizers:
            for g in o.param_groups:
                g["initial_lr"] = g["lr"]
        pending, self._pending_optimizers = self._pending_optimizers, None
        if pending:
            for o, sd in zip(optimizers, pending, strict=True):
                o.load_state_dict(sd)
        return optimizers

    def _set_lr(self, optimizers: list[torch.optim.Optimizer], step: int, total: int,
                steps_per_epoch: int) -> float:
        drops = tuple(e * steps_per_epoch for e in self.cfg.drop_epochs())
        factor = lr_factor(self.cfg.schedule, step, total, drops, self.cfg.lr_drop_rate)
        for o in optimizers:
            for g in o.param_groups:
                own = g.get("schedule")
                g["lr"] = g["initial_lr"] * (factor if own is None else lr_factor(own, step, total))
        return factor

    def patience_exhausted(self) -> bool:
        """Early stopping (ASLP main.py): `patience` epochs of the last phase without a better
        validation accuracy. Derived from the saved state, so a resumed run stops alike."""
        s = self.state
        return (self.cfg.patience > 0 and s.phase == len(self.phases) - 1 and s.best_epoch > 0
                and s.global_epoch - s.best_epoch >= self.cfg.patience)

    def run(self) -> LoopState:
        """Train every remaining phase and epoch; raise Preempted or TrainingDiverged."""
        with SignalFlag() as flag:
            while self.state.phase < len(self.phases):
                phase = self.phases[self.state.phase]
                optimizers = self.setup_phase(phase)
                while self.state.epoch < phase.epochs and not self.patience_exhausted():
                    self.train_epoch(phase, optimizers, flag)
                if self.patience_exhausted():
                    self.log(f"early stopping after epoch {self.state.global_epoch}: no better "
                             f"validation accuracy for {self.cfg.patience} epochs (best: epoch "
                             f"{self.state.best_epoch})")
                self.method.on_phase_end(self.model, phase)
                self.state.phase += 1
                self.state.epoch = 0
                self._pending_optimizers = None
                if self.state.phase < len(self.phases):
                    self.save_checkpoint([])
                if flag.signum is not None:  # arrived after the epoch's own check
                    raise Preempted(f"signal {flag.signum} received; checkpoint saved after "
                                    f"epoch {self.state.global_epoch}")
        if self.cfg.selection == "val" and self.state.best_state is not None:
            self.model.load_state_dict(self.state.best_state)
        return self.state

    def train_epoch(self, phase: Phase, optimizers: list[torch.optim.Optimizer],
                    flag: SignalFlag) -> None:
        """One epoch of `phase`: steps, per-epoch validation and history row, checkpoint; a
        preemption signal in `flag` saves a mid-epoch checkpoint and raises Preempted."""
        epoch = self.begin_epoch(phase)
        self.run_steps(epoch, optimizers, flag)
        self.end_epoch(epoch, optimizers, flag)

    def begin_epoch(self, phase: Phase) -> Epoch:
        """The epoch's random streams, sample order and batches: seeded from (seed, epoch), or
        continued from the preempted epoch's record when resuming."""
        s, cfg = self.state, self.cfg
        gen = torch.Generator(device=self.device)
        steps = max(self.data.size("train") // cfg.batch_size, 1)
        seed = epoch_seed(self.seed, s.global_epoch + phase.epochs_before)
        record, self._resume_epoch = self._resume_epoch, None
        if record is None:
            record = EpochState()
            gen.manual_seed(seed)
            torch.manual_seed(seed + 1)
        else:
            self._restore_rng(gen, record, seed=seed + record.step)
        order = None if record.order is None else record.order.to(self.device)
        batches, record.order = self.data.train_batches_from(cfg.batch_size, gen,
                                                             cfg.crop_padding, cfg.flip, order,
                                                             record.step)
        self.model.train()
        bar = tqdm(batches, total=steps, initial=record.step, leave=False,
                   desc=f"{phase.name} epoch {s.global_epoch + 1}",
                   disable=not console.progress_bars())
        return Epoch(phase, record, gen, iter(bar), steps, steps * phase.epochs,
                     torch.zeros((), device=self.device, dtype=torch.float64),
                     torch.zeros((), device=self.device, dtype=torch.int64),
                     time.perf_counter())

    def run_steps(self, epoch: Epoch, optimizers: list[torch.optim.Optimizer],
                  flag: SignalFlag) -> None:
        """The epoch's remaining optimiser steps; a signal saves the epoch's record and raises
        Preempted at the next step boundary (unless the epoch has just ended)."""
        record = epoch.record
        for x, y in epoch.batches:
            epoch.lr_factor = self._set_lr(optimizers, self.state.epoch * epoch.steps
                                           + record.step, epoch.total_steps, epoch.steps)
            self.train_step(x, y, optimizers, epoch)
            record.step += 1
            if flag.signum is not None and record.step < epoch.steps:
                self._preempt(epoch, optimizers, flag.signum)

    def train_step(self, x: torch.Tensor, y: torch.Tensor,
                   optimizers: list[torch.optim.Optimizer], epoch: Epoch) -> None:
        """One batch: for each stage of the optimisers (`optimizer_stages`: one unless a method
        asks for more) a forward pass, a backward pass into that stage's parameters and a step
        of its optimisers; the first pass's loss and hits are summed on the device."""
        stages = optimizer_stages(optimizers)
        for i, stage in enumerate(stages):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.forward(x)
                loss = nn.functional.cross_entropy(out.float(), y)
                reg = self.method.regularizer(self.model)
                total = loss if reg is None else loss + reg
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            inputs = ([p for o in stage for g in o.param_groups for p in g["params"]]
                      if len(stages) > 1 else None)
            total.backward(inputs=inputs)
            for o in stage:
                o.step()
            if i == 0:
                epoch.loss_acc += total.detach().double() * len(y)
                epoch.correct_acc += (out.argmax(1) == y).sum()
        epoch.record.seen += len(y)

    def end_epoch(self, epoch: Epoch, optimizers: list[torch.optim.Optimizer],
                  flag: SignalFlag) -> None:
        """Read the epoch's sums (stop if the loss diverged), validate, add the history row and
        save a checkpoint; raise Preempted if a signal arrived."""
        s, cfg, phase = self.state, self.cfg, epoch.phase
        done = epoch.settled()
        if not math.isfinite(done.loss_sum):
            raise TrainingDiverged(
                f"loss became {done.loss_sum / max(done.seen, 1)} in epoch {s.global_epoch + 1} "
                f"(phase {phase.name}); the last good checkpoint is kept")
        s.epoch += 1
        s.global_epoch += 1
        s.train_seconds += done.elapsed
        row: dict[str, Any] = {
            "epoch": s.global_epoch, "phase": phase.name,
            "train_loss": done.loss_sum / max(done.seen, 1),
            "train_top1": 100.0 * done.correct / max(done.seen, 1), "lr_factor": epoch.lr_factor,
            "epoch_seconds": done.elapsed,
        }
        if self.data.size("val"):
            val = self.evaluate_split("val", s.global_epoch)
            row["val_top1"] = val["top1"]
            row["val_loss"] = val["loss"]
            is_last_phase = s.phase == len(self.phases) - 1
            if cfg.selection == "val" and is_last_phase and val["top1"] > s.best_val:
                s.best_val, s.best_epoch = val["top1"], s.global_epoch
                s.best_state = {k: v.detach().clone().cpu()
                                for k, v in self.model.state_dict().items()}
        if cfg.test_each_epoch:
            row[EPOCH_TEST] = self.evaluate_split("test", s.global_epoch)["top1"]
        row.update(self.method.epoch_metrics(self.model))
        s.history.append(row)
        self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in row.items()))
        self.save_checkpoint(optimizers, due=flag.signum is not None)
        if flag.signum is not None:
            raise Preempted(f"signal {flag.signum} received; checkpoint saved after epoch "
                            f"{s.global_epoch}")

    def evaluate_split(self, split: str, epoch: int, final: bool = False) -> dict[str, float]:
        """Accuracy of the network as it stands on 'val' (augmented like training batches with
        `val_augment`, redrawn per epoch) or 'test'; weights are recomputed per batch while the
        method samples masks in eval (ASLP's validation). Per epoch in the run's precision; a
        `final` (reported) evaluation in fp32 on contiguous inputs, as `load_run` evaluates."""
        cfg = self.cfg
        gen = None
        if split == "val" and cfg.val_augment:
            gen = torch.Generator(device=self.device).manual_seed(
                epoch_seed(self.seed, epoch) + VAL_AUGMENT_STREAM)
        batches = self.data.eval_batches(split, cfg.eval_batch_size, cfg.crop_padding, cfg.flip,
                                         gen, channels_last=False if final else None)
        return evaluate(self.model, batches, self.amp and not final,
                        cached=not self.method.samples_masks_in_eval())

    def _restore_rng(self, gen: torch.Generator, record: EpochState, seed: int) -> None:
        """Continue the interrupted epoch's random streams. A generator state only fits a
        generator of the device type it came from: a checkpoint saved on another device type
        (CUDA -> CPU or back) continues with streams seeded from the epoch and step, logged."""
        if record.gen_device != self.device.type:
            gen.manual_seed(seed)
            torch.manual_seed(seed + 1)
            self.log(f"mid-epoch checkpoint saved on {record.gen_device}, resumed on "
                     f"{self.device.type}: its random streams cannot continue, so the rest of the "
                     f"epoch draws from fresh ones (seed {seed}); the run is no longer bitwise "
                     "reproducible")
            return
        # States are CPU byte tensors (the checkpoint is loaded to the CPU), as set_state needs.
        gen.set_state(record.gen_state.cpu())
        torch.set_rng_state(record.cpu_rng.cpu())
        cuda.set_rng_state(self.device, record.cuda_rng)

    def _preempt(self, epoch: Epoch, optimizers: list[torch.optim.Optimizer],
                 signum: int) -> None:
        """Save the epoch's record (sums read back, random-stream states) and stop."""
        record = epoch.settled()
        record.gen_state = epoch.generator.get_state()
        record.cpu_rng = torch.get_rng_state()
        record.cuda_rng = cuda.rng_state(self.device)
        self.save_checkpoint(optimizers, record)
        raise Preempted(f"signal {signum} received; checkpoint saved at step {record.step} of "
                        f"epoch {self.state.global_epoch + 1}")
