"""Benchmark 1, the data path: images/s of the engine's device-resident augmentation
(DeviceData.train_batches_from: gather, random crop with zero padding 4, horizontal flip,
normalise, all batched on the device) against a torchvision DataLoader with the equivalent
per-image transforms and one worker per core, on the same 32x32x3 uint8 images."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import (
    SKIP_NO_CUDA,
    Context,
    cuda_available,
    interleaved,
    median,
    spread,
    synthetic_prepared,
    timed,
)

CPU_TARGET = 10.0  # the engine must feed at least 10x the images/s of the DataLoader on CPU
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class CifarLike(Dataset):
    """torchvision.datasets.CIFAR10's __getitem__: an HWC uint8 array -> PIL image -> transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images = images_hwc
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def torchvision_loader(images_nchw: torch.Tensor, labels: torch.Tensor, batch_size: int,
                       workers: int, pin: bool) -> DataLoader:
    from torchvision import transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(MEAN, STD)])
    ds = CifarLike(images_nchw.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy(),
                   transform)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                      drop_last=True, persistent_workers=workers > 0, pin_memory=pin)


def _engine_threads_cases(device: torch.device) -> list[int | None]:
    """CPU: the default thread count, and 1 thread (the batched augmentation needs no
    parallelism; on a loaded shared machine its short parallel regions wait for descheduled
    threads). CUDA: the host threads do not matter."""
    return [None, 1] if device.type == "cpu" and torch.get_num_threads() > 1 else [None]


def _rows_for(ctx: Context, device: torch.device, n_images: int, batch_size: int,
              repeats: int, workers: int) -> list[dict[str, Any]]:
    from prunebench.data.prepared import DeviceData

    prepared = synthetic_prepared(n_images, 0, 32)
    data = DeviceData(prepared, device, 0.0)
    gen = torch.Generator(device=device).manual_seed(0)
    steps = n_images // batch_size

    def engine(threads: int | None) -> Callable[[], float]:
        def epoch() -> None:
            batches, _ = data.train_batches_from(batch_size, gen, 4, True)
            for _x, _y in batches:
                pass

        def measure() -> float:
            before = torch.get_num_threads()
            torch.set_num_threads(threads or before)
            try:
                return timed(epoch, device)
            finally:
                torch.set_num_threads(before)
        return measure

    loader = torchvision_loader(prepared.tensors["train_x"], prepared.tensors["train_y"],
                                batch_size, workers, pin=device.type == "cuda")

    def torchvision() -> float:
        def epoch() -> None:
            for x, y in loader:
                if device.type == "cuda":
                    x.to(device, non_blocking=True)
                    y.to(device, non_blocking=True)
        return timed(epoch, device)

    cases = _engine_threads_cases(device)
    fns = [torchvision] + [engine(t) for t in cases]
    for fn in fns:
        fn()  # warm-up; starts the DataLoader's persistent workers
    times = interleaved(fns, repeats)
    images = steps * batch_size
    t_loader = times[0]
    target = CPU_TARGET if device.type == "cpu" else None
    rows = []
    for threads, t_engine in zip(cases, times[1:], strict=True):
        speedups = [tl / te for tl, te in zip(t_loader, t_engine, strict=True)]
        ratio = median(speedups)
        engine_threads = threads or torch.get_num_threads()
        rows.append(ctx.row(
            device, benchmark="data_path",
            case="engine_vs_torchvision_dataloader" + ("_1thread" if threads == 1 else ""),
            engine_images_per_s=images / median(t_engine),
            dataloader_images_per_s=images / median(t_loader),
            ratio=ratio, ratio_range=spread(speedups),
            target=f">= {target:g}" if target else "",
            target_met=(ratio >= target) if target else "",
            repeats=repeats, images_per_epoch=images, batch_size=batch_size, image_size=32,
            engine_threads=engine_threads if device.type == "cpu" else "",
            dataloader_workers=workers, data="synthetic uint8 3x32x32", clock="wall time",
            status="ok",
            note="ratio = engine images/s / DataLoader images/s, median of per-repeat ratios "
                 "(interleaved epochs); DataLoader: RandomCrop(32, padding=4), "
                 "RandomHorizontalFlip, ToTensor, Normalize, "
                 f"num_workers={workers}, persistent workers"
                 + (", pinned memory + copy to GPU" if device.type == "cuda" else "")))
    return rows


def run(ctx: Context, n_images: int, batch_size: int, repeats: int) -> list[dict[str, Any]]:
    workers = os.cpu_count() or 1
    rows = _rows_for(ctx, torch.device("cpu"), n_images, batch_size, repeats, workers)
    if cuda_available():
        rows += _rows_for(ctx, torch.device("cuda"), n_images, batch_size, repeats, workers)
    else:
        rows.append(ctx.row("cuda", benchmark="data_path",
                            case="engine_vs_torchvision_dataloader", status=SKIP_NO_CUDA,
                            repeats=0))
    return rows
