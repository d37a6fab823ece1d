"""Dataset sources: each turns its raw form (bundled, downloaded archive, image tree) into uint8
arrays. `prepare` (prunebench/data/prepared.py) then writes them as one checksummed tensor file."""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from prunebench import console
from prunebench.data.archives import one_line, read_files
from prunebench.errors import PrunebenchError
from prunebench.fileio import sha256_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# How `image_size` is reached (imagefolder): center_crop scales the shorter side to the size and
# cuts the central square (torchvision's Resize(size) + CenterCrop(size)); stretch scales both
# sides to it, changing the aspect ratio.
RESIZE_MODES = ("center_crop", "stretch")
READ_THREADS = 8  # most image decoding threads (fewer when fewer CPUs are allotted)
READ_CHUNK = 512  # images per thread-pool task
# Decoding is bounded whatever the files declare: no image over MAX_IMAGE_PIXELS (Pillow's own
# default; its header is read before its pixels: a camera photo to be resized passes, a
# decompression bomb does not), and all images of a split at most MAX_DECODED_BYTES as uint8.
MAX_IMAGE_PIXELS = 89_478_485
MAX_DECODED_BYTES = 16 << 30
# Pillow only warns about an image between its own limit and twice that: refuse it instead.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


@dataclass
class RawDataset:
    """Images as uint8 (N, C, H, W), labels as int64, class names, normalisation statistics."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    mean: tuple[float, ...] | None = None  # None: computed from the training images
    std: tuple[float, ...] | None = None
    # Provenance, written to the manifest and every run's metrics as data_source,
    # data_source_sha256 and data_origin ("official" | "local").
    source: str = ""
    source_sha256: str = ""
    origin: str = ""
    resize: str = ""  # how the images were resized ("center_crop to 48x48"), "" as read


@dataclass
class SourceArgs:
    """Where a source reads from (`root`: user-given path) and may write scratch files (`work`);
    `image_size` > 0 resizes every image to image_size x image_size (`resize`: RESIZE_MODES)."""

    root: str
    work: Path
    url: str = ""
    checksum: str = ""
    image_size: int = 0
    resize: str = "center_crop"


@dataclass(frozen=True)
class Resize:
    """Every image to `size` x `size`, by `how` (one of RESIZE_MODES)."""

    size: int
    how: str

    def apply(self, img: Any) -> Any:
        """A PIL image resized (bilinear, antialiased) and, for center_crop, cropped."""
        from PIL import Image

        if self.how == "stretch":
            return img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        w, h = img.size
        scale = self.size / min(w, h)
        rw, rh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        img = img.resize((rw, rh), Image.Resampling.BILINEAR)
        left, top = int(round((rw - self.size) / 2)), int(round((rh - self.size) / 2))
        return img.crop((left, top, left + self.size, top + self.size))

    def describe(self) -> str:
        return f"{self.how} to {self.size}x{self.size}"


Source = Callable[[SourceArgs], RawDataset]
SOURCES: dict[str, Source] = {}


def register_source(name: str) -> Callable[[Source], Source]:
    def wrap(fn: Source) -> Source:
        SOURCES[name] = fn
        return fn

    return wrap


def get_source(name: str) -> Source:
    """The source registered as `name` (prunebench.data.prepared imports every source module)."""
    if name not in SOURCES:
        raise PrunebenchError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


@register_source("digits")
def digits(args: SourceArgs) -> RawDataset:
    """scikit-learn's 1,797 8x8 digits (offline); a fixed stratified 80/20 train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.clip(bunch.images * 16.0, 0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(images, labels, test_size=0.2, random_state=0,
                                              stratify=labels)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    return RawDataset(tr_x, tr_y, te_x, te_y, [str(c) for c in range(10)],
                      source="scikit-learn load_digits (bundled)", source_sha256=digest,
                      origin="official")


