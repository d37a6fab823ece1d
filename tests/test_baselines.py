"""Baselines: magnitude (MP, MP+FT, at init), SNIP, edge-popup, supermask, and the budget and
fixed-mask properties every budgeted method must have."""
from __future__ import annotations

import copy
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from prunebench import paths
from prunebench.baselines.edgepopup import fast_topk_mask, signed_kaiming_constant
from prunebench.baselines.snip import snip_scores
from prunebench.data.prepared import DeviceData, load_prepared
from prunebench.errors import PrunebenchError
from prunebench.plan.config import TrainConfig, resolve
from prunebench.training.masking import (
    budget_count,
    fold,
    layer_budgets,
    prunable_layers,
    stored_weight,
    topk_mask,
    weight_transform,
)
from prunebench.training.method import MethodContext, Phase, TrainSettings
from prunebench.training.models import create_model
from prunebench.training.registry import get_method, list_methods
from prunebench.training.run import execute
from prunebench.training.train import Trainer

CPU = torch.device("cpu")
FIXED_MASK_METHODS = ("magnitude_ft", "magnitude_init", "snip", "random")
OWN_BUDGETED = ("magnitude", "magnitude_ft", "magnitude_init", "snip", "edgepopup", "random")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(digits_dir) -> DeviceData:  # digits_dir: the session fixture in conftest.py
    return DeviceData(load_prepared("digits", digits_dir), CPU, 0.1)


def make_ctx(sparsity, data=None, seed=0, epochs=1, lr=0.01, wd=5e-4) -> MethodContext:
    sample = None
    if data is not None:
        def sample(per_class, batch):
            return data.balanced_batches(per_class, batch, torch.Generator().manual_seed(seed))
    return MethodContext(sparsity=sparsity, num_classes=10, device=CPU, seed=seed,
                         train=TrainSettings(epochs, lr, 0.9, wd, "sgd"), sample_batches=sample)


def build(name, sparsity, data=None, arch="conv2", seed=0, epochs=1, wd=5e-4, **options):
    torch.manual_seed(seed)
    model = create_model(arch, 10, 1, 8)
    cls = get_method(name)
    method = cls(cls.hparams_cls.from_dict(options, name),
                 make_ctx(sparsity, data, seed, epochs, wd=wd))
    return model, method


def train(model, method, data, epochs=1, batch_size=64, wd=5e-4):
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.01, weight_decay=wd,
                      crop_padding=1, flip=False, device="cpu")
    Trainer(model, method, data, cfg, 0, CPU, save=lambda _c: None, log=lambda _m: None).run()


def run(digits_dir, tmp_path, method, sparsity, arch="conv4", **overrides):
    values = {"data_dir": str(digits_dir), "device": "cpu", **{k: str(v) for k, v in
                                                               overrides.items()}}
    cfg = resolve("digits", arch, method, sparsity, 0, overrides=values)
    out = tmp_path / f"{method}_{sparsity}"
    return execute(cfg, out), out


def nonzero_flat(model) -> np.ndarray:
    return np.concatenate([layer.weight.detach().flatten().numpy() != 0
                           for _, layer in prunable_layers(model)])


def brute_topk(values: np.ndarray, k: int) -> np.ndarray:
    keep = np.zeros(values.size, dtype=bool)
    keep[np.argsort(-values, kind="stable")[:k]] = True
    return keep


# -- magnitude --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["magnitude", "magnitude_init"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_magnitude_keeps_exactly_the_k_largest(name, sparsity):
    model, method = build(name, sparsity)
    with torch.no_grad():  # a trained-looking spread of magnitudes, different per layer
        for i, (_, layer) in enumerate(prunable_layers(model)):
            layer.weight.normal_(0, 0.01 * (i + 1))
    before = np.concatenate([layer.weight.detach().abs().flatten().numpy()
                             for _, layer in prunable_layers(model)])
    method.prepare(model)
    method.extract(model.eval())
    k = budget_count(before.size, sparsity)
    kept = nonzero_flat(model)
    assert kept.sum() == k
    np.testing.assert_array_equal(kept, brute_topk(before, k))


def test_magnitude_ft_prunes_between_phases_and_finetunes_with_own_lr(data):
    model, method = build("magnitude_ft", 0.8, ft_epochs=3, ft_lr=0.003)
    method.prepare(model)
    phases = method.phases()
    assert [(p.name, p.epochs) for p in phases] == [("dense", 1), ("finetune", 3)]
    assert {g.lr for g in method.param_groups(model, phases[1])} == {0.003}
    assert {g.lr for g in method.param_groups(model, phases[0])} == {0.01}
    assert nonzero_flat(model).all()
    method.on_phase_end(model, phases[0])
    assert nonzero_flat(model).sum() == budget_count(nonzero_flat(model).size, 0.8)
    default = build("magnitude_ft", 0.8)[1]
    assert default.ft_lr() == pytest.approx(0.01) and default.ft_epochs() == 1


def test_magnitude_phases_and_extraction_records():
    """history.csv's phase names and metrics.json's method_* entries of the three magnitude
    methods, written out (mutations of the phase name or of a key or value fail here)."""
    model, method = build("magnitude", 0.8, epochs=3)
    method.prepare(model)
    assert [(p.name, p.epochs) for p in method.phases()] == [("train", 3)]
    assert method.extract(model) == {"pruned_when": "after training"}
    model, method = build("magnitude_ft", 0.8, ft_epochs=2, ft_lr=0.003)
    method.prepare(model)
    assert method.extract(model) == {"pruned_when": "after dense phase", "ft_lr": 0.003,
                                     "ft_epochs": 2}
    model, method = build("magnitude_init", 0.8)
    method.prepare(model)
    assert method.extract(model) == {"pruned_when": "at initialisation",
                                     "rescale_factors": "1;1;1;1;1"}  # conv2's five layers


