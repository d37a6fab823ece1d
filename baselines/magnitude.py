"""Global magnitude pruning: `magnitude`, `magnitude_ft` and `magnitude_init`.

Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural Networks",
NeurIPS 2015: train, remove the smallest-magnitude weights, retrain the rest. The suite follows
the one-shot variants the 2021 paper compares with (Dupont, Sahbi, Michel, "Weight
Reparametrization for Budget-Aware Network Pruning", ICIP 2021): "MP" (`magnitude`: train dense,
keep the global top-K by |w|, no fine-tuning) and "MP+FT" (`magnitude_ft`: the same, then
fine-tune with the mask fixed). `magnitude_init` is the usual prune-at-initialisation control
(rank the initial |w|, then train the masked network); it empties whole layers at high sparsity
(layer collapse), which the engine records in metrics.json.

Deviations and decisions:
- One-shot, global threshold over every Conv2d/Linear weight (first and last layer included),
  exactly K kept; Han et al. prune per layer and iteratively.
- The fine-tuning recipe is not stated in the 2021 paper. Decision: a quarter of the recipe's
  epochs (`ft_epochs`) at the recipe's own learning rate (`ft_lr: null`), momentum, weight decay
  and schedule, restarted from the top: "learning-rate restarting" (Le & Hua, "Network Pruning
  That Matters: A Case Study on Retraining Variants", ICLR 2021), close to learning-rate
  rewinding (Renda, Frankle, Carbin, ICLR 2020), both of which beat fine-tuning at a small
  constant rate after one-shot pruning. Han et al. retrain at a lower rate, which suits their
  small iterative steps; after a one-shot 90 % cut it barely recovers (digits conv4, 20 + 5
  epochs: 66.1 % at lr/10 against 95.6 % at the recipe's lr). `ft_lr` sets another rate; the
  rate used is recorded as `method_ft_lr`.
- The dense phase of `magnitude_ft` is, seed for seed, the training of `magnitude`, so MP and MP+FT
  differ only by the fine-tuning.
- Shared dense phase (option `dense_from`, both methods): the folder of a finished `dense` run of
  the same seed and recipe; its saved network (`network.safetensors`) is loaded instead of
  training the dense phase, so every budget prunes one trained network. The fine-tuning epochs
  draw the randomness they would draw after the dense epochs: the result equals that of the
  run that trains its own dense phase (tests/test_window.py).
- With `selection=val`, `magnitude` selects the epoch on the *dense* network's validation accuracy
  and prunes that network; `magnitude_ft` selects within the fine-tuning phase.
- `magnitude_init` option `rescale` (off: the papers do not rescale) multiplies each layer's
  surviving weights by ||w|| / ||w * mask|| at pruning time, restoring the scale of the signal the
  sparse layer passes on (see masking.apply_global_topk).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunebench import paths
from prunebench.training.artifact import check_state, read_trained_state
from prunebench.training.masking import (
    apply_global_topk,
    attach_fixed_masks,
    budget_count,
    num_prunable,
    prunable_layers,
    stored_weight,
)
from prunebench.training.method import (
    MethodContext,
    MethodHparams,
    OptimGroup,
    Phase,
    PruningMethod,
    option,
)
from prunebench.training.registry import register_method


@dataclass
class MagnitudeHparams(MethodHparams):
    """The recipe is the dense one, pruning happens after it."""

    dense_from: str = option(
        "", "a finished `dense` run folder: prune its network, skip the dense phase")


@dataclass
class MagnitudeFtHparams(MethodHparams):
    dense_from: str = option(
        "", "a finished `dense` run folder: prune its network, skip the dense phase")
    ft_epochs: int | None = option(
        None, "papers silent; None: a quarter of the recipe's epochs", bounds="[0, inf)")
    ft_lr: float | None = option(
        None, "papers silent; None: the recipe's lr (LR restarting, Le 2021)",
        bounds="(0, inf)")


@dataclass
class MagnitudeInitHparams(MethodHparams):
    rescale: bool = option(False, "papers: no rescaling; True keeps each layer's weight norm")


def magnitude_scores(model: nn.Module) -> list[torch.Tensor]:
    """|w| of every prunable layer's stored weight, in layer order."""
    return [stored_weight(layer).detach().abs() for _, layer in prunable_layers(model)]


