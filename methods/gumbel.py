"""`gumbel`: subnetwork extraction from frozen random weights with Gumbel-Softmax.

Paper: R. Dupont, M. A. Alaoui, H. Sahbi, A. Lebois, "Extracting Effective Subnetworks with
Gumbel-Softmax", ICIP 2022, arXiv:2202.12986 (method section: Gumbel-Softmax topology sampling,
then the smart rescale; experiments: the CIFAR-10 chart of the authors' poster and the CIFAR-100
table). Reference code: github.com/N0ciple/ASLP — `strategies/ASLP/layer_functions.py` (the
sampled mask and the scale), `strategies/ASLP/pruning_functions.py` (`prune_net`),
`layer_modules.py` (initialisation and biases), `main.py` (optimiser, early stopping, test of the
best-validation checkpoint), `data_modules.py` (augmentation and normalisation). Equation numbers
are not cited: the papers' full text was not available offline; the formulas follow the paper's
method section and the code above (docs/methods/gumbel.md).

What the paper does, and this file does:
- Weights (and biases) stay at their random initialisation; only a topology is learned.
  Each prunable weight w has one real logit m, initialised to 0 (keep probability 1/2).
- Training forward: the mask is a hard straight-through Gumbel-Softmax sample over the two logits
  [m, 0] (the "arbitrarily shifted log parametrization", ASLP): the forward value is the hard
  0/1 sample, the gradient that of the soft sample sigmoid((m + g1 - g2) / tau), tau = 1, one
  fresh sample per weight per forward pass, shared by the whole batch.
- Smart rescale: one learned scalar s_l per layer (init 1), w_eff = s_l * (w * mask), with its
  own SGD (lr 1e-3, momentum 0.9). Logits: SGD lr 50, momentum 0.9, no weight decay.
- Extraction: keep a weight iff m >= 0 and fold s_l into the kept weights (ASLP's prune_net).
  Sparsity is emergent: the run records what was reached.

Decisions where the paper is silent, and deviations:
- The two-way Gumbel-Softmax over [m, 0] is sampled as sigmoid((m + L) / tau) with one logistic
  variable L = log u - log(1 - u) per weight: g1 - g2 of two Gumbel(0, 1) draws is exactly
  Logistic(0, 1), so the distribution and gradient are those of the paper at half the random
  numbers. The hard value is (m + L >= 0) and the straight-through sum is written so the forward
  value is exactly 0 or 1 (hard + (soft - soft.detach())).
- The noise comes from torch's global generator, which the engine seeds per epoch and saves in
  mid-epoch checkpoints, so a resumed run draws the same masks.
- Initialisation is drawn on the CPU from a generator seeded with the run seed, then copied to
  the device: the same seed gives the same frozen weights on CPU and GPU.
- `signed_constant` follows the ASLP code: sign(w) * std(layer) of the Kaiming draw. ASLP sets
  it in every layer but then re-initialises its Linear layers (`PrunableLinear.reset_parameters`),
  so only convolutions keep it: `signed_constant_scope=conv` reproduces that, `all` (default)
  applies it everywhere, as the paper describes it.
- `frozen_bias=true` gives every layer ASLP's random bias, uniform(+-1/sqrt(fan_in)), never
  trained (`layer_modules.py`); off by default, as the suite's networks have no bias.
- Normalisation layers get affine (1, 0) and layer scales 1 in `prepare` (training/frozen.py);
  the engine freezes them and the biases (they are in no optimiser group). ASLP's conv nets have
  no normalisation layer.
- Extension (`keep_weights`, off by default): no re-draw and no reset; the mask is learned over
  the network's own weights, e.g. a trained network loaded with the run's `init_from` (the
  engine refuses `init_from` without it, as the re-draw would discard the loaded weights).
- Validation during training uses the deterministic mask m >= 0 (the mask that is finally
  tested) by default; `val_mask=sampled` draws a fresh mask at every validation forward pass,
  as ASLP does (`strategies/ASLP/layer_functions.py` samples in every forward), so early stopping
  and the selected epoch follow the same noisy signal as there. Extraction and the reported test
  accuracy always use m >= 0 (ASLP prints the pruned network's accuracy separately from the
  sampled one). Training-set accuracy in history.csv is that of sampled masks.
- With smart rescale ASLP returns two optimisers (`strategies/ASLP/optimizer_functions.py`), so
  PyTorch Lightning 1.x runs, on every batch, one forward/backward pass per optimiser, each with
  its own Gumbel sample, the logits stepping first and the scales after a pass through the
  updated logits. `optimizer_steps=sequential` reproduces that order; `joint` (default) steps
  both from one pass, half the cost.
- The logits' and scales' learning rates are constant (`lr_schedule`), as in the authors' code,
  which sets no scheduler (up to 1000 epochs with early stopping on CIFAR); the run's schedule
  (cosine by default) decays them before the masks leave the initial plateau on short recipes.
  Digits conv4, batch 32, 20 epochs, seed 0: 13.9 % test accuracy under cosine, 75.0 % with
  constant lr; the same recipe with 60 epochs: 97.8 % at 49.4 % emergent sparsity.
- With `smart_rescale = False` the scale stays at exactly 1 (frozen, multiplies exactly).
- Extension beyond the paper (`budget = True`, off by default): a penalty
  budget_weight * (sum sigmoid(m) - K)^2 / N pulls the expected kept count toward
  K = round((1 - sparsity) * N), and extraction keeps exactly the global top-K logits (stable
  tie-break), so gumbel can be compared at the other methods' budgets. Each logit's penalty
  gradient is 2 * budget_weight * (mean sigmoid(m) - density) * sigmoid'(m). budget_weight = 1
  pushed every logit to keep probability ~0 within the first epoch (digits conv4, 0.9);
  1e-3 (the default) brings mean sigmoid(m) to the target density without overshoot, but as it
  lowers every logit alike before the masks have learned anything, the network stayed at chance
  within 20 epochs at 0.9: the extension needs a warm-up or a longer schedule to be useful.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunebench.training.frozen import (
    KEEP_WEIGHTS_HELP,
    add_frozen_biases,
    reinitialise,
    reset_norm_affine,
)
from prunebench.training.masking import (
    attach,
    budget_count,
    global_topk_masks,
    num_prunable,
    prunable_layers,
    weight_transform,
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
class GumbelHparams(MethodHparams):
    init: str = option(
        "kaiming_normal",
        "paper: Kaiming normal (fan_in, ReLU); or signed_constant",
        choices=('kaiming_normal', 'signed_constant'))
    signed_constant_scope: str = option(
        "all", "all | conv (ASLP: Linear layers stay Kaiming normal)", choices=('all', 'conv'))
    frozen_bias: bool = option(
        False, "ASLP layer_modules.py: random never-trained bias in every layer")
    keep_weights: bool = option(False, "extension: " + KEEP_WEIGHTS_HELP)
    tau: float = option(1.0, "paper: Gumbel-Softmax temperature 1", bounds="(0, inf)")
    logit_init: float = option(0.0, "paper: m = 0, keep probability 1/2", bounds="(-inf, inf)")
    logit_lr: float = option(50.0, "paper: SGD lr 50 for the logits", bounds="(0, inf)")
    logit_momentum: float = option(0.9, "paper", bounds="[0, 1)")
    logit_weight_decay: float = option(0.0, "paper: none", bounds="[0, inf)")
    smart_rescale: bool = option(True, "paper: on (its contribution); switchable for the ablation")
    rescale_lr: float = option(1e-3, "paper: own lr 1e-3 for the per-layer scales",
                               bounds="(0, inf)")
    rescale_momentum: float = option(0.9, "paper", bounds="[0, 1)")
    lr_schedule: str = option(
        "constant",
        "paper code (ASLP main.py): no lr scheduler; 'run' = run's",
        choices=('constant', 'cosine', 'step', 'run'))
    val_mask: str = option(
        "deterministic",
        "validation masks: deterministic (m >= 0, the extracted one) or sampled (ASLP: a fresh "
        "sample at every forward pass)",
        choices=('deterministic', 'sampled'))
    optimizer_steps: str = option(
        "joint",
        "with smart_rescale: joint (one pass steps logits and scales) or sequential (ASLP under "
        "Lightning 1.x: logits step, then scales after a pass of their own)",
        choices=('joint', 'sequential'))
    budget: bool = option(
        False, "extension beyond the paper: penalty toward K + exact top-K by logit")
    budget_weight: float = option(1e-3, "extension: decision, measured (see module docstring)",
                                  bounds="[0, inf)")


def logistic_noise(like: torch.Tensor) -> torch.Tensor:
    """One Logistic(0, 1) draw per entry: the difference of two Gumbel(0, 1) variables."""
    u = torch.rand_like(like).clamp_(min=torch.finfo(like.dtype).tiny)
    return torch.log(u) - torch.log1p(-u)


def straight_through_sample(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hard 0/1 keep sample over [m, 0] with the gradient of sigmoid((m + g1 - g2) / tau)."""
    perturbed = logits + logistic_noise(logits)
    soft = torch.sigmoid(perturbed / tau)
    hard = (perturbed >= 0).to(soft.dtype)
    return hard + (soft - soft.detach())