def test_magnitude_ft_default_finetuning_is_a_quarter_of_the_epochs():
    """round(epochs / 4), at least 1: hand-computed for epochs 1, 2, 6, 20, 200."""
    got = [build("magnitude_ft", 0.8, epochs=e)[1].ft_epochs() for e in (1, 2, 6, 20, 200)]
    assert got == [1, 1, 2, 5, 50]


def test_magnitude_ft_after_a_shared_dense_run_finetunes_at_its_own_lr():
    """With dense_from: no dense epoch, then the fine-tuning epochs counted after the dense
    run's epochs, under the fine-tuning lr (the phase is recognised by its name)."""
    method = build("magnitude_ft", 0.8, epochs=8, ft_lr=0.003, dense_from="unused")[1]
    phases = method.phases()
    assert [(p.name, p.epochs, p.epochs_before) for p in phases] == [("dense", 0, 0),
                                                                      ("finetune", 2, 8)]
    model = create_model("conv2", 10, 1, 8)
    assert {g.lr for g in method.param_groups(model, phases[1])} == {0.003}


def test_magnitude_pruning_keeps_the_surviving_weights_unscaled():
    """MP and MP+FT zero the removed weights and leave the kept ones exactly as trained."""
    for name in ("magnitude", "magnitude_ft"):
        model, method = build(name, 0.9)
        method.prepare(model)
        before = [stored_weight(layer).detach().clone() for _, layer in prunable_layers(model)]
        if name == "magnitude":
            method.extract(model)
        else:
            method.on_phase_end(model, method.phases()[0])
        for (_, layer), w in zip(prunable_layers(model), before, strict=True):
            mask = weight_transform(layer).mask
            assert torch.equal(stored_weight(layer).detach(), w * mask), name


def _dense_run(folder: Path, tensors: dict[str, torch.Tensor], **metrics) -> Path:
    """A finished-looking dense run folder: metrics.json and network.safetensors only (what
    dense_from reads); the recipe of `make_ctx` is empty, so method, seed and epoch_selected
    are all it is compared on."""
    folder.mkdir()
    (folder / paths.METRICS).write_text(json.dumps({"method": "dense", "seed": 0, **metrics}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / paths.NETWORK))
    return folder


def test_dense_from_loads_the_dense_network_and_names_itself_when_refusing(tmp_path):
    """magnitude loads a dense run whatever epoch it selected; magnitude_ft only one of its last
    planned epoch (its own dense phase never selects another); each refusal starts with the
    method and option, and a network that does not fit is named by its file."""
    torch.manual_seed(5)
    trained = create_model("conv2", 10, 1, 8).state_dict()
    folder = _dense_run(tmp_path / "dense", trained, epoch_selected=0)
    model, method = build("magnitude", 0.8, dense_from=str(folder))
    method.prepare(model)
    for name, layer in prunable_layers(model):
        assert torch.equal(stored_weight(layer), trained[f"{name}.weight"]), name
    assert method.dense["dense_run_dir"] == str(folder.resolve())
    other_seed = _dense_run(tmp_path / "seed1", trained, seed=1)
    model, method = build("magnitude", 0.8, dense_from=str(other_seed))
    message = (f"method magnitude option dense_from={str(other_seed)!r}: that run differs from "
               "this one's dense phase in seed=1 (this run: 0)")
    with pytest.raises(PrunebenchError, match=f"^{re.escape(message)}$"):
        method.prepare(model)
    model, method = build("magnitude_ft", 0.8, dense_from=str(folder))
    message = (f"method magnitude_ft option dense_from={str(folder)!r}: that run differs from "
               "this one's dense phase in epoch_selected=0 (this run: 1)")
    with pytest.raises(PrunebenchError, match=f"^{re.escape(message)}$"):
        method.prepare(model)
    bad = _dense_run(tmp_path / "bad", {**trained, "features.0.weight": torch.zeros(3)})
    model, method = build("magnitude", 0.8, dense_from=str(bad))
    message = (f"{bad / paths.NETWORK}: tensor 'features.0.weight' is torch.float32 [3], the "
               "network's is torch.float32 [64, 1, 3, 3]")
    with pytest.raises(PrunebenchError, match=f"^{re.escape(message)}$"):
        method.prepare(model)


def test_magnitude_init_rescale_keeps_each_layers_weight_norm():
    """rescale=true: each layer's kept initial weights times ||w0|| / ||w0 * mask||, the mask
    the global top-K of |w0|; the factors recorded in layer order, ';'-separated."""
    model, method = build("magnitude_init", 0.9, rescale=True)
    layers = prunable_layers(model)
    w0 = [stored_weight(layer).detach().double().clone() for _, layer in layers]
    flat = torch.cat([w.abs().flatten() for w in w0]).numpy()
    kept = torch.from_numpy(brute_topk(flat, budget_count(flat.size, 0.9)))
    method.prepare(model)
    factors, start = [], 0
    for (_, layer), w in zip(layers, w0, strict=True):
        mask = kept[start:start + w.numel()].view_as(w)
        start += w.numel()
        factor = float(w.norm() / (w * mask).norm())
        assert factor > 1.0  # every layer loses some weights, none is emptied
        torch.testing.assert_close(stored_weight(layer).detach().double(), w * mask * factor,
                                   rtol=1e-6, atol=0)
        factors.append(factor)
    recorded = method.extract(model)["rescale_factors"].split(";")
    assert [float(f) for f in recorded] == pytest.approx(factors, rel=1e-3)


