"""Download-based dataset sources: cifar10, cifar100 (python-format tarballs) and tinyimagenet.

Each archive is streamed to a temporary file beside its final name, checked against a pinned
checksum (or the one given for a mirror) and only then renamed into place, so a file under its
final name has always been verified once; it is verified again before every use. The CIFAR
tarballs are unpacked with `safe_extract` into a scratch folder removed after reading; the
TinyImageNet zip is read in memory through `SafeZip` (the same member checks). The CIFAR
batches are pickles: they are unpickled only after the archive's checksum has matched, and then
by an unpickler that can build nothing but numpy arrays (torchvision's parser would allow any
global).
"""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from prunebench import console
from prunebench.data.archives import SafeZip, one_line, safe_extract
from prunebench.data.datasets import RawDataset, SourceArgs, read_images, register_source
from prunebench.data.localcopy import Files, LayoutReader, local_copy, read_local_copy
from prunebench.errors import PrunebenchError
from prunebench.fileio import sha256_file

DOWNLOAD_TIMEOUT_S = 60.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """An official dataset archive: where it comes from and its pinned checksum."""

    filename: str
    url: str
    checksum: str  # "<algorithm>:<hex digest>"


ARCHIVES = {
    "cifar10": Archive("cifar-10-python.tar.gz",
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "md5:c58f30108f718f92721af3b95e74349a"),
    "cifar100": Archive("cifar-100-python.tar.gz",
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "md5:eb9058c3a382ffc7106e4002c42a8d85"),
    "tinyimagenet": Archive("tiny-imagenet-200.zip",
                            "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                            "md5:90528d7ca1a48142e341f4ef8d21d0de"),
}

_HEX_LENGTHS = {32: "md5", 40: "sha1", 64: "sha256"}


def parse_checksum(text: str) -> tuple[str, str]:
    """`md5:<hex>`, `sha256:<hex>` or a bare hex digest (algorithm from its length)."""
    algo, _, digest = text.strip().lower().rpartition(":")
    if not algo:
        algo = _HEX_LENGTHS.get(len(digest), "")
    valid_hex = bool(digest) and all(c in "0123456789abcdef" for c in digest)
    if algo not in ("md5", "sha1", "sha256") or not valid_hex \
            or len(digest) != hashlib.new(algo).digest_size * 2:
        raise PrunebenchError(f"checksum {text!r} is not valid; give md5:<32 hex digits>, "
                              "sha256:<64 hex digits> or a bare md5/sha256 hex digest")
    return algo, digest


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(4 * CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, checksum: str) -> Path:
    """Return `dest` holding the verified content of `url`.

    A file already at `dest` with the right checksum is used as it is (no request is made); one
    with the wrong checksum is removed and downloaded again. A download is streamed to a
    temporary file beside `dest` and renamed only after its checksum matches; otherwise it is
    removed and the error names the file, the expected and the actual digest.
    """
    algo, expected = parse_checksum(checksum)
    if dest.is_file():
        actual = file_digest(dest, algo)
        if actual == expected:
            return dest
        print(f"prunebench: {dest} fails its {algo} checksum (expected {expected}, got "
              f"{actual}); removing it and downloading {url} again", file=sys.stderr)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        print(f"prunebench: downloading {url} to {dest}", file=sys.stderr)
        with os.fdopen(fd, "wb") as out:
            actual, got, declared = _stream(url, out, algo)
        if declared is not None and got != declared:
            raise PrunebenchError(f"download of {url} stopped after {got} of {declared} bytes; "
                                  "run the same command again to retry")
        if actual != expected:
            raise PrunebenchError(
                f"downloaded file {dest} (from {url}) fails its {algo} checksum: expected "
                f"{expected}, got {actual}; the file was removed. For a mirror that serves a "
                "different file, pass its checksum with --checksum")
        os.chmod(tmp, 0o644)  # mkstemp made it private; an archive is not a secret
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _stream(url: str, out: io.BufferedWriter, algo: str) -> tuple[str, int, int | None]:
    """Copy `url` into `out`; return (digest, bytes received, Content-Length or None)."""
    h = hashlib.new(algo)
    got = 0
    request = urllib.request.Request(url, headers={"User-Agent": "prunebench"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            declared = int(length) if length and length.isdigit() else None
            with tqdm(total=declared, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=url.rsplit("/", 1)[-1][:40] or url[:40],
                      leave=False, disable=not console.progress_bars()) as bar:
                while chunk := resp.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise PrunebenchError(f"download of {url} failed: HTTP {e.code} {e.reason}; pass a "
                              "mirror with --url, place the archive under --root, or give "
                              "--root a local image tree or archive of one") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = one_line(getattr(e, "reason", None) or e)
        raise PrunebenchError(f"download of {url} failed: {reason}; check the network, pass a "
                              "mirror with --url, place the archive under --root, or give "
                              "--root a local image tree or archive of one") from None
    return h.hexdigest(), got, declared


def fetch_archive(name: str, args: SourceArgs) -> Path:
    """The verified archive of dataset `name` under `args.root` (default `args.work`); `root` may
    also be the archive's own path."""
    spec = ARCHIVES[name]
    root = Path(args.root) if args.root else args.work
    if root.name == spec.filename and not root.is_dir():
        root = root.parent
    return fetch(args.url or spec.url, root / spec.filename, args.checksum or spec.checksum)


def _local_or_official(name: str, args: SourceArgs, read: Callable[[Path], RawDataset],
                       layout: LayoutReader | None = None) -> RawDataset:
    """The local copy `--root` names (prunebench/data/localcopy.py), else the official archive read
    by `read`; either way with its provenance."""
    local = local_copy(name, args.root, ARCHIVES[name].filename)
    if local is not None:
        return read_local_copy(name, local, layout)
    archive = fetch_archive(name, args)
    raw = read(archive)
    spec = ARCHIVES[name]
    raw.source = (f"archive {spec.filename} (url {args.url or spec.url}, checksum "
                  f"{args.checksum or spec.checksum})" if args.url or args.checksum
                  else f"official archive {spec.filename}")
    raw.source_sha256, raw.origin = sha256_file(archive), "official"
    return raw


def _with_extracted(name: str, archive: Path, work: Path, read: Callable[[Path], RawDataset]
                    ) -> RawDataset:
    """Safe-extract `name`'s archive into a scratch folder, read it, remove the folder."""
    scratch = work / f"{name}-extracted"
    shutil.rmtree(scratch, ignore_errors=True)  # leftovers of an interrupted run
    try:
        return read(safe_extract(archive, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _find_dir(extracted: Path, marker: str, what: str) -> Path:
    """The folder holding `marker` in an extracted archive (top level or one folder down)."""
    for candidate in [extracted, *sorted(p for p in extracted.iterdir() if p.is_dir())]:
        if (candidate / marker).exists():
            return candidate
    raise PrunebenchError(f"the {what} archive has no {marker} (looked in {extracted} and its "
                          "sub-folders); is it the right file?")


# -- CIFAR ---------------------------------------------------------------------------------------

_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds plain containers and numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def _plain(obj: Any) -> Any:
    """Python-2 pickles give str or bytes depending on how they were written: make all str."""
    if isinstance(obj, bytes):
        return obj.decode("latin1")
    if isinstance(obj, dict):
        return {_plain(k): (v if isinstance(v, np.ndarray) else _plain(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def load_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR python-format file (a pickled dict) read by the restricted unpickler."""
    if not path.is_file():
        raise PrunebenchError(f"CIFAR file {path} is missing from the archive")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure: the file is not CIFAR
        raise PrunebenchError(f"CIFAR file {path} cannot be read: {one_line(e)}") from None
    if not isinstance(obj, dict):
        raise PrunebenchError(f"CIFAR file {path} holds a {type(obj).__name__}, not a dict")
    return _plain(obj)


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_cifar_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise PrunebenchError(f"CIFAR file {path} lacks 'data' or {label_key!r}; keys: "
                              f"{sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise PrunebenchError(f"CIFAR file {path}: data is {data.dtype} {data.shape}, expected "
                              "uint8 (N, 3072)")
    if labels.shape != (len(data),) or (len(labels) and not
                                        (0 <= labels.min() and labels.max() < num_classes)):
        raise PrunebenchError(f"CIFAR file {path}: {len(labels)} labels for {len(data)} images, "
                              f"or a label outside 0..{num_classes - 1}")
    # Rows hold the red, then green, then blue 32x32 plane, each row-major: already (C, H, W).
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar(extracted: Path, folder: str, meta_file: str, names_key: str,
                train_files: list[str], test_file: str, label_key: str) -> RawDataset:
    base = _find_dir(extracted, folder, "CIFAR") / folder
    meta = load_cifar_pickle(base / meta_file)
    classes = meta.get(names_key)
    if not isinstance(classes, list) or not classes:
        raise PrunebenchError(f"CIFAR file {base / meta_file} has no {names_key!r} list")
    parts = [_cifar_batch(base / f, label_key, len(classes)) for f in train_files]
    test_x, test_y = _cifar_batch(base / test_file, label_key, len(classes))
    return RawDataset(np.concatenate([p[0] for p in parts]),
                      np.concatenate([p[1] for p in parts]), test_x, test_y,
                      [str(c) for c in classes])


@register_source("cifar10")
def cifar10(args: SourceArgs) -> RawDataset:
    """CIFAR-10 from the official python tarball (50,000 train / 10,000 test, 10 classes), or a
    local image tree or archive of one."""
    return _local_or_official("cifar10", args, lambda a: _with_extracted(
        "cifar10", a, args.work, lambda d: _read_cifar(
            d, "cifar-10-batches-py", "batches.meta", "label_names",
            [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels")))


@register_source("cifar100")
def cifar100(args: SourceArgs) -> RawDataset:
    """CIFAR-100 from the official python tarball (fine labels, 100 classes), or a local image
    tree or archive of one."""
    return _local_or_official("cifar100", args, lambda a: _with_extracted(
        "cifar100", a, args.work, lambda d: _read_cifar(
            d, "cifar-100-python", "meta", "fine_label_names", ["train"], "test",
            "fine_labels")))


# -- TinyImageNet --------------------------------------------------------------------------------

TINY_SHAPE = (3, 64, 64)


def _read_val_annotations(text: str, where: str, index: dict[str, int]) -> list[tuple[int, str]]:
    """(class index, file name) for every line `name<TAB>wnid<TAB>box...` of the val file."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise PrunebenchError(f"{where} line {n}: expected 'file<TAB>wnid<TAB>...' with a "
                                  f"wnid from wnids.txt, got {line.strip()[:80]!r}")
        out.append((index[fields[1].strip()], fields[0].strip()))
    return out


def _tiny_bases(names: dict[str, Any]) -> list[str]:
    return sorted(n[:-len("wnids.txt")] for n in names
                  if n == "wnids.txt" or (n.endswith("/wnids.txt") and n.count("/") == 1))


def _tiny_base(names: dict[str, Any], archive: Path) -> str:
    """The member prefix of the tree holding wnids.txt (`tiny-imagenet-200/` in the original)."""
    bases = _tiny_bases(names)
    if not bases:
        raise PrunebenchError(f"archive {archive} has no wnids.txt (at the top or one folder "
                              "down); is it the TinyImageNet zip?")
    return bases[0]


def read_tinyimagenet(zf: SafeZip | Files) -> RawDataset:
    """Train images by class from train/<wnid>/images/, the val images regrouped by class from
    val/val_annotations.txt (val is our test set); classes are the sorted wnids."""
    base = _tiny_base(zf.names, zf.archive)
    wnids = zf.read(base + "wnids.txt").decode("utf-8", "replace").split()
    classes = sorted(set(wnids))
    if not classes or len(classes) != len(wnids):
        raise PrunebenchError(f"{zf.archive}: {base}wnids.txt is empty or lists a class twice")
    index = {w: i for i, w in enumerate(classes)}
    by_class: list[list[str]] = [[] for _ in classes]
    for name in zf.names:
        parts = name[len(base):].split("/") if name.startswith(base) else []
        if (len(parts) == 4 and parts[0] == "train" and parts[2] == "images"
                and parts[3].lower().endswith((".jpeg", ".jpg"))):
            if parts[1] not in index:
                raise PrunebenchError(f"{zf.archive}: train image {name} is in a folder that "
                                      f"{base}wnids.txt does not list")
            by_class[index[parts[1]]].append(name)
    for wnid, files in zip(classes, by_class, strict=True):
        if not files:
            raise PrunebenchError(f"{zf.archive}: no train images under "
                                  f"{base}train/{wnid}/images/")
    train_files = [f for files in by_class for f in sorted(files)]
    train_y = np.repeat(np.arange(len(classes)), [len(f) for f in by_class])
    ann = base + "val/val_annotations.txt"
    if ann not in zf.names:
        raise PrunebenchError(f"{zf.archive} has no {ann}")
    # The official val folder is flat (val/images/val_N.JPEG); its labels come from
    # val_annotations.txt. Regroup by class, by file name within a class.
    val = sorted(_read_val_annotations(zf.read(ann).decode("utf-8", "replace"),
                                       f"{zf.archive}: {ann}", index))
    test_files = [f"{base}val/images/{name}" for _, name in val]
    for f in test_files:
        if f not in zf.names:
            raise PrunebenchError(f"{zf.archive}: val image {f} (named in {ann}) is missing")
    train_x = read_images(train_files, mode="RGB", load=zf.read)  # some images are grayscale
    test_x = read_images(test_files, mode="RGB", load=zf.read)
    for x, files in ((train_x, train_files), (test_x, test_files)):
        if x.shape[1:] != TINY_SHAPE:
            raise PrunebenchError(f"{zf.archive}: image {files[0]} is {x.shape[1:]} (C,H,W), "
                                  f"expected {TINY_SHAPE}")
    return RawDataset(train_x, train_y.astype(np.int64), test_x,
                      np.asarray([c for c, _ in val], dtype=np.int64), classes)


@register_source("tinyimagenet")
def tinyimagenet(args: SourceArgs) -> RawDataset:
    """TinyImageNet-200 (100,000 train, the 10,000 labelled val images as test, 64x64 RGB), or a
    local copy: the official layout or a regrouped train/test tree, as a folder or archive."""
    return _local_or_official("tinyimagenet", args, _read_tiny_zip, _tiny_layout)


def _read_tiny_zip(archive: Path) -> RawDataset:
    # Read from the verified zip in memory, with the same member checks as safe_extract:
    # unpacking and later deleting its 120,000 small files costs more than decoding them.
    with SafeZip(archive) as zf:
        return read_tinyimagenet(zf)


def _tiny_layout(files: Files) -> RawDataset | None:
    """A local copy in the official layout (wnids.txt, train/<wnid>/images/, val/); None for
    a regrouped train/test tree."""
    return read_tinyimagenet(files) if _tiny_bases(files.names) else None