class GumbelMask(nn.Module):
    """Weight parametrization: s * (w * mask), mask sampled in training, m >= 0 in eval."""

    def __init__(self, weight: torch.Tensor, tau: float, logit_init: float) -> None:
        super().__init__()
        self.tau = tau
        self.logits = nn.Parameter(torch.full_like(weight, logit_init))
        self.scale = nn.Parameter(torch.ones((), dtype=weight.dtype, device=weight.device))
        self.register_buffer("final_mask", torch.zeros_like(weight, dtype=torch.bool))
        self.register_buffer("extracted", torch.zeros((), dtype=torch.bool, device=weight.device))
        self.sample_in_eval = False  # ASLP's validation: sample in eval mode until extraction

    def eval_mask(self) -> torch.Tensor:
        """The deterministic mask: the extracted one, else m >= 0 (no device sync)."""
        return torch.where(self.extracted, self.final_mask, self.logits >= 0)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training or self.sample_in_eval:
            mask = straight_through_sample(self.logits, self.tau)
        else:
            mask = self.eval_mask()
        return self.scale * (weight * mask)


@register_method("gumbel")
class Gumbel(PruningMethod):
    """Learn a keep-probability per frozen weight by straight-through Gumbel-Softmax sampling."""

    hparams_cls = GumbelHparams
    budgeted = False
    budget_option = "budget"
    frozen_weights = True
    paper = "Dupont et al., ICIP 2022, arXiv:2202.12986"

    def __init__(self, hparams: GumbelHparams, ctx: MethodContext) -> None:
        super().__init__(hparams, ctx)
        self._sampling_in_eval = False

    def _masks(self, model: nn.Module) -> list[GumbelMask]:
        return [weight_transform(layer) for _, layer in prunable_layers(model)]

    def redraws_weights(self) -> bool:
        return not self.hp.keep_weights

    def prepare(self, model: nn.Module) -> None:
        hp = self.hp
        if not hp.keep_weights:
            reinitialise(model, hp.init, self.ctx.seed, hp.signed_constant_scope)
            reset_norm_affine(model)
        if hp.frozen_bias:
            add_frozen_biases(model, self.ctx.seed)
        attach(model, lambda _name, layer: GumbelMask(layer.weight, hp.tau, hp.logit_init))
        for m in self._masks(model):
            m.sample_in_eval = hp.val_mask == "sampled"
        self._sampling_in_eval = hp.val_mask == "sampled"

    def samples_masks_in_eval(self) -> bool:
        return self._sampling_in_eval

    def param_groups(self, model: nn.Module, phase: Phase) -> list[OptimGroup]:
        hp = self.hp
        masks = self._masks(model)
        schedule = None if hp.lr_schedule == "run" else hp.lr_schedule
        groups = [OptimGroup([m.logits for m in masks], "logits", "sgd", hp.logit_lr,
                             hp.logit_momentum, hp.logit_weight_decay, schedule)]
        if hp.smart_rescale:
            groups.append(OptimGroup([m.scale for m in masks], "rescale", "sgd", hp.rescale_lr,
                                     hp.rescale_momentum, 0.0, schedule,
                                     stage=int(hp.optimizer_steps == "sequential")))
        return groups

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        if not self.hp.budget or self.hp.budget_weight == 0:
            return None
        masks = self._masks(model)
        n = sum(m.logits.numel() for m in masks)
        k = budget_count(n, self.ctx.sparsity)
        expected = sum(torch.sigmoid(m.logits).sum() for m in masks)
        return self.hp.budget_weight * (expected - k) ** 2 / n

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():  # a block, not a decorator: mutmut mutates no decorated function
            masks = self._masks(model)
            n = sum(m.logits.numel() for m in masks)
            kept = sum(int((m.logits >= 0).sum()) for m in masks)
            prob = sum(float(torch.sigmoid(m.logits).double().sum()) for m in masks)
            return {"keep_fraction": kept / n, "keep_prob_mean": prob / n,
                    "rescale_mean": sum(float(m.scale) for m in masks) / len(masks)}

    def extract(self, model: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            masks = self._masks(model)
            n = num_prunable(model)
            threshold_kept = sum(int((m.logits >= 0).sum()) for m in masks)
            if self.hp.budget:
                k = budget_count(n, self.ctx.sparsity)
                final = global_topk_masks([m.logits for m in masks], k)
            else:
                final = [m.logits >= 0 for m in masks]
            for m, keep in zip(masks, final, strict=True):
                m.final_mask.copy_(keep)
                m.extracted.fill_(True)
                m.sample_in_eval = False
            self._sampling_in_eval = False
            return {
                "extraction": "global top-K by logit" if self.hp.budget else "m >= 0",
                "threshold_density": threshold_kept / n,
                "keep_prob_mean": sum(float(torch.sigmoid(m.logits).double().sum())
                                      for m in masks) / n,
                "rescale": ";".join(f"{float(m.scale):.6g}" for m in masks),
            }