@pytest.mark.parametrize("name", FIXED_MASK_METHODS)
def test_masked_weights_stay_exactly_zero(name, data):
    """No gradient, momentum or weight decay revives a removed weight; the mask never moves."""
    options = {"ft_epochs": 1} if name == "magnitude_ft" else {}
    model, method = build(name, 0.9, data, wd=0.05, **options)
    method.prepare(model)
    snapshot = {}

    def remember(model, phase, prune=method.on_phase_end):
        prune(model, phase)  # magnitude_ft prunes here, after its dense phase
        if phase.name in ("dense", "init"):
            snapshot["pruned"] = [stored_weight(layer).detach().clone()
                                  for _, layer in prunable_layers(model)]

    if name == "magnitude_ft":
        method.on_phase_end = remember
    else:
        remember(model, Phase("init", 0), prune=lambda *_: None)
    train(model, method, data, wd=0.05)
    k = budget_count(sum(w.numel() for w in snapshot["pruned"]), 0.9)
    trained = 0
    for (_, layer), pruned in zip(prunable_layers(model), snapshot["pruned"], strict=True):
        mask = weight_transform(layer).mask
        now = stored_weight(layer).detach()
        assert torch.equal(mask, pruned != 0)
        assert torch.count_nonzero(now[~mask]) == 0
        trained += int((now[mask] != pruned[mask]).sum())
    assert sum(int(weight_transform(layer).mask.sum()) for _, layer in
               prunable_layers(model)) == k
    assert trained > 0.5 * k  # the kept weights did train


# -- random -----------------------------------------------------------------------------------
def _random_masks(seed: int, global_seed: int, **options) -> list[torch.Tensor]:
    model, method = build("random", 0.9, seed=seed, **options)
    torch.manual_seed(global_seed)  # the global generator must not matter
    method.prepare(model)
    return [weight_transform(layer).mask.clone() for _, layer in prunable_layers(model)]


def test_random_mask_is_drawn_from_the_run_seed_alone():
    a, b, c = _random_masks(0, 1), _random_masks(0, 2), _random_masks(1, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a, c, strict=True))


def test_random_scores_are_moved_to_the_runs_device(monkeypatch):
    """Drawn on the CPU generator, then moved to the run's device (the `meta` device shows it),
    where the global top-K is taken."""
    import prunebench.baselines.random as random_module

    seen = []
    monkeypatch.setattr(random_module, "apply_global_topk",
                        lambda _m, scores, _k, _r: seen.extend(scores) or [1.0] * len(scores))
    model, method = build("random", 0.9)
    method.ctx.device = torch.device("meta")
    method.prepare(model)
    assert len(seen) == 5 and all(sc.device.type == "meta" for sc in seen)


def test_random_records_and_rescale():
    """Factors all 1 by default; with rescale=true each layer's kept initial weights times
    ||w0|| / ||w0 * mask||, the factors recorded in layer order, ';'-separated."""
    model, method = build("random", 0.9)
    method.prepare(model)
    assert method.extract(model) == {"rescale_factors": "1;1;1;1;1"}
    model, method = build("random", 0.9, rescale=True)
    w0 = [stored_weight(layer).detach().double().clone() for _, layer in prunable_layers(model)]
    method.prepare(model)
    masks = [weight_transform(layer).mask for _, layer in prunable_layers(model)]
    _assert_rescaled(model, method, w0, masks)


def _assert_rescaled(model: nn.Module, method, w0: list[torch.Tensor],
                     masks: list[torch.Tensor]) -> None:
    """Each layer's stored weight is its initial one times mask times ||w0|| / ||w0 * mask||
    (> 1), and extract records those factors in layer order, ';'-separated."""
    factors = []
    for (_, layer), w, mask in zip(prunable_layers(model), w0, masks, strict=True):
        factor = float(w.norm() / (w * mask).norm())
        assert factor > 1.0
        torch.testing.assert_close(stored_weight(layer).detach().double(), w * mask * factor,
                                   rtol=1e-6, atol=0)
        factors.append(factor)
    recorded = method.extract(model)["rescale_factors"].split(";")
    assert [float(f) for f in recorded] == pytest.approx(factors, rel=1e-3)


# -- SNIP -------------------------------------------------------------------------------------
def independent_snip(model, batches, train_mode: bool) -> list[torch.Tensor]:
    """|dL/dw * w| for the mean loss over all images, computed in one plain forward."""
    plain = copy.deepcopy(model)
    plain.train(train_mode)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    weights = [layer.weight for _, layer in prunable_layers(plain)]
    grads = torch.autograd.grad(nn.functional.cross_entropy(plain(x), y), weights)
    return [(g * w).abs().detach() for g, w in zip(grads, weights, strict=True)]


@pytest.mark.parametrize("batch", [100, 32])
def test_snip_scores_are_grad_times_weight_and_mask_is_their_global_topk(batch, data):
    model, method = build("snip", 0.95, data, score_batch_size=batch)
    batches = list(method.ctx.sample_batches(10, 1000))
    assert len(batches[0][1]) == 100 and torch.bincount(batches[0][1]).eq(10).all()
    expected = independent_snip(model, batches, train_mode=True)
    init = [layer.weight.detach().clone() for _, layer in prunable_layers(model)]
    method.prepare(model)
    for got, want in zip(method.scores, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.max()))
    flat = torch.cat([s.flatten() for s in method.scores]).numpy()
    k = budget_count(flat.size, 0.95)
    masks = torch.cat([weight_transform(layer).mask.flatten()
                       for _, layer in prunable_layers(model)]).numpy()
    np.testing.assert_array_equal(masks, brute_topk(flat, k))
    for (_, layer), w0 in zip(prunable_layers(model), init, strict=True):  # same init, masked
        mask = weight_transform(layer).mask
        assert torch.equal(stored_weight(layer).detach(), w0 * mask)


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_snip_batchnorm_mode_is_used_recorded_and_leaves_no_trace(bn_mode, data):
    torch.manual_seed(0)
    model = TinyBN()
    cls = get_method("snip")
    method = cls(cls.hparams_cls(bn_mode=bn_mode), make_ctx(0.5, data))
    expected = independent_snip(model, list(method.ctx.sample_batches(10, 100)),
                                train_mode=bn_mode == "train")
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num" in k}
    method.prepare(model)
    for got, want in zip(method.scores, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.max()))
    for key, value in stats.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert method.extract(model)["score_bn_mode"] == bn_mode


