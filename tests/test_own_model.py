"""Benchmark your own model: the workflow runs a grid with a timm model on a local image folder of
images of several sizes prepared at 48x48, its pruning methods starting from the grid's own dense
run's saved network (`init_from`), from nothing to the report's PDF."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_workflow import _copy_workflow, _load, _snakemake, _write_config

from prunebench.plan.grid import ConfigError, expand, init_from_run

ARCH = "timm/test_vit"
DENSE_NETWORK = "results/runs/imagefolder/timm-test_vit/dense/snone/seed0/network.safetensors"


def image_folder(root: Path, classes: int = 4, train: int = 10, test: int = 4) -> Path:
    """root/{train,test}/<digit>/*.png: scikit-learn's 8x8 digits scaled to RGB images of
    several sizes and aspect ratios (40x48 to 64x56), as a user's photos would differ."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for label in range(classes):
        images = bunch.images[bunch.target == label][:train + test]
        for k, image in enumerate(images):
            folder = root / ("train" if k < train else "test") / f"digit{label}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(image * 16.0, 0, 255).astype(np.uint8)
            size = (40 + 8 * (k % 4), 48 + 8 * (k % 2))
            Image.fromarray(pixels, mode="L").convert("RGB").resize(size).save(
                folder / f"{k}.png")
    return root


def own_model_config(tree: Path) -> dict:
    """The grid of docs/own-model.md, tiny: a timm model, the image folder at 48x48, dense
    once, then three methods at two budgets from the dense run's network."""
    config = _load("config.yaml")
    start = {"train": {"init_from": DENSE_NETWORK}}
    config.update(
        data_roots={"imagefolder": str(tree)},
        data_options={"imagefolder": {"image_size": 48, "resize": "center_crop"}},
        train={"device": "cpu", "epochs": 1, "batch_size": 16, "exclude_layers": "last"},
        methods={"magnitude_init": start, "snip": start,
                 "gumbel": {**start, "options": {"keep_weights": True}}},
        grids=[{"name": "own", "datasets": ["imagefolder"], "archs": [ARCH],
                "methods": ["dense", "magnitude_init", "snip", "gumbel"],
                "sparsities": [0.5, 0.9], "seeds": [0]}])
    return config


def test_runs_wait_for_the_dense_run_they_start_from(tmp_path: Path) -> None:
    """The grid knows which run's network each run starts from (the workflow waits for it), and
    refuses a run that would start from its own network."""
    config = own_model_config(tmp_path / "tree")
    jobs = expand(config)
    sources = {j.run.run_id: init_from_run(j, jobs) for j in jobs}
    assert sources.pop("imagefolder/timm-test_vit/dense/snone/seed0") == ""
    assert set(sources.values()) == {"imagefolder/timm-test_vit/dense/snone/seed0"}
    assert len(sources) == 5  # magnitude_init and snip at two budgets, gumbel once
    config["train"]["init_from"] = DENSE_NETWORK
    with pytest.raises(ConfigError, match="would start from its own saved network"):
        expand(config)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_own_model_grid_runs_to_the_report(tmp_path: Path) -> None:
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk is not installed (make test installs it as root on Debian)")
    workdir = _copy_workflow(tmp_path)
    config = own_model_config(image_folder(tmp_path / "my-images"))
    out = _snakemake("--cores", "2", "--configfile", _write_config(workdir, config),
                     cwd=workdir, timeout=850)
    assert out.returncode == 0, out.stderr[-6000:]
    assert (workdir / "results/report/report.pdf").read_bytes().startswith(b"%PDF")
    manifest = json.loads((workdir / "results/data/imagefolder.json").read_text())
    assert manifest["image_shape"] == [3, 48, 48]
    assert manifest["data_resize"] == "center_crop to 48x48"
    with open(workdir / "results/summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], r["status"]) for r in rows) == sorted(
        [("dense", "ok"), ("gumbel", "ok")] + [(m, "ok") for m in ("magnitude_init", "snip")
                                               for _ in range(2)])
    network = (workdir / DENSE_NETWORK).read_bytes()
    for row in rows:
        metrics = json.loads((workdir / row["run_dir"] / "metrics.json").read_text())
        assert metrics["arch"] == ARCH and metrics["data_resize"] == "center_crop to 48x48"
        assert metrics["excluded_layers"] == "head"
        if row["method"] == "dense":
            assert metrics["init_from_sha256"] is None
        else:  # every pruning run started from the dense run's trained network
            assert metrics["train_init_from"] == DENSE_NETWORK
            assert metrics["init_from_sha256"] == hashlib.sha256(network).hexdigest()
    figures = json.loads((workdir / "results/figures/manifest.json").read_text())
    kinds = {(f["kind"], f.get("arch")) for f in figures["figures"]}
    assert {("layer_density", ARCH), ("accuracy_vs_sparsity", ARCH)} <= kinds


def test_many_layers_are_drawn_one_point_per_block() -> None:
    """A ViT-B's 74 prunable layers would be 74 unreadable ticks: past MAX_LAYERS_DRAWN the
    per-layer density figure draws one point per block, the kept fraction of its weights;
    layers left dense by exclude_layers are not drawn."""
    import pandas as pd

    from prunebench.reporting import figures

    assert figures.layer_block("blocks.11.attn.qkv") == "blocks.11"
    assert figures.layer_block("stages.2.blocks.0.mlp.fc1") == "stages.2.blocks.0"
    assert figures.layer_block("patch_embed.proj") == "patch_embed.proj"
    names = ["patch_embed.proj"] + [f"blocks.{b}.{part}" for b in range(12)
                                    for part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2",
                                                 "extra.fc", "extra.fc2")] + ["head"]
    rows = [{"layer": n, "numel": 100, "nonzero": 10 * (i % 3), "row_index": i,
             "prunable": n != "head", "run_id": "r", "label": "snip", "budget": "sparsity 0.9"}
            for i, n in enumerate(names)]
    layers = pd.DataFrame(rows).assign(density=lambda d: d["nonzero"] / d["numel"])
    fig, caption = figures.layer_density(layers, "imagefolder", "timm/vit_base_patch16_224", {})
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["patch_embed.proj"] + [f"blocks.{b}" for b in range(12)]
    assert "73 prunable layers grouped into 13 blocks" in caption
    block0 = figures.by_block(layers[layers["prunable"]]).set_index("layer").loc["blocks.0"]
    assert block0["density"] == (10 + 20 + 0 + 10 + 20 + 0) / 600
