"""The paper grid runs every published row on its reference's protocol: config/paper.yaml is
expanded as the workflow expands it, each run's settings are resolved from its job's command
line, and checked against what the reference code does (ASLP, hidden-networks, Synaptic-Flow)
and, for the 2021 paper, against its own baselines' recipe. Torch-free and fast."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import yaml

from prunebench.plan.config import RunConfig, resolve
from prunebench.plan.grid import Job, cli_value, coverage, expand, read_published

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "config" / "published_results.csv"


@pytest.fixture(scope="module")
def jobs() -> list[Job]:
    return expand(yaml.safe_load((REPO / "config" / "paper.yaml").read_text()))


def job_config(job: Job) -> RunConfig:
    """The run's full config, resolved from its job's `key=value` arguments alone, as the
    workflow's `python -m prunebench run` resolves it."""
    r = job.run
    return resolve(r.dataset, r.arch, r.method, r.sparsity, r.seed,
                   overrides={k: cli_value(v) for k, v in job.overrides}, variant=r.variant)


@pytest.fixture(scope="module")
def published_runs(jobs: list[Job]) -> list[tuple[dict[str, str], list[RunConfig]]]:
    """Every published row with the configs of the grid runs that reproduce it."""
    by_run = {job.run: job for job in jobs}
    rows = coverage(jobs, read_published(PUBLISHED))
    return [(row, [job_config(by_run[run]) for run in runs]) for row, runs, _ in rows]


def test_every_published_row_has_runs(published_runs) -> None:
    assert len(published_runs) == 83
    missing = [row for row, configs in published_runs if not configs]
    assert not missing, missing


def test_2021_comparison_runs_on_one_recipe(jobs: list[Job]) -> None:
    """Dupont 2021 compares reparam (both variants) with dense, MP and MP+FT: on each of its
    datasets/archs all five train with one recipe (batch, epochs, schedule, lr, every other
    train setting), MP and MP+FT prune the dense run of their seed, and MP+FT fine-tunes as
    documented (a quarter of the epochs at the recipe's lr, restarted)."""
    compared = {("dense", ""), ("magnitude", ""), ("magnitude_ft", ""), ("reparam", ""),
                ("reparam", "paper-sgd-t")}
    for dataset, arch in [("cifar10", "conv4"), ("cifar10", "vgg19"), ("cifar10", "resnet18"),
                          ("tinyimagenet", "conv4")]:
        configs = {}
        for job in jobs:
            r = job.run
            if (r.dataset, r.arch) == (dataset, arch) and (r.method, r.variant) in compared:
                cfg = job_config(job)
                configs.setdefault((r.method, r.variant), cfg)
                if r.method in ("magnitude", "magnitude_ft"):
                    dense = f"results/runs/{dataset}/{arch}/dense/snone/seed{r.seed}"
                    assert cfg.method_options["dense_from"] == dense, r
        assert set(configs) == compared, (dataset, arch, sorted(configs))
        recipes = {key: dataclasses.asdict(cfg.train) for key, cfg in configs.items()}
        reference = recipes[("dense", "")]
        for key, recipe in recipes.items():
            differ = {k: (v, reference[k]) for k, v in recipe.items() if v != reference[k]}
            assert not differ, (dataset, arch, key, differ)
        ft = configs[("magnitude_ft", "")].method_options
        assert ft.get("ft_epochs") is None and ft.get("ft_lr") is None, ft


def _check_aslp(row: dict[str, str], cfg: RunConfig) -> None:
    t, options = cfg.train, cfg.method_options
    assert (t.epochs, t.batch_size, t.selection, t.patience) == (1000, 256, "val", 100)
    assert (t.val_fraction, t.val_augment, t.eval_batch_size) == (0.1, True, 256)
    assert t.test_each_epoch is False
    if row["variant"].startswith("aslp-sc-aug"):  # setting (a) and the CIFAR-100 table
        assert (t.crop_padding, t.flip, t.normalize, t.norm_stats) == (4, True, True, "aslp")
    else:  # setting (b): no augmentation, no normalisation
        assert row["variant"].startswith("aslp-kn-noaug")
        assert (t.crop_padding, t.flip, t.normalize, t.norm_stats) == (0, False, False, "dataset")
    if cfg.method in ("gumbel", "supermask"):
        assert options["val_mask"] == "sampled"
    if cfg.method == "gumbel":
        rescale = options["smart_rescale"]
        assert rescale == row["variant"].endswith("-rescale")
        assert options.get("optimizer_steps", "joint") == ("sequential" if rescale else "joint")


def _check_ramanujan(cfg: RunConfig) -> None:
    from prunebench.baselines.edgepopup import EdgePopupHparams

    t = cfg.train
    scores = EdgePopupHparams.from_dict(cfg.method_options, "edgepopup")  # the scores' optimiser
    assert (scores.lr, scores.momentum, scores.weight_decay, scores.lr_schedule) == (
        0.1, 0.9, 1e-4, "run")
    assert (t.epochs, t.batch_size, t.schedule) == (100, 128, "cosine")
    assert (t.val_fraction, t.selection, t.test_each_epoch) == (0.0, "final", True)


def _check_synflow(cfg: RunConfig) -> None:
    t = cfg.train
    assert (t.optimizer, t.momentum, t.nesterov) == ("sgd", 0.9, True)
    assert (t.schedule, t.drop_epochs(), t.lr_drop_rate) == ("multistep", (60, 120), 0.1)
    assert (t.lr, t.weight_decay, t.weight_decay_scope) == (0.1, 1e-4, "all")
    assert (t.batch_size, t.epochs, t.val_fraction, t.selection) == (128, 160, 0.0, "final")
    assert t.test_each_epoch is True  # which epoch SynFlow's arrays hold is not recorded
    assert "inferred" in t.protocol_note and "not in the repository" in t.protocol_note
    if cfg.method == "snip":
        o = cfg.method_options
        assert (o["bn_mode"], o["sample"], o["sample_augment"]) == ("eval", "random", True)
        assert (o.get("samples_per_class", 10), o["score_batch_size"]) == (10, 256)


def test_published_rows_run_their_references_protocol(published_runs) -> None:
    for row, configs in published_runs:
        for cfg in configs:
            assert cfg.train.amp is False, row  # fp32, as every reference, until measured
            source = row["source"]
            if source == "dupont2022_gumbel":
                _check_aslp(row, cfg)
            elif source == "ramanujan2020_edgepopup":
                _check_ramanujan(cfg)
            elif source == "tanaka2020_synflow":
                _check_synflow(cfg)
            else:
                assert source == "dupont2021_reparam", source  # test above


def test_published_rows_say_how_their_protocol_is_known() -> None:
    with open(PUBLISHED, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 83
    for row in rows:
        assert row["protocol"] in ("established", "inferred", "unknown"), row
        assert row["protocol_reason"].strip(), row
    cifar100 = [r for r in rows if r["dataset"] == "cifar100"]
    assert len(cifar100) == 6 and all(r["protocol"] == "inferred" for r in cifar100)
    assert all(r["protocol"] == "unknown" for r in rows if r["source"] == "dupont2021_reparam")
    assert not any("unpruned" in r["certainty"] for r in rows)  # SynFlow prunes 1x1 shortcuts