def test_snip_records_and_the_smallest_samples(data):
    """metrics.json's method_* entries on a network without BatchNorm; a sample of one image
    is scored (its own |dL/dw * w|), an empty one refused with the reason."""
    model, method = build("snip", 0.5, data)
    method.prepare(model)
    assert method.extract(model) == {"score_bn_mode": "none (no BatchNorm)",
                                     "score_images": 100, "rescale_factors": "1;1;1;1;1"}
    model = build("snip", 0.5)[0]
    x, y = next(iter(method.ctx.sample_batches(1, 10)))
    one = [(x[:1], y[:1])]
    scores, count = snip_scores(model, one, "train")
    assert count == 1
    for got, want in zip(scores, independent_snip(model, one, train_mode=True), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.max()))
    message = "snip: the scoring sample is empty (no training images)"
    with pytest.raises(PrunebenchError, match=f"^{re.escape(message)}$"):
        snip_scores(model, [], "train")


def test_snip_random_sample_without_the_engines_scoring_batches_is_refused():
    model, method = build("snip", 0.5, sample="random")
    message = ("snip: sample=random or sample_augment=true needs the engine's scoring_batches, "
               "which this context does not lend")
    with pytest.raises(PrunebenchError, match=f"^{re.escape(message)}$"):
        method.prepare(model)


def test_snip_rescale_keeps_each_layers_weight_norm(data):
    """rescale=true: the kept initial weights times ||w0|| / ||w0 * mask|| per layer, the mask
    the global top-K of the SNIP scores; the factors recorded in layer order."""
    model, method = build("snip", 0.9, data, rescale=True)
    w0 = [stored_weight(layer).detach().double().clone() for _, layer in prunable_layers(model)]
    method.prepare(model)
    flat = torch.cat([sc.flatten() for sc in method.scores]).numpy()
    kept = torch.from_numpy(brute_topk(flat, budget_count(flat.size, 0.9)))
    masks = list(kept.split([w.numel() for w in w0]))
    _assert_rescaled(model, method, w0, [m.view_as(w) for m, w in zip(masks, w0, strict=True)])


def test_snip_rejects_unknown_bn_mode():
    """Refused as a value outside the option's choices. Mutation that defeated `match="bn_mode"`:
    deleting snip's bn_mode option (then refused as "unknown option(s) bn_mode")."""
    message = "method snip option bn_mode='frozen' is not allowed; allowed: train, eval"
    with pytest.raises(PrunebenchError, match=re.escape(message)):
        build("snip", 0.5, bn_mode="frozen")


# -- edge-popup -------------------------------------------------------------------------------
def test_edgepopup_per_layer_mask_is_top_fraction_of_abs_score():
    model, method = build("edgepopup", 0.7)
    method.prepare(model)
    layers = prunable_layers(model)
    numels = [stored_weight(layer).numel() for _, layer in layers]
    counts = layer_budgets(numels, budget_count(sum(numels), 0.7))
    for (_, layer), count in zip(layers, counts, strict=True):
        pm = weight_transform(layer)
        with torch.no_grad():
            pm.scores.normal_()
        w = stored_weight(layer)
        assert torch.equal(w.abs(), torch.full_like(w, math.sqrt(2 / w[0].numel())))
        mask = pm.mask().detach().flatten().numpy().astype(bool)
        np.testing.assert_array_equal(mask, brute_topk(pm.scores.abs().detach().flatten()
                                                       .numpy(), count))
    method.extract(model.eval())
    fold(model)
    assert nonzero_flat(model).sum() == budget_count(sum(numels), 0.7)


