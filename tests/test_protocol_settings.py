"""The settings that reproduce each reference's protocol do what their help says, and their
defaults change nothing: SynFlow's Nesterov / MultiStepLR / weight decay on every parameter /
random augmented SNIP images, ASLP's normalisation statistics, augmented validation images,
sampled validation masks and two-pass optimiser steps, and Ramanujan's per-epoch test
accuracy beside the final one."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunebench.baselines.snip import Snip, SnipHparams
from prunebench.baselines.supermask import Supermask, SupermaskHparams
from prunebench.data.prepared import (
    ASLP_STATS,
    DeviceData,
    augment,
    load_prepared,
    normalization_stats,
)
from prunebench.errors import PrunebenchError
from prunebench.methods.gumbel import Gumbel, GumbelHparams
from prunebench.plan.config import TrainConfig, resolve
from prunebench.training.masking import fold, prunable_layers, weight_transform
from prunebench.training.method import MethodContext, OptimGroup, TrainSettings, weight_groups
from prunebench.training.models import create_model
from prunebench.training.run import execute
from prunebench.training.train import Trainer, build_optimizers, lr_factor, optimizer_stages

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(digits_dir) -> DeviceData:
    return DeviceData(load_prepared("digits", digits_dir), CPU, 0.1)


def ctx(data: DeviceData | None = None, train: TrainSettings | None = None) -> MethodContext:
    def scoring(count, batch, balanced, aug):
        return data.scoring_batches(count, batch, torch.Generator().manual_seed(0), balanced,
                                    1 if aug else 0, False)

    return MethodContext(
        sparsity=None, num_classes=10, device=CPU, seed=0,
        train=train or TrainSettings(1, 0.01, 0.9, 0.0, "sgd"),
        sample_batches=lambda p, b: data.balanced_batches(p, b, torch.Generator().manual_seed(0)),
        scoring_batches=scoring if data is not None else None)


# -- SynFlow: optimiser and schedule ---------------------------------------------------------

def test_multistep_equals_pytorch_multisteplr_per_epoch() -> None:
    """lr_drop_epochs counted in epochs of the phase, as SynFlow's MultiStepLR."""
    cfg = TrainConfig(schedule="multistep", lr_drop_epochs="3,5", lr_drop_rate=0.2)
    steps_per_epoch, epochs = 7, 8
    drops = tuple(e * steps_per_epoch for e in cfg.drop_epochs())
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 5], gamma=0.2)
    for epoch in range(epochs):
        expected = opt.param_groups[0]["lr"]
        for step in range(steps_per_epoch):
            got = lr_factor("multistep", epoch * steps_per_epoch + step, epochs * steps_per_epoch,
                            drops, cfg.lr_drop_rate)
            assert got == pytest.approx(expected, rel=1e-12), (epoch, step)
        opt.step()
        sched.step()


@pytest.mark.parametrize("bad", [{"schedule": "multistep"},
                                 {"lr_drop_epochs": "60,120"},
                                 {"schedule": "multistep", "lr_drop_epochs": "120,60"},
                                 {"schedule": "multistep", "lr_drop_epochs": "sixty"},
                                 {"nesterov": True, "momentum": 0.0},
                                 {"nesterov": True, "optimizer": "adam"}])
def test_inconsistent_schedule_and_nesterov_settings_are_refused(bad) -> None:
    with pytest.raises(PrunebenchError, match="lr_drop_epochs|nesterov"):
        TrainConfig(**bad).validate()