def _read_image(item: Path | str, mode: str | None,
                load: Callable[[Any], bytes] | None = None,
                resize: Resize | None = None) -> np.ndarray:
    """One image as uint8 (C, H, W): converted to `mode`, else kept if grayscale or RGB, and
    resized if asked. `item` is a path, or a name that `load` turns into the file's bytes."""
    try:
        with Image.open(io.BytesIO(load(item)) if load else item) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
            img.load()
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            elif mode is None and img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            if resize is not None:
                img = resize.apply(img)
            arr = np.asarray(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PrunebenchError(
            f"image {item} is larger than the {MAX_IMAGE_PIXELS} pixels allowed "
            f"({one_line(e)}); refusing (possible decompression bomb)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        text = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", one_line(e))
        raise PrunebenchError(f"image {item} cannot be read: {text}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1)


def read_threads() -> int:
    """Decoding threads: the CPUs this process may use (as SLURM allots them), at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(READ_THREADS, cpus))


def read_images(items: Sequence[Any], mode: str | None = None,
                load: Callable[[Any], bytes] | None = None,
                resize: Resize | None = None) -> np.ndarray:
    """Decode images (paths, or names that `load` turns into bytes) into one uint8 (N, C, H, W)
    array; every image must have the same shape (after `resize`, if given).

    Decoding runs in a thread pool (Pillow and zlib release the GIL while decoding); an error
    names the first bad image in `items` order.
    """
    if not items:
        raise PrunebenchError("no images to read")
    first = _read_image(items[0], mode, load, resize)
    decoded = len(items) * first.size
    if decoded > MAX_DECODED_BYTES:
        raise PrunebenchError(
            f"{len(items)} images of {'x'.join(map(str, first.shape))} (CxHxW, as {items[0]}) "
            f"would take {decoded} bytes decoded, more than the {MAX_DECODED_BYTES} bytes "
            f"({MAX_DECODED_BYTES >> 30} GiB) allowed")
    out = np.empty((len(items), *first.shape), dtype=np.uint8)
    out[0] = first

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            arr = _read_image(items[i], mode, load, resize)
            if arr.shape != first.shape:
                raise PrunebenchError(
                    f"image {items[i]} is {'x'.join(map(str, arr.shape))} (CxHxW) but "
                    f"{items[0]} is {'x'.join(map(str, first.shape))}; all images must share "
                    "one size and channel count")
            out[i] = arr

    chunks = [(lo, min(lo + READ_CHUNK, len(items))) for lo in range(1, len(items), READ_CHUNK)]
    threads = read_threads()
    bar = tqdm(total=len(items), initial=1, unit="img", desc="decoding images", leave=False,
               disable=not console.progress_bars())
    if threads == 1:
        for lo, hi in chunks:
            work(lo, hi)
            bar.update(hi - lo)
        bar.close()
        return out
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        for (lo, hi), future in zip(chunks, [pool.submit(work, lo, hi) for lo, hi in chunks],
                                    strict=True):
            future.result()
            bar.update(hi - lo)
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _check_classes(where: str, found: list[str], classes: list[str] | None) -> list[str]:
    """The training classes (`found` in train/), or an error if a test split's folders differ."""
    if classes is None:
        classes = found
    elif found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise PrunebenchError(
            f"class folders in {where} differ from the training classes: "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}")
    if not classes:
        raise PrunebenchError(f"image folder {where} has no class sub-folders")
    return classes


def _labelled(where: str, classes: list[str], per_class: dict[str, list[Any]]
              ) -> tuple[list[Any], np.ndarray]:
    items: list[Any] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(per_class.get(name, []))
        if not found:
            raise PrunebenchError(f"class folder {where}/{name} holds no .jpg/.png image")
        items += found
        labels += [label] * len(found)
    return items, np.asarray(labels, dtype=np.int64)


def read_class_tree(split_dir: Path, classes: list[str] | None = None,
                    mode: str | None = None, resize: Resize | None = None
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read `split_dir/<class>/*.jpg|png` into arrays (converted to `mode` if given); every image
    must have the same shape."""
    if not split_dir.is_dir():
        raise PrunebenchError(f"image folder {split_dir} does not exist")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    classes = _check_classes(str(split_dir), found, classes)
    per_class = {c: [p for p in (split_dir / c).iterdir()
                     if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()] for c in classes}
    files, labels = _labelled(str(split_dir), classes, per_class)
    return read_images(files, mode, resize=resize), labels, classes


def tree_sha256(folder: Path) -> str:
    """A folder's checksum: sha256 of its listing, one line `<relative path>\\0<sha256 of the
    file>\\n` per file, sorted by path (so it names both the files and their content)."""
    h = hashlib.sha256()
    for p in sorted((p for p in folder.rglob("*") if p.is_file()),
                    key=lambda p: p.relative_to(folder).as_posix()):
        h.update(f"{p.relative_to(folder).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def tree_base(folder: Path) -> Path | None:
    """The folder holding train/ and test/: `folder` itself or its first sub-folder that does."""
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def read_folder_tree(root: Path, mode: str | None = None,
                     resize: Resize | None = None) -> RawDataset:
    """`root/{train,test}/<class>/*` read into arrays; test must have the training classes."""
    tr_x, tr_y, classes = read_class_tree(root / "train", mode=mode, resize=resize)
    te_x, te_y, _ = read_class_tree(root / "test", classes, mode, resize)
    return _raw(str(root), tr_x, tr_y, te_x, te_y, classes)


def archive_tree_base(dirs: set[str]) -> str | None:
    """The member prefix ("" or "top/") of the folder holding train/ and test/ among an
    archive's folders, at its top or one folder down; None if there is none."""
    tops = [""] + sorted(d + "/" for d in dirs if "/" not in d)
    return next((t for t in tops if f"{t}train" in dirs and f"{t}test" in dirs), None)


def read_archive_tree(archive: Path, mode: str | None = None,
                      read: tuple[dict[str, bytes], set[str]] | None = None,
                      resize: Resize | None = None) -> RawDataset:
    """An image-tree archive read in memory (nothing unpacked): its train/ and test/ trees at
    the top or one folder down. `read`: the archive's (files, folders) if already read."""
    files, dirs = read or read_files(archive,
                                     keep=lambda name: name.lower().endswith(IMAGE_SUFFIXES))
    base = archive_tree_base(dirs)
    if base is None:
        raise PrunebenchError(f"archive {archive} has no train/ and test/ folders at its top "
                              "or one folder down")
    per_split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for name in files:
        parts = name[len(base):].split("/") if name.startswith(base) else []
        if len(parts) == 3 and parts[0] in per_split and name.lower().endswith(IMAGE_SUFFIXES):
            per_split[parts[0]].setdefault(parts[1], []).append(name)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    classes: list[str] | None = None
    for split in ("train", "test"):
        where = f"{archive}:{base}{split}"
        found = sorted(d[len(f"{base}{split}/"):] for d in dirs
                       if d.startswith(f"{base}{split}/") and d.count("/") == base.count("/") + 1)
        classes = _check_classes(where, found, classes)
        items, labels = _labelled(where, classes, per_split[split])
        try:
            out[split] = read_images(items, mode, load=files.__getitem__, resize=resize), labels
        except PrunebenchError as e:
            raise PrunebenchError(f"{e} (in archive {archive})") from None
    assert classes is not None
    return _raw(str(archive), *out["train"], *out["test"], classes)


@register_source("imagefolder")
def imagefolder(args: SourceArgs) -> RawDataset:
    """Any `root/{train,test}/<class>/*` tree, or a .tar/.tar.gz/.zip archive holding one; with
    `image_size`, images of any sizes, each resized to image_size x image_size."""
    if not args.root:
        raise PrunebenchError("dataset imagefolder needs data_root: a folder or archive holding "
                              "train/<class>/* and test/<class>/*")
    root = Path(args.root)
    if not root.exists():
        raise PrunebenchError(f"imagefolder data_root {root} does not exist")
    resize = Resize(args.image_size, args.resize) if args.image_size else None
    if root.is_file():
        raw = read_archive_tree(root, resize=resize)
        raw.source, raw.source_sha256 = f"local archive {root.name}", sha256_file(root)
    else:
        raw = read_folder_tree(root, resize=resize)
        raw.source, raw.source_sha256 = f"local folder {root.name}", tree_sha256(root)
    raw.origin = "local"
    raw.resize = resize.describe() if resize else ""
    return raw


def _raw(where: str, tr_x: np.ndarray, tr_y: np.ndarray, te_x: np.ndarray, te_y: np.ndarray,
         classes: list[str]) -> RawDataset:
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise PrunebenchError(f"train images in {where} are {tr_x.shape[1:]} but test images are "
                              f"{te_x.shape[1:]}")
    return RawDataset(tr_x, tr_y, te_x, te_y, classes)
