"""gumbel: the sampled keep frequency, the straight-through gradient, frozen tensors, exact
extraction and folding, the budget extension, and a short digits run on frozen weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from prunebench.data.prepared import DeviceData, load_prepared
from prunebench.methods.gumbel import (
    Gumbel,
    GumbelHparams,
    GumbelMask,
    logistic_noise,
    straight_through_sample,
)
from prunebench.plan.config import TrainConfig, resolve
from prunebench.training.masking import (
    budget_count,
    fold,
    num_prunable,
    prunable_layers,
    stored_weight,
    weight_transform,
)
from prunebench.training.method import MethodContext, Phase, TrainSettings
from prunebench.training.run import execute
from prunebench.training.train import Trainer


def make_ctx(sparsity: float | None = None) -> MethodContext:
    return MethodContext(sparsity=sparsity, num_classes=10, device=torch.device("cpu"), seed=0,
                         train=TrainSettings(1, 0.01, 0.9, 5e-4, "sgd"),
                         sample_batches=lambda _p, _b: iter(()))


def bn_model() -> nn.Module:
    """Conv (with bias) + BatchNorm + Linear (with bias): every kind of frozen tensor."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10, bias=True))


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_keep_frequency_matches_sigmoid(tau: float) -> None:
    torch.manual_seed(0)
    m = torch.linspace(-3.0, 3.0, 13)
    samples = 20_000
    draws = straight_through_sample(m[:, None].expand(-1, samples).contiguous(), tau)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    freq = draws.mean(dim=1)
    p = torch.sigmoid(m)
    bound = 5 * torch.sqrt(p * (1 - p) / samples)  # 5 binomial standard deviations
    assert ((freq - p).abs() <= bound).all(), (freq - p).abs() / bound


def test_straight_through_gradient_is_the_soft_samples() -> None:
    m = torch.randn(500, requires_grad=True)
    tau = 0.7
    torch.manual_seed(1)
    straight_through_sample(m, tau).sum().backward()
    torch.manual_seed(1)
    soft = torch.sigmoid((m.detach() + logistic_noise(m.detach())) / tau)
    assert torch.allclose(m.grad, soft * (1 - soft) / tau, rtol=1e-5, atol=1e-7)


def test_logit_gradient_flows_and_weights_are_in_no_group() -> None:
    model = bn_model()
    method = Gumbel(GumbelHparams(), make_ctx())
    method.prepare(model)
    groups = method.param_groups(model, Phase("train", 1))
    in_groups = {id(p) for g in groups for p in g.params}
    masks = [weight_transform(layer) for _, layer in prunable_layers(model)]
    assert all(id(m.logits) in in_groups and id(m.scale) in in_groups for m in masks)
    frozen = [p for p in model.parameters() if id(p) not in in_groups]
    assert {id(p) for p in frozen} == {id(p) for n, p in model.named_parameters()
                                       if "logits" not in n and "scale" not in n}
    for p in model.parameters():
        p.requires_grad_(id(p) in in_groups)
    model.train()
    out = model(torch.randn(16, 1, 8, 8))
    nn.functional.cross_entropy(out, torch.randint(0, 10, (16,))).backward()
    for m in masks:
        assert m.logits.grad is not None and m.logits.grad.abs().sum() > 0
        assert m.scale.grad is not None
    assert all(p.grad is None for p in frozen)
    no_rescale = Gumbel(GumbelHparams(smart_rescale=False), make_ctx())
    names = [g.name for g in no_rescale.param_groups(model, Phase("train", 1))]
    assert names == ["logits"]


def test_frozen_tensors_are_bit_identical_after_training(digits_dir: Path) -> None:
    model = bn_model()
    with torch.no_grad():
        model[1].weight.fill_(0.5)  # prepare must restore the (1, 0) affine
        model[1].bias.fill_(0.3)
    method = Gumbel(GumbelHparams(), make_ctx())
    method.prepare(model)
    assert torch.equal(model[1].weight, torch.ones(8)) and torch.equal(model[1].bias,
                                                                       torch.zeros(8))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if "logits" not in n and "scale" not in n}
    logits = {n: p.detach().clone() for n, p in model.named_parameters() if "logits" in n}
    running = model[1].running_mean.clone()
    data = DeviceData(load_prepared("digits", digits_dir), torch.device("cpu"), 0.1, False)
    cfg = TrainConfig(epochs=1, batch_size=64, crop_padding=1, flip=False, amp=False,
                      channels_last=False)
    Trainer(model, method, data, cfg, 0, torch.device("cpu"), save=lambda _c: None,
            log=lambda _s: None).run()
    after = dict(model.named_parameters())
    for name, before in frozen.items():
        assert torch.equal(after[name], before), name
    assert any(not torch.equal(after[n], v) for n, v in logits.items())
    assert not torch.equal(model[1].running_mean, running)  # BN statistics still update