def test_nesterov_and_weight_decay_on_every_parameter() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=True), nn.BatchNorm2d(2))
    params = list(model.parameters())
    default = weight_groups(params, TrainSettings(1, 0.1, 0.9, 1e-4, "sgd"))
    assert [(g.name, g.weight_decay, g.nesterov) for g in default] == [
        ("weights", 1e-4, False), ("biases_norms", 0.0, False)]
    synflow = weight_groups(params, TrainSettings(1, 0.1, 0.9, 1e-4, "sgd", True, "all"))
    assert [(len(g.params), g.weight_decay, g.nesterov) for g in synflow] == [(4, 1e-4, True)]
    (opt,) = build_optimizers(synflow)
    assert opt.param_groups[0]["nesterov"] is True
    # one step equals torch's own Nesterov SGD with decay on every tensor
    ref = [p.detach().clone().requires_grad_(True) for p in params]
    ref_opt = torch.optim.SGD(ref, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    for _ in range(2):
        for group in (params, ref):
            for p in group:
                p.grad = torch.ones_like(p)
        opt.step()
        ref_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, ref, strict=True))


# -- SynFlow: SNIP's scoring images ---------------------------------------------------------

def test_scoring_batches_random_augmented_images(data: DeviceData) -> None:
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    plain = list(data.scoring_batches(100, 256, gen(), balanced=False))
    again = list(data.scoring_batches(100, 256, gen(), balanced=False))
    assert len(plain) == 1 and len(plain[0][1]) == 100
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain, again, strict=True))
    labels = plain[0][1].bincount(minlength=10)
    balanced = next(data.scoring_batches(100, 256, gen(), balanced=True))[1].bincount()
    assert (balanced == 10).all() and not (labels == 10).all()  # random: not balanced
    augmented = next(data.scoring_batches(100, 256, gen(), balanced=False, crop_padding=1))
    assert torch.equal(augmented[1], plain[0][1]) and not torch.equal(augmented[0], plain[0][0])
    # the default balanced, un-augmented sample is the one SNIP always used
    old = next(data.balanced_batches(10, 1000, gen()))
    assert torch.equal(old[0], next(data.scoring_batches(100, 1000, gen(), True))[0])


@pytest.mark.parametrize("options, uses", [({}, "sample_batches"),
                                           ({"sample": "random"}, "scoring_batches"),
                                           ({"sample_augment": True}, "scoring_batches")])
def test_snip_draws_its_images_as_asked(options, uses, data: DeviceData) -> None:
    calls = []
    c = ctx(data)
    c.sparsity = 0.5
    for name in ("sample_batches", "scoring_batches"):
        real = getattr(c, name)
        setattr(c, name, lambda *a, real=real, name=name: calls.append((name, a)) or real(*a))
    method = Snip(SnipHparams.from_dict({**options, "score_batch_size": 256}, "snip"), c)
    method.prepare(create_model("conv2", 10, 1, 8))
    assert [name for name, _ in calls] == [uses] and method.score_images == 100
    if uses == "scoring_batches":
        assert calls[0][1] == (100, 256, "sample" not in options,
                               bool(options.get("sample_augment")))


# -- ASLP: inputs and validation ------------------------------------------------------------

def test_normalisation_statistics(digits_dir) -> None:
    manifest = {"dataset": "cifar10", "mean": [0.4914, 0.4822, 0.4465],
                "std": [0.2470, 0.2435, 0.2616]}
    assert normalization_stats(manifest, True) == (manifest["mean"], manifest["std"])
    assert normalization_stats(manifest, True, "aslp") == tuple(map(list, ASLP_STATS))
    assert normalization_stats(manifest, False, "aslp") == ([0.0] * 3, [1.0] * 3)
    with pytest.raises(PrunebenchError, match="3 channels"):
        normalization_stats({"dataset": "digits", "mean": [0.3], "std": [0.4]}, True, "aslp")
    with pytest.raises(PrunebenchError, match="norm_stats=aslp"):
        resolve("digits", "conv2", "dense", None, 0, overrides={"norm_stats": "aslp"})
    prepared = load_prepared("digits", digits_dir)
    x, _ = next(DeviceData(prepared, CPU, 0.1, stats=([0.5], [0.25])).eval_batches("test", 8))
    raw, _ = next(DeviceData(prepared, CPU, 0.1, normalize=False).eval_batches("test", 8))
    assert torch.allclose(x, (raw - 0.5) / 0.25, atol=1e-6)


