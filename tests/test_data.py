"""Prepared tensor files, the stratified split and augmentation on the device."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prunebench.data.prepared import (
    PROVENANCE_KEYS,
    DeviceData,
    augment,
    load_prepared,
    prepare,
    stratified_split,
)
from prunebench.plan.config import resolve
from prunebench.training.run import execute


def test_digits_prepared(digits_dir: Path) -> None:
    data = load_prepared("digits", digits_dir)
    t = data.tensors
    assert t["train_x"].dtype == torch.uint8 and t["train_x"].shape[1:] == (1, 8, 8)
    assert len(t["train_y"]) + len(t["test_y"]) == 1797
    assert data.num_classes == 10
    manifest = json.loads((digits_dir / "digits.json").read_text())
    assert manifest["val_fraction"] == 0.1 and len(manifest["sha256"]) == 64
    assert manifest["data_origin"] == "official"
    assert manifest["data_source"] == "scikit-learn load_digits (bundled)"
    assert len(manifest["data_source_sha256"]) == 64


def test_run_metrics_carry_data_provenance(digits_dir: Path, tmp_path: Path) -> None:
    cfg = resolve("digits", "conv2", "dense", None, 0,
                  overrides={"data_dir": str(digits_dir), "device": "cpu", "epochs": "0"})
    metrics = execute(cfg, tmp_path / "run")
    manifest = json.loads((digits_dir / "digits.json").read_text())
    assert {k: metrics[k] for k in PROVENANCE_KEYS} == {k: manifest[k] for k in PROVENANCE_KEYS}
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["data_origin"] == "official" and saved["data_source_sha256"] == \
        manifest["data_source_sha256"]


def test_prepare_is_deterministic(tmp_path: Path, digits_dir: Path) -> None:
    prepare("digits", tmp_path)
    a = json.loads((tmp_path / "digits.json").read_text())
    b = json.loads((digits_dir / "digits.json").read_text())
    assert a["sha256"] == b["sha256"]


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(5), [100, 50, 20, 10, 40])
    idx = stratified_split(labels, 0.1, seed=0)
    counts = np.bincount(labels[idx], minlength=5)
    assert counts.tolist() == [10, 5, 2, 1, 4]
    assert np.array_equal(idx, stratified_split(labels, 0.1, seed=0))
    assert not np.array_equal(idx, stratified_split(labels, 0.1, seed=1))


def test_validation_is_disjoint_from_training(digits_dir: Path) -> None:
    data = DeviceData(load_prepared("digits", digits_dir), torch.device("cpu"), 0.1)
    n_train, n_val = data.size("train"), data.size("val")
    assert n_val == pytest.approx(0.1 * (n_train + n_val), abs=10)
    train_rows = {bytes(r.numpy().tobytes()) for r in data.splits["train"][0]}
    overlap = sum(bytes(r.numpy().tobytes()) in train_rows for r in data.splits["val"][0])
    assert overlap < 5  # digits holds a handful of exact duplicate images, nothing more


def test_augment_crop_is_a_shift_with_zero_fill() -> None:
    x = torch.arange(1, 2 * 3 * 6 * 6 + 1, dtype=torch.int64).view(2, 3, 6, 6).to(torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, crop_padding=2, flip=False, generator=gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)


def test_augment_flip_mirrors_about_half() -> None:
    x = torch.randint(0, 255, (2000, 1, 4, 4), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, crop_padding=0, flip=True, generator=gen)
    flipped = torch.tensor([torch.equal(o, xi.flip(2)) and not torch.equal(o, xi)
                            for o, xi in zip(out, x, strict=True)])
    same = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped | same).all())
    assert 0.45 < flipped.float().mean() < 0.55


def test_training_batches_live_on_the_data_device(digits_dir: Path) -> None:
    """On a CPU-only machine the data device is also checked on PyTorch's `meta` device (shapes,
    no storage): every batch, augmented or not, and the sample order are there, never copied
    back to the host. Mutation that defeated the CPU-only version: DeviceData leaving its
    tensors on the CPU whatever `device` says."""
    data = DeviceData(load_prepared("digits", digits_dir), torch.device("cpu"), 0.1)
    gen = torch.Generator().manual_seed(0)
    batches, order = data.train_batches_from(32, gen, 1, False)
    xb, yb = next(batches)
    assert xb.dtype == torch.float32 and xb.shape == (32, 1, 8, 8)
    assert abs(float(xb.mean())) < 1.0  # normalised
    assert sorted(order.tolist()) == list(range(data.size("train")))
    meta = DeviceData(load_prepared("digits", digits_dir), torch.device("meta"), 0.1)
    for augment_batch in (False, True):
        batches, order = meta.train_batches_from(32, gen, 1, augment_batch)
        xb, yb = next(batches)
        assert xb.is_meta and yb.is_meta and order.is_meta, augment_batch
        assert xb.dtype == torch.float32 and xb.shape == (32, 1, 8, 8)
    for split in ("val", "test"):
        xb, yb = next(meta.eval_batches(split, 64))
        assert xb.is_meta and yb.is_meta, split


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_on_cuda_stays_on_cuda(digits_dir: Path) -> None:
    dev = torch.device("cuda")
    data = DeviceData(load_prepared("digits", digits_dir), dev, 0.1, channels_last=True)
    gen = torch.Generator(device=dev).manual_seed(0)
    batches, _ = data.train_batches_from(64, gen, 1, True)
    xb, yb = next(batches)
    assert xb.is_cuda and yb.is_cuda
    assert xb.is_contiguous(memory_format=torch.channels_last)
