"""gumbel: the sampled keep frequency, the straight-through gradient, frozen tensors, exact
extraction and folding, the budget extension, and a short digits run on frozen weights."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from prunebench.data.prepared import DeviceData, load_prepared
from prunebench.methods import gumbel
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


@pytest.mark.parametrize(("lr_schedule", "steps"), [("constant", "joint"), ("run", "sequential"),
                                                     ("cosine", "joint")])
def test_optimiser_groups_are_the_papers(lr_schedule: str, steps: str) -> None:
    """The paper's two SGD optimisers: logits lr 50, scales lr 1e-3, both momentum 0.9 and no
    weight decay (ASLP's optimizer_functions.py builds both with SGD's default 0); both follow
    `lr_schedule` ("run": the run's own, None); the scales step in a pass of their own (stage 1)
    only under `optimizer_steps=sequential`."""
    model = bn_model()
    method = Gumbel(GumbelHparams(lr_schedule=lr_schedule, optimizer_steps=steps), make_ctx())
    method.prepare(model)
    masks = [weight_transform(layer) for _, layer in prunable_layers(model)]
    logits, rescale = method.param_groups(model, Phase("train", 1))
    schedule = None if lr_schedule == "run" else lr_schedule
    assert (logits.name, logits.optimizer, logits.lr, logits.momentum, logits.weight_decay,
            logits.schedule, logits.stage) == ("logits", "sgd", 50.0, 0.9, 0.0, schedule, 0)
    assert (rescale.name, rescale.optimizer, rescale.lr, rescale.momentum, rescale.weight_decay,
            rescale.schedule, rescale.stage) == (
        "rescale", "sgd", 1e-3, 0.9, 0.0, schedule, int(steps == "sequential"))
    assert [id(p) for p in logits.params] == [id(m.logits) for m in masks]
    assert [id(p) for p in rescale.params] == [id(m.scale) for m in masks]


def test_budget_penalty_is_the_closed_form() -> None:
    """budget_weight * (sum sigmoid(m) - K)^2 / N with K = round((1 - sparsity) * N), and its
    gradient 2 * budget_weight * (mean sigmoid(m) - K / N) * sigmoid'(m) on each logit; no
    penalty without `budget` or with budget_weight 0, one with budget_weight 1."""
    model = bn_model()
    method = Gumbel(GumbelHparams(budget=True, budget_weight=0.5), make_ctx(0.9))
    method.prepare(model)
    (_, conv), (_, linear) = prunable_layers(model)
    with torch.no_grad():
        weight_transform(conv).logits.fill_(1.5)  # 8 * 1 * 3 * 3 = 72 logits
        weight_transform(linear).logits.fill_(-2.0)  # 10 * 512 = 5120 logits
    n, k = 72 + 5120, round(0.1 * (72 + 5120))
    expected = 72 * (1 / (1 + math.exp(-1.5))) + 5120 * (1 / (1 + math.exp(2.0)))
    penalty = method.regularizer(model)
    assert penalty.item() == pytest.approx(0.5 * (expected - k) ** 2 / n, rel=1e-5)
    penalty.backward()
    for m, value in ((1.5, weight_transform(conv)), (-2.0, weight_transform(linear))):
        s = 1 / (1 + math.exp(-m))
        want = 2 * 0.5 * (expected / n - k / n) * s * (1 - s)
        assert torch.allclose(value.logits.grad, torch.full_like(value.logits, want), rtol=1e-4)
    for hp, sparsity in ((GumbelHparams(budget=True, budget_weight=0.0), 0.9),
                         (GumbelHparams(), None)):
        other = Gumbel(hp, make_ctx(sparsity))
        assert other.regularizer(model) is None
    unit = Gumbel(GumbelHparams(budget=True, budget_weight=1.0), make_ctx(0.9))
    assert unit.regularizer(model).item() == pytest.approx((expected - k) ** 2 / n, rel=1e-5)


def test_mask_state_lives_on_the_weights_device_and_dtype() -> None:
    """The logits and the scale are in the weight's dtype (a float64 network learns float64
    scales), the extracted mask is bool (1 byte a weight in memory and checkpoints), all on the
    weight's device: checked on the `meta` device, where a tensor made elsewhere shows."""
    weight = torch.empty(4, 3, dtype=torch.float64, device="meta")
    mask = GumbelMask(weight, tau=1.0, logit_init=0.0)
    state = {"logits": mask.logits, "scale": mask.scale, "final_mask": mask.final_mask,
             "extracted": mask.extracted}
    assert {n: (t.dtype, t.device.type, tuple(t.shape)) for n, t in state.items()} == {
        "logits": (torch.float64, "meta", (4, 3)), "scale": (torch.float64, "meta", ()),
        "final_mask": (torch.bool, "meta", (4, 3)), "extracted": (torch.bool, "meta", ())}