def test_extraction_thresholds_logits_and_folds_rescale_exactly() -> None:
    model = bn_model()
    method = Gumbel(GumbelHparams(), make_ctx())
    method.prepare(model)
    expected = []
    torch.manual_seed(3)
    with torch.no_grad():
        for i, (_, layer) in enumerate(prunable_layers(model)):
            mask: GumbelMask = weight_transform(layer)
            mask.logits.copy_(torch.randn_like(mask.logits))
            mask.logits.view(-1)[:7] = 0.0  # m = 0 is kept
            mask.scale.fill_(0.7 + 0.6 * i)
            w = stored_weight(layer).clone()
            expected.append(torch.where(mask.logits >= 0, mask.scale * w, torch.zeros_like(w)))
    model.eval()
    extra = method.extract(model)
    fold(model)
    for (_, layer), want in zip(prunable_layers(model), expected, strict=True):
        assert torch.equal(layer.weight, want)
    kept = sum(int(torch.count_nonzero(w)) for w in expected)
    assert extra["threshold_density"] == pytest.approx(kept / num_prunable(model))


def test_budget_extension_keeps_exactly_k() -> None:
    model = bn_model()
    hp = GumbelHparams(budget=True)
    method = Gumbel(hp, make_ctx(0.9))
    assert method.is_budgeted() and not Gumbel(GumbelHparams(), make_ctx()).is_budgeted()
    method.prepare(model)
    torch.manual_seed(4)
    with torch.no_grad():
        for _, layer in prunable_layers(model):
            mask = weight_transform(layer)
            mask.logits.copy_(torch.randint(-2, 3, mask.logits.shape).float())  # many ties
    reg = method.regularizer(model)
    reg.backward()
    for _, layer in prunable_layers(model):
        # expected kept count (~half) is above K: the penalty pushes every logit down
        assert (weight_transform(layer).logits.grad > 0).all()
    model.eval()
    method.extract(model)
    fold(model)
    k = budget_count(num_prunable(model), 0.9)
    assert sum(int(torch.count_nonzero(m.weight)) for _, m in prunable_layers(model)) == k


@pytest.mark.slow
def test_digits_conv4_learns_on_frozen_weights(digits_dir: Path, tmp_path: Path) -> None:
    """Short run through the engine. From the paper's keep probability 1/2 the digits loss sits
    at ln(10) for ~500 steps (docs/methods/gumbel.md; ~15 epochs here), so this test starts the
    same learning rule at keep probability sigmoid(2) = 0.88, which learns within a few epochs.
    The untrained control (0 epochs: every weight kept, frozen random) is at chance."""
    results = {}
    for epochs in (0, 8):
        cfg = resolve("digits", "conv4", "gumbel", None, 0, {},
                      {"data_dir": str(digits_dir), "epochs": str(epochs), "device": "cpu",
                       "method.logit_init": "2"})
        results[epochs] = execute(cfg, tmp_path / f"e{epochs}")
    untrained, trained = results[0], results[8]
    assert trained["frozen_weights"] and not trained["budgeted"]
    assert untrained["test_top1"] < 20.0, untrained["test_top1"]
    assert trained["test_top1"] > 50.0, trained["test_top1"]
    assert trained["sparsity_achieved"] > 0.0


def test_the_deterministic_mask_keeps_a_weight_iff_its_logit_is_at_least_zero() -> None:
    """m >= 0, the paper's rule: at the initial logit 0 every weight is kept (mutmut survivors:
    `m > 0`, which keeps none at init, and `m >= 1`)."""
    mask = GumbelMask(torch.ones(5), tau=1.0, logit_init=0.0)
    assert bool(mask.eval_mask().all())
    with torch.no_grad():
        mask.logits.copy_(torch.tensor([-0.5, -1e-6, 0.0, 0.5, 2.0]))
    assert mask.eval_mask().tolist() == [False, False, True, True, True]
