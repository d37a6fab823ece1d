"""`snip`: single-shot network pruning by connection sensitivity.

Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
ICLR 2019. At initialisation, the saliency of weight j is |dL/dc_j| at c = 1 for a multiplicative
gate c on it, i.e. |dL/dw_j * w_j| (sec. 4; the paper normalises by the sum, which does not change
the ranking); keep the global top-K, then train the masked network from the same initialisation
with the mask fixed.

Deviations and decisions:
- The scoring sample is class-balanced by default: `samples_per_class` x classes training images
  (the paper uses one mini-batch of 100 images for 10 classes), un-augmented, seeded by the run
  seed. SynFlow's code (github ganguli-lab/Synaptic-Flow `Experiments/singleshot.py`,
  `Utils/load.py`) scores on 10 x classes images drawn at random from the training set with the
  training augmentation, in batches of 256: `sample=random sample_augment=true
  score_batch_size=256`. The gradient is that of the mean loss over the whole sample,
  accumulated over mini-batches of `score_batch_size`, so only BatchNorm statistics depend on
  the batch size (SynFlow sums per-batch means: the same when the sample fits one batch).
- BatchNorm mode while scoring (the paper does not say): `train` by default, i.e. batch statistics,
  the mode the network is then trained in; its running statistics are restored afterwards so
  scoring leaves no trace. `eval` uses the (initial) running statistics instead. The mode used is
  recorded in metrics.json (`method_score_bn_mode`).
- Option `rescale` (off: the paper does not rescale) keeps each layer's weight norm at pruning
  time (see masking.apply_global_topk).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunebench.errors import PrunebenchError
from prunebench.training.masking import (
    apply_global_topk,
    attach_fixed_masks,
    budget_count,
    num_prunable,
    prunable_layers,
    stored_weight,
)
from prunebench.training.method import MethodHparams, PruningMethod, option
from prunebench.training.registry import register_method


@dataclass
class SnipHparams(MethodHparams):
    samples_per_class: int = option(
        10, "10 x classes images (Lee 2019 sec. 5: a batch of 100, CIFAR-10)",
        bounds="[1, inf)")
    score_batch_size: int = option(100, "Lee 2019 sec. 5: mini-batch of 100 (SynFlow: 256)",
                                   bounds="[1, inf)")
    sample: str = option(
        "balanced",
        "scoring images: balanced (samples_per_class of each class) or random (samples_per_class"
        " x classes drawn uniformly: SynFlow's prune loader)",
        choices=('balanced', 'random'))
    sample_augment: bool = option(
        False, "scoring images get the run's training crop/flip (SynFlow: yes)")
    bn_mode: str = option(
        "train", "paper silent; train: batch statistics, as in training", choices=('train', 'eval'))
    rescale: bool = option(False, "paper: no rescaling; True keeps each layer's weight norm")


def snip_scores(model: nn.Module, batches, bn_mode: str) -> tuple[list[torch.Tensor], int]:
    """|dL/dw * w| per prunable layer for the mean cross-entropy over all `batches`, and the
    number of images used. Leaves weights, BatchNorm statistics and gradients as they were."""
    layers = prunable_layers(model)
    weights = [stored_weight(layer) for _, layer in layers]
    norm_buffers = {name: b.detach().clone() for name, b in model.named_buffers()
                    if name.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    was_training = model.training
    model.train(bn_mode == "train")
    grads = [torch.zeros_like(w) for w in weights]
    count = 0
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
        for g, dw in zip(grads, torch.autograd.grad(loss, weights), strict=True):
            g += dw
        count += len(y)
    model.train(was_training)
    with torch.no_grad():
        buffers = dict(model.named_buffers())
        for name, saved in norm_buffers.items():
            buffers[name].copy_(saved)
    if count == 0:
        raise PrunebenchError("snip: the scoring sample is empty (no training images)")
    return [(g / count * w.detach()).abs() for g, w in zip(grads, weights, strict=True)], count


@register_method("snip")
class Snip(PruningMethod):
    """Score |grad * w| at init on a class-balanced sample, keep the global top-K, train."""

    hparams_cls = SnipHparams
    paper = "Lee, Ajanthan, Torr, SNIP, ICLR 2019"

    def prepare(self, model: nn.Module) -> None:
        attach_fixed_masks(model)
        hp = self.hp
        if hp.sample == "balanced" and not hp.sample_augment:
            batches = self.ctx.sample_batches(hp.samples_per_class, hp.score_batch_size)
        elif self.ctx.scoring_batches is None:
            raise PrunebenchError("snip: sample=random or sample_augment=true needs the engine's "
                                  "scoring_batches, which this context does not lend")
        else:
            batches = self.ctx.scoring_batches(hp.samples_per_class * self.ctx.num_classes,
                                               hp.score_batch_size, hp.sample == "balanced",
                                               hp.sample_augment)
        self.scores, self.score_images = snip_scores(model, batches, self.hp.bn_mode)
        k = budget_count(num_prunable(model), self.ctx.sparsity)
        self.rescale_factors = apply_global_topk(model, self.scores, k, self.hp.rescale)

    def extract(self, model: nn.Module) -> dict[str, Any]:
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        return {"score_bn_mode": self.hp.bn_mode if has_bn else "none (no BatchNorm)",
                "score_images": self.score_images,
                "rescale_factors": ";".join(f"{f:.4g}" for f in self.rescale_factors)}