def load_dense(model: nn.Module, run_dir: str, ctx: MethodContext, method: str,
               last_epoch: bool) -> dict[str, Any]:
    """Put the trained weights of the finished dense run `run_dir` into `model` (before masks
    are attached), refusing a run of another method, dataset, arch, seed or training recipe,
    and with `last_epoch` one whose network is not that of its last planned epoch (early
    stopping or best-validation selection: a fine-tuned run's own dense phase has neither).
    Return what this run records of it (its folder, config digest, network sha256, recipe)."""
    expected = {"method": "dense", "seed": ctx.seed, **ctx.recipe}
    if last_epoch:
        expected["epoch_selected"] = ctx.train.epochs
    where = f"method {method} option dense_from={run_dir!r}"
    state, provenance = read_trained_state(Path(run_dir), expected, where)
    check_state(model, state, Path(run_dir) / paths.NETWORK)
    model.load_state_dict({k: v.to(ctx.device) for k, v in state.items()}, strict=True)
    return provenance


def prune_by_magnitude(model: nn.Module, sparsity: float, rescale: bool = False) -> list[float]:
    """Keep exactly the global top-K weights by |w| (FixedMasks must be attached)."""
    k = budget_count(num_prunable(model), sparsity)
    return apply_global_topk(model, magnitude_scores(model), k, rescale)


@register_method("magnitude")
class Magnitude(PruningMethod):
    """Train dense; at extraction keep the global top-K by |w| with no fine-tuning ("MP")."""

    hparams_cls = MagnitudeHparams
    paper = "Han et al. NeurIPS 2015; MP as in Dupont et al. ICIP 2021"

    def prepare(self, model: nn.Module) -> None:
        self.dense = (load_dense(model, self.hp.dense_from, self.ctx, "magnitude",
                                 last_epoch=False) if self.hp.dense_from else {})
        attach_fixed_masks(model)

    def phases(self) -> list[Phase]:
        return [Phase("train", 0 if self.hp.dense_from else self.ctx.train.epochs)]

    def extract(self, model: nn.Module) -> dict[str, Any]:
        prune_by_magnitude(model, self.ctx.sparsity)
        return {"pruned_when": "after training", **self.dense}


@register_method("magnitude_ft")
class MagnitudeFinetune(PruningMethod):
    """Train dense, prune to K by |w| at the end of that phase, fine-tune with the mask fixed."""

    hparams_cls = MagnitudeFtHparams
    paper = "Han et al. NeurIPS 2015; MP+FT as in Dupont et al. ICIP 2021"

    def ft_lr(self) -> float:
        return self.hp.ft_lr if self.hp.ft_lr is not None else self.ctx.train.lr

    def ft_epochs(self) -> int:
        if self.hp.ft_epochs is not None:
            return self.hp.ft_epochs
        return max(1, round(self.ctx.train.epochs / 4))

    def prepare(self, model: nn.Module) -> None:
        self.dense = (load_dense(model, self.hp.dense_from, self.ctx, "magnitude_ft",
                                 last_epoch=True) if self.hp.dense_from else {})
        attach_fixed_masks(model)

    def phases(self) -> list[Phase]:
        dense = self.ctx.train.epochs
        if self.hp.dense_from:
            return [Phase("dense", 0), Phase("finetune", self.ft_epochs(), epochs_before=dense)]
        return [Phase("dense", dense), Phase("finetune", self.ft_epochs())]

    def param_groups(self, model: nn.Module, phase: Phase) -> list[OptimGroup]:
        groups = super().param_groups(model, phase)
        if phase.name == "finetune":
            for g in groups:
                g.lr = self.ft_lr()
        return groups

    def on_phase_end(self, model: nn.Module, phase: Phase) -> None:
        if phase.name == "dense":
            prune_by_magnitude(model, self.ctx.sparsity)

    def extract(self, model: nn.Module) -> dict[str, Any]:
        return {"pruned_when": "after dense phase", "ft_lr": self.ft_lr(),
                "ft_epochs": self.ft_epochs(), **self.dense}


@register_method("magnitude_init")
class MagnitudeInit(PruningMethod):
    """Keep the global top-K initial weights by |w|, then train the masked network."""

    hparams_cls = MagnitudeInitHparams
    paper = "prune-at-init control: global |w| at initialisation (cf. Han et al. 2015)"

    def prepare(self, model: nn.Module) -> None:
        attach_fixed_masks(model)
        self.rescale_factors = prune_by_magnitude(model, self.ctx.sparsity, self.hp.rescale)

    def extract(self, model: nn.Module) -> dict[str, Any]:
        return {"pruned_when": "at initialisation",
                "rescale_factors": ";".join(f"{f:.4g}" for f in self.rescale_factors)}
