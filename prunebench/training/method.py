"""The interface every pruning method implements; the engine owns everything else.

A method decides which tensors train (and with which optimiser settings), how each prunable
layer's effective weight is computed (a parametrization attached in `prepare`), any extra loss,
what happens between training phases, and how the final hard mask is extracted.

Rule for implementers: create every parametrization, parameter and buffer in `prepare`; later
hooks only change values. A checkpoint is then just `model.state_dict()` plus `state_dict()`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from prunebench.errors import PrunebenchError
from prunebench.plan.values import check_fields, coerce
from prunebench.plan.values import option as option  # method files import it from here

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class OptimGroup:
    """Parameters that share one optimiser and its settings."""

    params: list[nn.Parameter]
    name: str
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str | None = None
    """This group's lr schedule (cosine | step | constant); None follows the run's schedule."""
    nesterov: bool = False
    """Nesterov momentum (SGD only)."""
    stage: int = 0
    """Groups of a later stage step after a forward/backward pass of their own on the same batch
    (ASLP's two optimisers under PyTorch Lightning 1.x); all 0: one pass, every group steps."""


@dataclass
class Phase:
    """A stretch of training with its own optimiser and schedule (e.g. dense, then fine-tune)."""

    name: str
    epochs: int
    epochs_before: int = 0
    """Epochs trained before this phase in another run (a shared dense network): this phase's
    epochs draw the randomness they would draw after them, so results equal the one-run ones."""


@dataclass
class TrainSettings:
    """The parts of the run's training recipe a method may need to build its groups."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    optimizer: Literal["sgd", "adam"]
    nesterov: bool = False
    weight_decay_scope: Literal["weights", "all"] = "weights"
    """weights: only Conv/Linear weights decay; all: biases and norms too (SynFlow)."""


def weight_groups(params: list[nn.Parameter], t: TrainSettings) -> list[OptimGroup]:
    """The run's optimiser groups for trained network tensors: matrices and kernels decay,
    biases and norms (1-d) only with `weight_decay_scope=all`; both with the run's Nesterov."""
    decay = [p for p in params if p.ndim > 1 or t.weight_decay_scope == "all"]
    kept = {id(p) for p in decay}
    no_decay = [p for p in params if id(p) not in kept]
    groups = [OptimGroup(decay, "weights", t.optimizer, t.lr, t.momentum, t.weight_decay,
                         nesterov=t.nesterov)]
    if no_decay:
        groups.append(OptimGroup(no_decay, "biases_norms", t.optimizer, t.lr, t.momentum, 0.0,
                                 nesterov=t.nesterov))
    return groups


@dataclass
class MethodContext:
    """What the engine lends a method: budget, data samples and the loss."""

    sparsity: float | None
    num_classes: int
    device: torch.device
    seed: int
    train: TrainSettings
    sample_batches: Callable[[int, int], Iterator[Batch]] = field(repr=False)
    """`sample_batches(per_class, batch_size)`: class-balanced, normalised, un-augmented
    training batches (validation split excluded), deterministic given the run seed."""
    scoring_batches: Callable[[int, int, bool, bool], Iterator[Batch]] | None = field(
        default=None, repr=False)
    """`scoring_batches(count, batch_size, balanced, augment)`: `count` training images,
    class-balanced or drawn uniformly (SynFlow), with the run's crop/flip when `augment`;
    normalised, deterministic given the run seed (None where a test lends no data)."""
    evaluate: Callable[[nn.Module, str], dict[str, float]] | None = field(default=None,
                                                                         repr=False)
    """`evaluate(model, split)`: the engine's own evaluation of `model` on 'val' or 'test'
    (top1, top5 in %, loss; eval mode), for a method whose reported figure needs more than one
    evaluation at extract time (e.g. a mean over sampled masks). Never for training or selection."""
    recipe: dict[str, Any] = field(default_factory=dict, repr=False)
    """The run's dataset, arch, seed and every `train_*` setting, as its metrics.json records
    them: what a finished run whose network this one starts from must share
    (artifact.read_trained_state)."""


@dataclass
class MethodHparams:
    """Base of every method's hyper-parameter dataclass; defaults are the papers' values."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> MethodHparams:
        """Build from a plain dict, naming any unknown key and the allowed ones."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise PrunebenchError(
                f"{where}: unknown option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(names)) or '(none)'}"
            )
        typed = {}
        for key, value in values.items():
            typed[key] = coerce(value, names[key].type, f"{where}.{key}")
        return cls(**typed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_values(self, where: str) -> None:
        """Refuse a value outside an option's declared choices or range, naming it and what is
        allowed."""
        check_fields(self, f"{where} option ")


class PruningMethod:
    """Base class: the defaults describe plain dense training with every parameter trained."""

    name: ClassVar[str] = ""
    hparams_cls: ClassVar[type[MethodHparams]] = MethodHparams
    budgeted: ClassVar[bool] = True
    """True when the method must keep exactly K = round((1 - sparsity) * N) prunable weights."""
    budget_option: ClassVar[str] = ""
    """For a method without a budget: the name of a bool option (off by default) that gives it
    one. Declared, not computed, so the workflow reads it without torch (plan/catalogue.py)."""
    frozen_weights: ClassVar[bool] = False
    """True for methods that learn only a topology over the random initial weights."""
    paper: ClassVar[str] = ""

    def __init__(self, hparams: MethodHparams, ctx: MethodContext) -> None:
        hparams.check_values(f"method {self.name}")
        self.hp = hparams
        self.ctx = ctx

    def is_budgeted(self) -> bool:
        """Whether this configured instance targets an exact budget (`budget_option` may
        switch it on)."""
        return self.budgeted or bool(self.budget_option and getattr(self.hp, self.budget_option))

    def redraws_weights(self) -> bool:
        """Whether `prepare` replaces the network's weights by its own random ones (a
        frozen-weight method's init), which would discard a run's `init_from` weights."""
        return False

    def prepare(self, model: nn.Module) -> None:
        """Before training: attach parametrizations, score at init, re-initialise weights."""

    def phases(self) -> list[Phase]:
        """The training phases; the default is one phase of the recipe's epochs."""
        return [Phase("train", self.ctx.train.epochs)]

    def param_groups(self, model: nn.Module, phase: Phase) -> list[OptimGroup]:
        """Trainable tensors of `phase`; anything not listed is frozen by the engine."""
        return weight_groups(list(model.parameters()), self.ctx.train)

    def samples_masks_in_eval(self) -> bool:
        """True while evaluation draws a fresh random mask at every forward pass (ASLP's
        validation): the engine then recomputes the weights per batch, not once per pass."""
        return False

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        """Extra loss added to the cross-entropy at every training step (None: nothing)."""
        return None

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Extra per-epoch numbers for history.csv (e.g. current emergent density)."""
        return {}

    def on_phase_end(self, model: nn.Module, phase: Phase) -> None:
        """Between phases, e.g. prune after dense training before fine-tuning."""

    def extract(self, model: nn.Module) -> dict[str, Any]:
        """Put every parametrization in its final hard state (the engine then folds them into
        the weights) and return method-specific metrics for `metrics.json`."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Method state living outside the model, saved in each checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