def test_augmented_validation_images(data: DeviceData) -> None:
    plain = torch.cat([x for x, _ in data.eval_batches("val", 64)])
    gen = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    aug = torch.cat([x for x, _ in data.eval_batches("val", 64, 1, False, gen())])
    assert aug.shape == plain.shape and not torch.equal(aug, plain)
    raw = data.splits["val"][0]
    g = gen()
    expected = torch.cat([data.normalize(augment(raw[i:i + 64], 1, False, g))
                          for i in range(0, len(raw), 64)])
    assert torch.equal(aug, expected)


def test_whole_training_set_and_a_training_subset(digits_dir) -> None:
    prepared = load_prepared("digits", digits_dir)
    whole = DeviceData(prepared, CPU, 0.0)
    assert whole.size("train") == prepared.manifest["num_train"] and whole.size("val") == 0
    default = DeviceData(prepared, CPU, 0.1)
    subset = DeviceData(prepared, CPU, 0.1, train_images=300)
    assert torch.equal(subset.splits["val"][1], default.splits["val"][1])
    counts = subset.splits["train"][1].bincount(minlength=10)
    assert abs(subset.size("train") - 300) <= 10 and counts.min() >= 28 and counts.max() <= 32
    x = subset.splits["train"][0]
    assert all(bool((default.splits["train"][0] == x[i]).all(dim=(1, 2, 3)).any())
               for i in range(0, len(x), 37))  # the subset's images are training images


def _gumbel(val_mask: str, steps: str = "joint", rescale: bool = True):
    torch.manual_seed(0)
    model = create_model("conv2", 10, 1, 8)
    method = Gumbel(GumbelHparams(val_mask=val_mask, optimizer_steps=steps,
                                  smart_rescale=rescale), ctx())
    method.prepare(model)
    return model, method


def learned(model: nn.Module) -> dict[str, torch.Tensor]:
    """The logits and scales of every layer, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if n.endswith(("logits", "scale"))}


@pytest.mark.parametrize("name", ["gumbel", "supermask"])
def test_sampled_validation_masks_until_extraction(name: str) -> None:
    x = torch.randn(16, 1, 8, 8)
    for val_mask in ("deterministic", "sampled"):
        if name == "gumbel":
            model, method = _gumbel(val_mask)
        else:
            torch.manual_seed(0)
            model = create_model("conv2", 10, 1, 8)
            method = Supermask(SupermaskHparams(val_mask=val_mask), ctx())
            method.prepare(model)
        model.eval()
        with torch.no_grad():
            outs = [model(x) for _ in range(3)]
        varies = not all(torch.equal(outs[0], o) for o in outs[1:])
        assert varies == (val_mask == "sampled") == method.samples_masks_in_eval()
        method.extract(model)
        assert not method.samples_masks_in_eval()
        with torch.no_grad():
            assert torch.equal(model(x), model(x))  # extracted: deterministic
        fold(model)  # the folded mask is the most likely one, not a sample
        for _, layer in prunable_layers(model):
            assert layer.weight.ne(0).float().mean() > 0.4


def test_sequential_steps_are_aslps_two_optimiser_order(data: DeviceData) -> None:
    """optimizer_steps=sequential: on each batch the logits step on one Gumbel sample, then the
    scales step on a pass of their own through the updated logits, as PyTorch Lightning 1.x
    runs ASLP's two optimisers; the default steps both from one pass."""
    x, y = next(data.train_batches_from(32, torch.Generator().manual_seed(0), 0, False)[0])
    cfg = TrainConfig(amp=False)
    results = {}
    for steps in ("joint", "sequential"):
        model, method = _gumbel("deterministic", steps)
        phase = method.phases()[0]
        trainer = Trainer(model, method, data, cfg, 0, CPU, save=lambda _c: None,
                          log=lambda _s: None)
        optimizers = trainer.setup_phase(phase)
        assert len(optimizer_stages(optimizers)) == (2 if steps == "sequential" else 1)
        epoch = trainer.begin_epoch(phase)
        torch.manual_seed(11)
        trainer.train_step(x, y, optimizers, epoch)
        results[steps] = learned(model)

    # the same order by hand
    model, method = _gumbel("deterministic")
    masks = [weight_transform(layer) for _, layer in prunable_layers(model)]
    logits = torch.optim.SGD([m.logits for m in masks], lr=50.0, momentum=0.9)
    scales = torch.optim.SGD([m.scale for m in masks], lr=1e-3, momentum=0.9)
    torch.manual_seed(11)
    for opt, params in ((logits, [m.logits for m in masks]), (scales, [m.scale for m in masks])):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward(inputs=params)
        opt.step()
    by_hand = learned(model)
    assert results["sequential"].keys() == by_hand.keys() and len(by_hand) == 10
    assert all(torch.equal(results["sequential"][k], v) for k, v in by_hand.items())
    assert not all(torch.equal(results["joint"][k], v) for k, v in by_hand.items())