def test_edgepopup_fast_topk_equals_the_engines_stable_topk():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 7, 1000):
        for ties in (False, True):
            x = (torch.randint(0, 3, (n,), generator=gen).float() if ties
                 else torch.randn(n, generator=gen))
            for k in {0, 1, n // 3, n // 2, n - 1, n}:
                assert torch.equal(fast_topk_mask(x, k), topk_mask(x, k)), (n, ties, k)


def test_edgepopup_fast_topk_is_a_bool_mask_at_every_k():
    x = torch.randn(10, dtype=torch.float64)
    for k in (-1, 0, 3, 10, 11):
        mask = fast_topk_mask(x, k)
        assert mask.dtype == torch.bool and int(mask.sum()) == min(max(k, 0), 10), k


@pytest.mark.parametrize("signed_constant", [True, False])
@pytest.mark.parametrize("keep_weights", [True, False])
def test_edgepopup_says_it_redraws_the_weights_exactly_when_prepare_does(signed_constant,
                                                                         keep_weights):
    """What the engine asks before it refuses init_from weights the method would discard."""
    model, method = build("edgepopup", 0.5, signed_constant=signed_constant,
                          keep_weights=keep_weights)
    before = [layer.weight.detach().clone() for _, layer in prunable_layers(model)]
    method.prepare(model)
    changed = any(not torch.equal(stored_weight(layer), w)
                  for (_, layer), w in zip(prunable_layers(model), before, strict=True))
    assert method.redraws_weights() is changed is (signed_constant and not keep_weights)


def test_edgepopup_scores_group_and_extraction_records():
    """One SGD group named "scores" holding every layer's scores (the reference conv configs'
    lr 0.1, momentum 0.9, weight decay 1e-4); metrics.json's method_init names the weights'
    init and method_weights_nonzero says whether any frozen weight is exactly 0."""
    model, method = build("edgepopup", 0.5)
    method.prepare(model)
    (group,) = method.param_groups(model, Phase("train", 1))
    assert (group.name, group.optimizer, group.lr, group.momentum, group.weight_decay) == (
        "scores", "sgd", 0.1, 0.9, 1e-4)
    assert [id(p) for p in group.params] == [id(weight_transform(layer).scores)
                                             for _, layer in prunable_layers(model)]
    assert method.extract(model) == {"init": "signed_constant", "weights_nonzero": True}
    model, method = build("edgepopup", 0.5, scale_fan=True)
    method.prepare(model)
    assert method.extract(model) == {"init": "signed_constant_scaled", "weights_nonzero": True}
    model, method = build("edgepopup", 0.5, signed_constant=False)
    method.prepare(model)
    first = stored_weight(prunable_layers(model)[0][1])
    with torch.no_grad():
        first.view(-1)[0] = 1.0
    assert method.extract(model) == {"init": "kaiming_normal", "weights_nonzero": True}
    with torch.no_grad():
        first.view(-1)[0] = 0.0
    assert method.extract(model)["weights_nonzero"] is False
    model, method = build("edgepopup", 0.5, keep_weights=True)  # signed_constant stays True
    method.prepare(model)
    assert method.extract(model)["init"] == "network"  # was "signed_constant": none was applied


def test_edgepopup_signed_constant_keeps_each_sign_and_gives_zeros_plus():
    """sign(w) * sqrt(2 / fan_in), + for 0 (fan_in from a single output row here, density 1 by
    default)."""
    w = torch.tensor([[0.5, -0.2, 0.0, 1.5, -3.0]])
    signed_kaiming_constant(w)
    std = math.sqrt(2 / 5)
    assert torch.equal(w, torch.tensor([[std, -std, std, std, -std]]))


def test_edgepopup_scores_start_kaiming_uniform_with_a_sqrt5():
    """Kaiming uniform, a = sqrt(5): bound sqrt(2 / (1 + 5)) * sqrt(3 / fan_in) = 1 / sqrt(fan_in),
    reached to 0.1 % by the 262,144 scores of conv2's 256 x 1024 layer."""
    model, method = build("edgepopup", 0.5)
    method.prepare(model)
    top = float(weight_transform(prunable_layers(model)[2][1]).scores.detach().abs().max())
    assert 0.999 / 32 < top <= 1 / 32


@pytest.mark.parametrize("keep_weights", [False, True])
def test_edgepopup_resets_norm_affine_unless_it_keeps_the_weights(keep_weights):
    torch.manual_seed(0)
    model = TinyBN()
    with torch.no_grad():
        model.bn.weight.fill_(2.0)
        model.bn.bias.fill_(0.5)
    cls = get_method("edgepopup")
    cls(cls.hparams_cls(keep_weights=keep_weights), make_ctx(0.5)).prepare(model)
    want = (2.0, 0.5) if keep_weights else (1.0, 0.0)
    assert model.bn.weight.eq(want[0]).all() and model.bn.bias.eq(want[1]).all()


def test_edgepopup_scaled_init_uses_density():
    model, method = build("edgepopup", 0.75, scale_fan=True)
    method.prepare(model)
    w = stored_weight(prunable_layers(model)[1][1])
    assert torch.allclose(w.abs(), torch.tensor(math.sqrt(2 / (w[0].numel() * 0.25))))


def _toy_popup(scores: list[float], weights: list[float], sparsity: float):
    model = nn.Sequential(nn.Linear(len(scores), 1, bias=False))
    cls = get_method("edgepopup")
    method = cls(cls.hparams_cls(signed_constant=False), make_ctx(sparsity))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([weights]))
    method.prepare(model)
    pm = weight_transform(model[0])
    with torch.no_grad():
        pm.scores.copy_(torch.tensor([scores]))
    return model, pm


def test_edgepopup_score_gradient_is_straight_through_with_the_sign_of_the_score():
    """Finite differences of the loss in the (relaxed) mask, times sign(score)."""
    scores = [-0.9, 0.8, -0.1, 0.2, -0.7, 0.05]
    weights = [0.5, -1.0, 2.0, 0.3, -0.4, 1.5]
    model, pm = _toy_popup(scores, weights, sparsity=0.5)
    x = torch.tensor([[1.0, 2.0, -1.0, 0.5, 3.0, -2.0]])

    def loss_of_mask(m: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.linear(x.double(), torch.tensor([weights]).double() * m)
                - 1.0).pow(2).sum()

    out = model(x)
    ((out - 1.0) ** 2).sum().backward()
    hard = pm.mask().detach().double()
    eps = 1e-6
    for i in range(len(scores)):
        up, down = hard.clone(), hard.clone()
        up[0, i] += eps
        down[0, i] -= eps
        d_mask = (loss_of_mask(up) - loss_of_mask(down)) / (2 * eps)
        want = math.copysign(1.0, scores[i]) * float(d_mask)
        assert float(pm.scores.grad[0, i]) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_edgepopup_sgd_step_grows_the_score_of_a_helpful_weight_with_negative_score():
    # Target 3 = weight 0 (+1) alone; it is kept (|score| is the largest) but its score is
    # negative. Weight 1 (-1) hurts and is pruned. Descent must grow |score 0|, not shrink it.
    model, pm = _toy_popup([-0.5, 0.1], [1.0, -1.0], sparsity=0.5)
    x = torch.tensor([[1.0, 1.0]])
    opt = torch.optim.SGD([pm.scores], lr=0.01)
    ((model(x) - 3.0) ** 2).sum().backward()
    opt.step()
    assert pm.scores[0, 0].abs() > 0.5  # the kept helpful weight's |score| grew
    assert pm.scores[0, 1].abs() < 0.1  # the unhelpful weight's |score| fell