def test_a_new_mask_is_deterministic_in_eval_and_sampled_in_training() -> None:
    """Before any `val_mask` setting, eval mode uses m >= 0 (the tested mask) and training
    mode samples; a method not yet prepared samples nothing in eval."""
    torch.manual_seed(5)
    weight = torch.randn(200)
    mask = GumbelMask(weight, tau=1.0, logit_init=0.0)
    with torch.no_grad():
        mask.logits.copy_(torch.randn(200))
        mask.scale.fill_(1.5)
    mask.eval()
    want = 1.5 * weight * (mask.logits >= 0)
    assert all(torch.equal(mask(weight), want) for _ in range(3))
    mask.train()
    assert not torch.equal(mask(weight), mask(weight))
    assert not Gumbel(GumbelHparams(val_mask="sampled"), make_ctx()).samples_masks_in_eval()


def test_the_noise_free_sample_is_the_deterministic_mask(monkeypatch) -> None:
    """The hard sample keeps a weight iff m + L >= 0: with the logistic noise L at exactly 0 it
    is m >= 0, a tie kept as by the deterministic mask (mutant: `> 0`)."""
    monkeypatch.setattr(gumbel, "logistic_noise", torch.zeros_like)
    m = torch.tensor([-1.0, -1e-7, 0.0, 1e-7, 1.0])
    assert straight_through_sample(m, 1.0).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("keep_weights", [False, True])
def test_redraws_weights_says_what_prepare_does(keep_weights: bool) -> None:
    """The engine refuses init_from weights that prepare would re-draw (training/network.py):
    `redraws_weights` is True exactly when prepare replaces the network's weights."""
    model = bn_model()
    before = [stored_weight(layer).clone() for _, layer in prunable_layers(model)]
    method = Gumbel(GumbelHparams(keep_weights=keep_weights), make_ctx())
    method.prepare(model)
    after = [stored_weight(layer) for _, layer in prunable_layers(model)]
    unchanged = all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert method.redraws_weights() is (not keep_weights) is (not unchanged)


@pytest.mark.parametrize("budget", [False, True])
def test_epoch_and_extraction_metrics_are_the_closed_form(budget: bool) -> None:
    """history.csv and metrics.json report what the logits say: the kept fraction (m >= 0,
    a logit of exactly 0 kept), the mean keep probability sigmoid(m), the mean scale and each
    layer's scale, and which extraction ran."""
    model = bn_model()
    method = Gumbel(GumbelHparams(budget=budget), make_ctx(0.9 if budget else None))
    method.prepare(model)
    (_, conv), (_, linear) = prunable_layers(model)
    with torch.no_grad():
        weight_transform(conv).logits.fill_(0.0)  # 72 logits at exactly 0
        weight_transform(linear).logits.fill_(-3.0)  # 5120 logits, 1000 of them at 2
        weight_transform(linear).logits.view(-1)[:1000] = 2.0
        weight_transform(conv).scale.fill_(0.5)
        weight_transform(linear).scale.fill_(2.0)
    n = 72 + 5120
    sigmoid = [1 / (1 + math.exp(-m)) for m in (0.0, 2.0, -3.0)]
    prob = (72 * sigmoid[0] + 1000 * sigmoid[1] + 4120 * sigmoid[2]) / n
    metrics = method.epoch_metrics(model)
    assert metrics["keep_fraction"] == pytest.approx((72 + 1000) / n, rel=1e-12)
    assert metrics["keep_prob_mean"] == pytest.approx(prob, rel=1e-6)
    assert metrics["rescale_mean"] == pytest.approx(1.25, rel=1e-12)
    model.eval()
    extra = method.extract(model)
    assert extra["extraction"] == ("global top-K by logit" if budget else "m >= 0")
    assert extra["threshold_density"] == pytest.approx((72 + 1000) / n, rel=1e-12)
    assert extra["keep_prob_mean"] == pytest.approx(prob, rel=1e-6)
    assert extra["rescale"] == "0.5;2"