def test_without_rescale_sequential_is_one_pass() -> None:
    model, method = _gumbel("deterministic", "sequential", rescale=False)
    groups = method.param_groups(model, method.phases()[0])
    assert [g.stage for g in groups] == [0]
    assert optimizer_stages(build_optimizers([OptimGroup([nn.Parameter(torch.zeros(1))], "a"),
                                              OptimGroup([nn.Parameter(torch.zeros(1))], "b",
                                                         stage=1)])) != []


# -- Ramanujan: the final accuracy is the headline, the best epoch a diagnostic --------------

def test_test_each_epoch_records_the_best_beside_the_final(digits_dir, tmp_path) -> None:
    overrides = {"data_dir": str(digits_dir), "device": "cpu", "epochs": "3",
                 "batch_size": "64", "val_fraction": "0", "test_each_epoch": "true"}
    metrics = execute(resolve("digits", "conv2", "edgepopup", 0.5, 0, overrides=overrides),
                      tmp_path / "run")
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    per_epoch = [float(line.split(",")[header.index("epoch_test_top1")])
                 for line in history[1:]]
    assert len(per_epoch) == 3 and metrics["test_top1_best_epoch"] == max(per_epoch)
    assert metrics["test_best_epoch"] == per_epoch.index(max(per_epoch)) + 1
    assert metrics["test_top1"] == per_epoch[-1]  # the headline is the final epoch's network
    assert metrics["train_val_fraction"] == 0.0 and metrics["train_test_each_epoch"] is True
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["train"]
    assert saved["test_each_epoch"] is True


def test_defaults_change_nothing() -> None:
    t = TrainConfig()
    assert (t.nesterov, t.weight_decay_scope, t.schedule, t.lr_drop_epochs) == (
        False, "weights", "cosine", "")
    assert (t.val_augment, t.test_each_epoch, t.norm_stats, t.protocol_note, t.train_images) == (
        False, False, "dataset", "", 0)
    assert (GumbelHparams().val_mask, GumbelHparams().optimizer_steps) == (
        "deterministic", "joint")
    assert SupermaskHparams().val_mask == "deterministic"
    assert (SnipHparams().sample, SnipHparams().sample_augment) == ("balanced", False)


def test_list_options_shows_the_training_settings(capsys) -> None:
    from prunebench.cli import print_options

    print_options("train")
    out = capsys.readouterr().out
    for key, allowed in [("nesterov", ""), ("weight_decay_scope", "weights, all"),
                         ("lr_drop_epochs", ""), ("val_augment", ""), ("test_each_epoch", ""),
                         ("norm_stats", "dataset, aslp"), ("protocol_note", ""),
                         ("schedule", "cosine, step, multistep, constant")]:
        line = next(row for row in out.splitlines() if row.split()[:1] == [key])
        assert allowed in line, line