def test_edgepopup_trains_scores_only_weights_bit_identical(data):
    model, method = build("edgepopup", 0.5, data)
    method.prepare(model)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "scores" not in k}
    scores = [weight_transform(layer).scores.detach().clone()
              for _, layer in prunable_layers(model)]
    train(model, method, data)
    for key, value in frozen.items():
        assert torch.equal(model.state_dict()[key], value), key
    moved = [not torch.equal(weight_transform(layer).scores, s0)
             for (_, layer), s0 in zip(prunable_layers(model), scores, strict=True)]
    assert all(moved)


# -- supermask --------------------------------------------------------------------------------
def test_supermask_samples_bernoulli_of_sigmoid_and_rescales():
    model, method = build("supermask", None, dynamic_rescale=True)
    method.prepare(model)
    layer = prunable_layers(model)[2][1]  # the 1024 x 256 Linear
    bm = weight_transform(layer)
    with torch.no_grad():
        bm.logits.fill_(math.log(0.2 / 0.8))
    model.train()
    freq = torch.stack([bm.mask().detach() for _ in range(20)]).mean()
    assert freq.item() == pytest.approx(0.2, abs=0.003)
    a, b = bm.mask().detach(), bm.mask().detach()
    assert not torch.equal(a, b)  # a fresh sample per forward
    torch.manual_seed(3)
    eff = layer.weight.detach()
    torch.manual_seed(3)
    m = bm.mask().detach()
    w = stored_weight(layer).detach()
    torch.testing.assert_close(eff, w * m * (m.numel() / m.sum()))
    model.eval()
    with torch.no_grad():
        bm.logits[0, :10] = 0.0
        bm.logits[0, 10:20] = 1e-3
    mode = bm.mask()
    assert mode[0, :20].eq(1).all() and mode[0, 20:].eq(0).all()


def test_supermask_gradient_is_straight_through_the_sample():
    model, method = build("supermask", None)
    method.prepare(model)
    layer = prunable_layers(model)[4][1]
    bm = weight_transform(layer)
    with torch.no_grad():
        bm.logits.normal_()
    model.train()
    c = torch.randn_like(stored_weight(layer))
    (layer.weight * c).sum().backward()
    p = torch.sigmoid(bm.logits.detach())
    torch.testing.assert_close(bm.logits.grad, p * (1 - p) * stored_weight(layer).detach() * c)
    groups = method.param_groups(model, Phase("train", 1))
    assert [g.name for g in groups] == ["logits"] and groups[0].lr == 100.0
    assert groups[0].schedule == "constant"  # Zhou 2019 reference code: --decay_schedule -1


def test_supermask_extract_averages_ten_seeded_samples_and_folds_the_mode():
    model, method = build("supermask", None)
    method.prepare(model)
    seen = []

    def fake_evaluate(m, split):
        assert split == "test" and not m.training
        masks = [weight_transform(layer).mask() for _, layer in prunable_layers(m)]
        density = float(sum(x.sum() for x in masks) / sum(x.numel() for x in masks))
        seen.append(density)
        return {"top1": 100 * density, "top5": 100.0, "loss": 0.0}

    method.ctx.evaluate = fake_evaluate
    out = method.extract(model.eval())
    assert len(seen) == 10 and len(set(seen)) == 10  # ten different samples, p = 0.5
    assert out["test_top1"] == pytest.approx(100 * sum(seen) / 10)  # the headline
    assert out["sampled_sparsity_mean"] == pytest.approx(1 - sum(seen) / 10)
    assert all(abs(d - 0.5) < 0.01 for d in seen)
    # eval mode after extraction: the most likely mask (all logits 0 -> keep all)
    assert all(weight_transform(layer).mask().eq(1).all() for _, layer in prunable_layers(model))


def test_supermask_epoch_and_extraction_metrics_are_the_closed_form():
    """Logits -1, 0, 0.5, 2 repeated in every layer: expected density the mean sigmoid, mode
    density 3/4 (a logit of exactly 0 is kept); without evaluate, extract records only that
    and the folded mask's rule."""
    model, method = build("supermask", None)
    method.prepare(model)
    with torch.no_grad():
        for m in [weight_transform(layer) for _, layer in prunable_layers(model)]:
            m.logits.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]).repeat(m.logits.numel() // 4)
                           .view_as(m.logits))
    density = sum(1 / (1 + math.exp(-v)) for v in (-1.0, 0.0, 0.5, 2.0)) / 4
    metrics = method.epoch_metrics(model)
    assert metrics == {"expected_density": pytest.approx(density, rel=1e-6),
                       "mode_density": 0.75}
    assert method.extract(model.eval()) == {"folded_mask": "most likely: keep iff logit >= 0",
                                            "expected_sparsity": pytest.approx(1 - density,
                                                                               rel=1e-6)}


@pytest.mark.parametrize("samples", [10, 2, 1])
def test_supermask_sampled_evaluation_records_mean_std_and_each_sample(samples):
    """test_top1 the mean, sampled_test_top1_std the sample standard deviation (n - 1; 0 for
    one sample), each accuracy to 2 decimals; the masks from the run seed alone."""
    accs = [50.0, 52.5, 47.25, 61.0, 49.5, 55.0, 58.75, 44.0, 51.0, 53.5][:samples]
    runs = []
    for global_seed in (1, 2):
        model, method = build("supermask", None, eval_samples=samples)
        method.prepare(model)
        with torch.no_grad():
            for _, layer in prunable_layers(model):
                weight_transform(layer).logits.normal_(generator=torch.Generator()
                                                       .manual_seed(9))
        values, seen = iter(accs), []

        def evaluate(m, split, values=values, seen=seen):
            seen.append([weight_transform(layer).mask().clone() for _, layer in
                         prunable_layers(m)])
            return {"top1": next(values), "top5": 100.0, "loss": 0.0}

        method.ctx.evaluate = evaluate
        torch.manual_seed(global_seed)  # the global generator must not matter
        runs.append((method.extract(model.eval()), seen))
    (out, seen), (_, seen_again) = runs
    assert all(torch.equal(a, b) for x, y in zip(seen, seen_again, strict=True)
               for a, b in zip(x, y, strict=True))
    assert out["test_top1"] == pytest.approx(statistics.fmean(accs))
    assert out["sampled_test_top1_std"] == pytest.approx(
        statistics.stdev(accs) if samples > 1 else 0.0)
    assert [float(a) for a in out["sampled_test_top1"].split(";")] == accs
    assert out["eval_samples"] == samples


def test_supermask_dynamic_rescale_of_a_layer_keeping_one_weight():
    """numel / kept with kept = 1: the single kept weight scaled by numel (eval, mode mask)."""
    model, method = build("supermask", None, dynamic_rescale=True)
    method.prepare(model)
    layer = prunable_layers(model)[4][1]  # the 10 x 256 Linear
    bm = weight_transform(layer)
    with torch.no_grad():
        bm.logits.fill_(-1.0)
        bm.logits[3, 7] = 0.0
    model.eval()
    w = stored_weight(layer).detach()
    want = torch.zeros_like(w)
    want[3, 7] = w[3, 7] * 2560
    torch.testing.assert_close(layer.weight.detach(), want)


def test_supermask_default_weights_are_kaiming_normal_and_the_run_schedule_is_none():
    """Default init Kaiming normal (std sqrt(2 / fan_in), here to 2 % over 262,144 weights),
    not the signed constant; lr_schedule=run leaves the group on the run's schedule."""
    model, method = build("supermask", None)
    method.prepare(model)
    w = stored_weight(prunable_layers(model)[2][1]).detach()  # 256 x 1024
    assert w.unique().numel() > 1000
    assert float(w.std()) == pytest.approx(math.sqrt(2 / 1024), rel=0.02)
    model, method = build("supermask", None, lr_schedule="run")
    method.prepare(model)
    assert method.param_groups(model, Phase("train", 1))[0].schedule is None


# -- budgets, collapse, registry --------------------------------------------------------------
@pytest.mark.slow
def test_layer_collapse_is_recorded(digits_dir, tmp_path):
    # resnet18's last layer empties under global |w| at 99 %: Kaiming-uniform fc weights are
    # small beside the convs' (as in SynFlow's magnitude-at-init collapse). Needs no training.
    metrics, out = run(digits_dir, tmp_path, "magnitude_init", 0.99, arch="resnet18", epochs=0)
    rows = (out / "layers.csv").read_text().splitlines()
    empty = [r.split(",")[0] for r in rows[1:] if r.split(",")[4] == "0"]
    assert empty and metrics["num_layers_collapsed"] == len(empty)
    assert metrics["layers_collapsed"] == ";".join(empty)
    assert metrics["kept_prunable"] == budget_count(metrics["num_prunable"], 0.99)


@pytest.mark.parametrize("name", OWN_BUDGETED)
@pytest.mark.parametrize("sparsity", [0.5, 0.99])
def test_budgeted_baselines_hit_exactly_k(name, sparsity, digits_dir, tmp_path):
    extra = {"method.ft_epochs": 0} if name == "magnitude_ft" else {}
    metrics, _ = run(digits_dir, tmp_path, name, sparsity, arch="conv2", epochs=0, **extra)
    assert metrics["kept_prunable"] == budget_count(metrics["num_prunable"], sparsity)
    assert metrics["budgeted"] is True


def _budgeted_methods() -> list[str]:
    out = []
    for name in list_methods():
        cls = get_method(name)
        try:
            if cls(cls.hparams_cls(), make_ctx(0.9)).is_budgeted():
                out.append(name)
        except Exception:  # noqa: BLE001 - a method that cannot even be built fails below
            out.append(name)
    return out


@pytest.mark.parametrize("name", _budgeted_methods())
def test_every_budgeted_method_keeps_exactly_k_after_one_epoch(name, digits_dir, tmp_path):
    metrics, out = run(digits_dir, tmp_path, name, 0.9, arch="conv2", epochs=1)
    k = budget_count(metrics["num_prunable"], 0.9)
    assert metrics["kept_prunable"] == k
    rows = (out / "layers.csv").read_text().splitlines()
    assert sum(int(r.split(",")[4]) for r in rows[1:]) == k
    assert "num_layers_collapsed" in metrics and "layers_collapsed" in metrics


class _Stop(Exception):
    pass


@pytest.mark.parametrize("name", [  # the two proposed methods in the fast tier; every one in slow
    pytest.param(m, marks=[] if m in ("gumbel", "reparam") else [pytest.mark.slow])
    for m in list_methods()])
def test_resume_after_first_epoch_is_identical(name, data):
    """Every registered method: a checkpoint taken after epoch 1, restored into a freshly
    prepared model, continues to exactly the state of an uninterrupted run (magnitude_ft: its
    pruning step lies between)."""
    sparsity = 0.8 if name in _budgeted_methods() else None
    options = {"ft_epochs": 1} if name == "magnitude_ft" else {}
    epochs = 1 if name == "magnitude_ft" else 2
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=0.01, crop_padding=1, flip=False,
                      device="cpu")

    def trainer(save):
        model, method = build(name, sparsity, data, epochs=epochs, **options)
        method.prepare(model)
        return Trainer(model, method, data, cfg, 0, CPU, save=save, log=lambda _m: None)

    reference = trainer(lambda _c: None)
    reference.run()
    saved = {}

    def save_then_stop(ckpt):
        saved["ckpt"] = copy.deepcopy(ckpt)
        raise _Stop

    with pytest.raises(_Stop):
        trainer(save_then_stop).run()
    resumed = trainer(lambda _c: None)
    resumed.restore(saved["ckpt"])
    resumed.run()
    want, got = reference.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


# -- training well above chance on digits conv4 -----------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", OWN_BUDGETED)
def test_baseline_trains_well_above_chance_at_half_sparsity(name, digits_dir, tmp_path):
    extra = {"method.ft_epochs": 2} if name == "magnitude_ft" else {}
    metrics, out = run(digits_dir, tmp_path, name, 0.5, epochs=3, **extra)
    assert metrics["test_top1"] > 60.0, metrics["test_top1"]
    assert metrics["sparsity_achieved"] == pytest.approx(0.5, abs=1e-5)
    if name == "magnitude_ft":
        phases = [r.split(",")[1] for r in (out / "history.csv").read_text().splitlines()[1:]]
        assert phases == ["dense"] * 3 + ["finetune"] * 2


@pytest.mark.slow
def test_supermask_trains_well_above_chance(digits_dir, tmp_path):
    # conv2: with 50 % masks on frozen weights the signal shrinks layer by layer and conv4 needs
    # ~500 steps before the masks take off (docs/methods/gumbel.md); conv2 leaves chance at once.
    metrics, _ = run(digits_dir, tmp_path, "supermask", None, arch="conv2", epochs=5,
                     batch_size=16)
    assert metrics["test_top1"] > 40.0, metrics["test_top1"]  # mean over sampled masks
    assert metrics["test_top1_extracted"] > 50.0  # the most likely mask, folded
    assert 0.2 < metrics["sparsity_achieved"] < 0.8


@pytest.mark.slow
def test_magnitude_init_degrades_at_99_percent(digits_dir, tmp_path):
    # Global |w| at init on conv4 keeps 5 of conv4's 147,456 weights at 99 %: the record must
    # show it (a collapsed layer or accuracy near chance, and the near-empty layer in layers.csv).
    sparse, out = run(digits_dir, tmp_path, "magnitude_init", 0.99, epochs=3)
    densities = [float(r.split(",")[5]) for r in (out / "layers.csv").read_text().splitlines()[1:]]
    assert sparse["num_layers_collapsed"] > 0 or sparse["test_top1"] < 40.0
    assert min(densities) < 0.001


# -- the 2022 paper's settings for frozen-weight methods (ASLP) --------------------------------
@pytest.mark.parametrize("name", ["gumbel", "supermask", "edgepopup"])
def test_frozen_bias_gives_every_layer_a_random_bias_that_never_trains(name, data):
    sparsity = 0.5 if name == "edgepopup" else None
    model, method = build(name, sparsity, arch="conv2", frozen_bias=True)
    method.prepare(model)
    biases = {n: layer.bias.detach().clone() for n, layer in prunable_layers(model)}
    for n, bias in biases.items():
        fan_in = stored_weight(dict(prunable_layers(model))[n])[0].numel()
        assert bias.abs().max() <= 1 / math.sqrt(fan_in) and bias.abs().min() > 0, n
    train(model, method, data, epochs=1)
    for n, layer in prunable_layers(model):
        assert torch.equal(layer.bias.detach(), biases[n]), f"{name}: bias of {n} trained"


@pytest.mark.parametrize("scope", ["conv", "all"])
@pytest.mark.parametrize("name", ["gumbel", "supermask", "edgepopup"])
def test_signed_constant_scope_conv_leaves_linear_layers_kaiming(name, scope):
    """scope conv (ASLP's code): only convolutions get the signed constant; all (the default,
    as the papers describe it): every prunable layer."""
    sparsity = 0.5 if name == "edgepopup" else None
    key = "init" if name == "gumbel" else "signed_constant"
    value = "signed_constant" if name == "gumbel" else True
    model, method = build(name, sparsity, arch="conv2", **{key: value,
                                                          "signed_constant_scope": scope})
    method.prepare(model)
    for n, layer in prunable_layers(model):
        distinct = stored_weight(layer).abs().unique().numel()
        if isinstance(layer, nn.Conv2d) or scope == "all":
            assert distinct == 1, f"{name}: {n} is not a signed constant"
        else:
            assert distinct > 100, f"{name}: linear {n} got the signed constant"


def test_edgepopup_aslp_recipe_keeps_a_constant_lr(data):
    model, method = build("edgepopup", 0.5, arch="conv2", lr=50.0, weight_decay=0.0,
                          lr_schedule="constant")
    method.prepare(model)
    (group,) = method.param_groups(model, Phase("train", 1))
    assert (group.lr, group.weight_decay, group.schedule) == (50.0, 0.0, "constant")
    model, method = build("edgepopup", 0.5, arch="conv2")
    method.prepare(model)
    assert method.param_groups(model, Phase("train", 1))[0].schedule is None  # the run's cosine
