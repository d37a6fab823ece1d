"""Dataset sources end to end: tiny fake archives in the real formats (CIFAR python tarballs with
Python-2-style pickles, the TinyImageNet zip layout) served by a local HTTP server, prepared
through the real download path; image folders and archives; local copies of the official
datasets (trees and archives of them) and their provenance; the shared CIFAR-10 JPEG copy."""
from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import tarfile
import threading
import warnings
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import PYTHON, REPO, cli_env
from PIL import Image

from prunebench.data import datasets, downloads, localcopy
from prunebench.data.prepared import channel_stats, load_prepared, prepare
from prunebench.errors import PrunebenchError

# A CIFAR-10 JPEG copy in the checkout's git-ignored data/ folder (docs/datasets.md, local copies).
LOCAL_CIFAR_JPEG = Path(__file__).resolve().parents[1] / "data" / "cifar10-jpeg.tar.gz"


# -- a local HTTP server -------------------------------------------------------------------------

class Server:
    """Serves files from `root` on 127.0.0.1 and records every requested path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                if self.path.startswith("/cut/"):  # promises 1,000,000 bytes, sends 10
                    self.send_response(200)
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    self.wfile.write(b"0123456789")
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                         functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("served")
    make_cifar10_tarball(root / "cifar-10-python.tar.gz")
    make_cifar100_tarball(root / "cifar-100-python.tar.gz")
    make_tinyimagenet_zip(root / "tiny-imagenet-200.zip")
    server = Server(root)
    yield server
    server.close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# -- fake CIFAR tarballs -------------------------------------------------------------------------

class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, as cPickle did for the official CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x, which wrote the originals, lived at numpy.core
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]
CIFAR100_NAMES = [f"fine{i:02d}" for i in range(100)]


def cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def cifar10_batch(i: int) -> dict[bytes, object]:
    """Batch `i` (1..5 train, 6 test): 3 images, labels 3i, 3i+1, 3i+2 mod 10."""
    return {b"batch_label": f"batch {i}".encode(), b"labels": [(3 * i + k) % 10 for k in range(3)],
            b"data": cifar_images(3, i), b"filenames": [f"img{i}_{k}.png".encode()
                                                         for k in range(3)]}


def make_cifar10_tarball(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tf:
        add_bytes(tf, "cifar-10-batches-py/batches.meta", py2_pickle({
            b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": 3,
            b"num_vis": 3072}))
        for i in range(1, 6):
            add_bytes(tf, f"cifar-10-batches-py/data_batch_{i}", py2_pickle(cifar10_batch(i)))
        add_bytes(tf, "cifar-10-batches-py/test_batch", py2_pickle(cifar10_batch(6)))
        add_bytes(tf, "cifar-10-batches-py/readme.html", b"<html></html>")


def cifar100_split(n: int, seed: int) -> dict[bytes, object]:
    fine = [(seed * 37 + 11 * k) % 100 for k in range(n)]
    return {b"filenames": [b"x.png"] * n, b"batch_label": b"b", b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine], b"data": cifar_images(n, 100 + seed)}


def make_cifar100_tarball(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tf:
        add_bytes(tf, "cifar-100-python/meta", py2_pickle({
            b"fine_label_names": [n.encode() for n in CIFAR100_NAMES],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}))
        add_bytes(tf, "cifar-100-python/train", py2_pickle(cifar100_split(7, 1)))
        add_bytes(tf, "cifar-100-python/test", py2_pickle(cifar100_split(4, 2)))
        add_bytes(tf, "cifar-100-python/file.txt~", b"")


# -- fake TinyImageNet zip -----------------------------------------------------------------------

TINY_WNIDS = ["n09999999", "n01443537", "n04067472"]  # wnids.txt is not sorted
TINY_TRAIN = 3  # images per class
# (file name, wnid) in val_annotations.txt order: the official val folder is flat and unsorted
TINY_VAL = [("val_0.JPEG", "n04067472"), ("val_1.JPEG", "n01443537"), ("val_2.JPEG", "n09999999"),
            ("val_3.JPEG", "n01443537"), ("val_4.JPEG", "n04067472")]


def tiny_colour(kind: str, wnid: str, k: int) -> tuple[int, int, int]:
    """A solid colour (survives JPEG within a few levels) that identifies one image."""
    return (40 * sorted(TINY_WNIDS).index(wnid) + 20, 30 * k + 10, 60 if kind == "train" else 200)


def jpeg(colour: tuple[int, int, int], size: int = 64, grey: bool = False) -> bytes:
    img = Image.new("RGB", (size, size), colour)
    if grey:
        img = img.convert("L")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_tinyimagenet_zip(path: Path) -> None:
    base = "tiny-imagenet-200/"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(base + "wnids.txt", "\n".join(TINY_WNIDS) + "\n")
        zf.writestr(base + "words.txt", "".join(f"{w}\tthing {w}\n" for w in TINY_WNIDS))
        for w in TINY_WNIDS:
            zf.writestr(f"{base}train/{w}/{w}_boxes.txt", "")
            for k in range(TINY_TRAIN):
                zf.writestr(f"{base}train/{w}/images/{w}_{k}.JPEG",
                            jpeg(tiny_colour("train", w, k), grey=(w, k) == ("n01443537", 1)))
        ann = []
        for k, (name, w) in enumerate(TINY_VAL):
            zf.writestr(f"{base}val/images/{name}", jpeg(tiny_colour("val", w, k)))
            ann.append(f"{name}\t{w}\t0\t0\t63\t63\n")
        zf.writestr(base + "val/val_annotations.txt", "".join(ann))
        zf.writestr(base + "test/images/test_0.JPEG", jpeg((1, 2, 3)))


# -- download sources end to end -----------------------------------------------------------------

def test_official_sources_are_pinned() -> None:
    a = downloads.ARCHIVES
    assert a["cifar10"].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert a["cifar10"].checksum == "md5:c58f30108f718f92721af3b95e74349a"
    assert a["cifar100"].url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert a["cifar100"].checksum == "md5:eb9058c3a382ffc7106e4002c42a8d85"
    assert a["tinyimagenet"].url == "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    assert a["tinyimagenet"].checksum == "md5:90528d7ca1a48142e341f4ef8d21d0de"


def test_cifar10_downloaded_and_parsed(served: Server, tmp_path: Path) -> None:
    archive = served.root / "cifar-10-python.tar.gz"
    prepare("cifar10", tmp_path, url=served.url(archive.name), checksum=md5(archive))
    data = load_prepared("cifar10", tmp_path)
    t, m = data.tensors, data.manifest
    assert m["classes"] == CIFAR10_NAMES and m["num_classes"] == 10
    assert m["image_shape"] == [3, 32, 32] and (m["num_train"], m["num_test"]) == (15, 3)
    train = [cifar10_batch(i) for i in range(1, 6)]
    expect_x = np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32)
    assert np.array_equal(t["train_x"].numpy(), expect_x)
    assert t["train_y"].tolist() == [y for b in train for y in b[b"labels"]]
    assert np.array_equal(t["test_x"].numpy(), cifar10_batch(6)[b"data"].reshape(-1, 3, 32, 32))
    assert t["test_y"].tolist() == cifar10_batch(6)[b"labels"]
    # channel-first layout: the first 1024 values of a row are the red plane
    assert np.array_equal(t["train_x"][0, 0].numpy().ravel(), train[0][b"data"][0, :1024])
    assert m["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])  # the published statistics
    assert (tmp_path / "raw" / archive.name).is_file()
    assert not (tmp_path / "raw" / "cifar10-extracted").exists()
    assert m["data_origin"] == "official"
    assert m["data_source_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert m["data_source"].startswith("archive cifar-10-python.tar.gz (url http://127.0.0.1")


def test_cifar100_uses_fine_labels(served: Server, tmp_path: Path) -> None:
    archive = served.root / "cifar-100-python.tar.gz"
    prepare("cifar100", tmp_path, url=served.url(archive.name), checksum=md5(archive))
    data = load_prepared("cifar100", tmp_path)
    assert data.manifest["classes"] == CIFAR100_NAMES
    assert data.tensors["train_y"].tolist() == cifar100_split(7, 1)[b"fine_labels"]
    assert data.tensors["test_y"].tolist() == cifar100_split(4, 2)[b"fine_labels"]
    assert tuple(data.tensors["test_x"].shape) == (4, 3, 32, 32)
    assert np.array_equal(data.tensors["test_x"].numpy().reshape(4, -1),
                          cifar100_split(4, 2)[b"data"])


def test_tinyimagenet_classes_sorted_and_val_regrouped(served: Server, tmp_path: Path) -> None:
    archive = served.root / "tiny-imagenet-200.zip"
    prepare("tinyimagenet", tmp_path, url=served.url(archive.name), checksum=md5(archive))
    data = load_prepared("tinyimagenet", tmp_path)
    t, classes = data.tensors, data.manifest["classes"]
    assert classes == sorted(TINY_WNIDS)
    assert tuple(t["train_x"].shape) == (9, 3, 64, 64)
    assert tuple(t["test_x"].shape) == (5, 3, 64, 64)
    assert t["train_y"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for i, (w, k) in enumerate((w, k) for w in sorted(TINY_WNIDS) for k in range(TINY_TRAIN)):
        got = t["train_x"][i].float().mean(dim=(1, 2))
        want = np.array(tiny_colour("train", w, k), dtype=np.float32)
        if (w, k) == ("n01443537", 1):  # stored grayscale: three equal channels
            assert got[0] == got[1] == got[2]
            want = np.full(3, Image.new("RGB", (1, 1), tuple(map(int, want))).convert("L")
                           .getpixel((0, 0)), dtype=np.float32)
        assert np.abs(got.numpy() - want).max() <= 3, (i, got, want)
    # val regrouped by class (sorted wnid), then by file name; val serves as the test split
    order = sorted((sorted(TINY_WNIDS).index(w), name, k) for k, (name, w) in enumerate(TINY_VAL))
    assert t["test_y"].tolist() == [c for c, _, _ in order] == [0, 0, 1, 1, 2]
    for i, (c, _, k) in enumerate(order):
        want = np.array(tiny_colour("val", sorted(TINY_WNIDS)[c], k), dtype=np.float32)
        assert np.abs(t["test_x"][i].float().mean(dim=(1, 2)).numpy() - want).max() <= 3
    assert not any(p.is_dir() for p in (tmp_path / "raw").iterdir())  # nothing unpacked


def test_wrong_checksum_refused_and_file_removed(served: Server, tmp_path: Path) -> None:
    archive = served.root / "cifar-10-python.tar.gz"
    with pytest.raises(PrunebenchError) as e:  # a mirror serving another file: pinned md5 fails
        prepare("cifar10", tmp_path, url=served.url(archive.name))
    msg = str(e.value)
    dest = tmp_path / "raw" / archive.name
    assert str(dest) in msg and "c58f30108f718f92721af3b95e74349a" in msg and md5(archive) in msg
    assert "\n" not in msg
    assert list((tmp_path / "raw").iterdir()) == []  # neither the file nor a partial download
    with pytest.raises(PrunebenchError, match="expected 0{32}"):
        prepare("cifar10", tmp_path, url=served.url(archive.name), checksum="md5:" + "0" * 32)
    assert list((tmp_path / "raw").iterdir()) == []


def test_sha256_override_accepted(served: Server, tmp_path: Path) -> None:
    archive = served.root / "cifar-10-python.tar.gz"
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    prepare("cifar10", tmp_path, url=served.url(archive.name), checksum=f"sha256:{sha}")
    assert load_prepared("cifar10", tmp_path).manifest["num_train"] == 15


def test_verified_archive_not_downloaded_again(served: Server, tmp_path: Path) -> None:
    archive = served.root / "cifar-10-python.tar.gz"
    url, digest = served.url(archive.name), md5(archive)
    before = len(served.requests)
    prepare("cifar10", tmp_path, url=url, checksum=digest)
    assert len(served.requests) == before + 1
    prepare("cifar10", tmp_path, url=url, checksum=digest)
    assert len(served.requests) == before + 1
    # an archive placed by hand under --root is used as it is
    root = tmp_path / "archives"
    root.mkdir()
    shutil.copy(archive, root / archive.name)
    prepare("cifar10", tmp_path / "other", root=str(root), url=url, checksum=digest)
    assert len(served.requests) == before + 1
    # a damaged copy is replaced by a fresh download
    (root / archive.name).write_bytes(b"truncated")
    prepare("cifar10", tmp_path / "other", root=str(root), url=url, checksum=digest)
    assert len(served.requests) == before + 2 and md5(root / archive.name) == digest


def test_download_failure_is_one_line(served: Server, tmp_path: Path) -> None:
    url = served.url("no-such-file.tar.gz")
    with pytest.raises(PrunebenchError) as e:
        prepare("cifar10", tmp_path, url=url, checksum="0" * 32)
    assert url in str(e.value) and "404" in str(e.value) and "\n" not in str(e.value)
    assert list((tmp_path / "raw").iterdir()) == []
    with pytest.raises(PrunebenchError, match="checksum 'abc' is not valid"):
        prepare("cifar10", tmp_path, url=url, checksum="abc")


def test_interrupted_download_leaves_nothing(served: Server, tmp_path: Path) -> None:
    url = served.url("cut/cifar-10-python.tar.gz")
    with pytest.raises(PrunebenchError) as e:
        prepare("cifar10", tmp_path, url=url, checksum="0" * 32)
    assert url in str(e.value) and "\n" not in str(e.value)
    assert list((tmp_path / "raw").iterdir()) == []


def test_tinyimagenet_bad_annotations_named(tmp_path: Path) -> None:
    bad = tmp_path / "tiny.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01443537\n")
        zf.writestr("tiny-imagenet-200/train/n01443537/images/n01443537_0.JPEG", jpeg((1, 2, 3)))
        zf.writestr("tiny-imagenet-200/val/images/val_0.JPEG", jpeg((1, 2, 3)))
        zf.writestr("tiny-imagenet-200/val/val_annotations.txt",
                    "val_0.JPEG\tn01443537\t0\t0\t9\t9\nval_1.JPEG\tn99999999\t0\t0\t9\t9\n")
    with pytest.raises(PrunebenchError) as e:
        prepare("tinyimagenet", tmp_path / "d", url=bad.as_uri(), checksum=md5(bad))
    msg = str(e.value)
    assert "val/val_annotations.txt line 2" in msg and "n99999999" in msg and "\n" not in msg


def test_cifar_pickle_cannot_run_code(served: Server, tmp_path: Path) -> None:
    """Even with a matching checksum, a batch file naming any global but numpy's array
    builders is refused before it runs."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        add_bytes(tf, "cifar-10-batches-py/batches.meta", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(PrunebenchError, match="batches.meta cannot be read.*not allowed"):
        prepare("cifar10", tmp_path / "d", url=bad.as_uri(), checksum=md5(bad))
    assert not marker.exists()


def test_cli_prepare_cifar10(served: Server, tmp_path: Path) -> None:
    archive = served.root / "cifar-10-python.tar.gz"
    proc = subprocess.run(
        [PYTHON, "-m", "prunebench", "prepare", "--dataset", "cifar10", "--data-dir",
         str(tmp_path), "--url", served.url(archive.name), "--checksum", md5(archive)],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "cifar10.pt")
    assert load_prepared("cifar10", tmp_path).manifest["num_test"] == 3


# -- imagefolder ---------------------------------------------------------------------------------

def colour(label: int, k: int) -> tuple[int, int, int]:
    return (50 * label + 10, 20 * k + 5, 99)


def make_tree(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n: int = 3,
              size: int = 8) -> Path:
    """root/{train,test}/<class>/<k>.png|jpg, solid colours; PNG except one JPEG per class."""
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for k in range(n):
                img = Image.new("RGB", (size, size), colour(label, k))
                img.save(d / (f"{k}.jpg" if k == n - 1 else f"{k}.png"), quality=95)
            (d / "notes.txt").write_text("ignored")
    return root


def check_tree_data(data_dir: Path, n: int = 3) -> None:
    data = load_prepared("imagefolder", data_dir)
    t = data.tensors
    assert data.manifest["classes"] == ["cat", "dog"]
    assert tuple(t["train_x"].shape) == tuple(t["test_x"].shape) == (2 * n, 3, 8, 8)
    assert t["train_y"].tolist() == [0] * n + [1] * n
    for i in range(2 * n):
        want = np.array(colour(i // n, i % n))
        got = t["train_x"][i, :, 0, 0].numpy().astype(int)
        assert np.abs(got - want).max() <= (3 if i % n == n - 1 else 0)  # JPEG or exact PNG


def test_imagefolder_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    prepare("imagefolder", tmp_path / "data", root=str(tree))
    check_tree_data(tmp_path / "data")


def tar_of(tree: Path, archive: Path, arcname: str = "mydata") -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tree, arcname=arcname)
    return archive


def zip_of(tree: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(tree.rglob("*")):
            zf.write(p, p.relative_to(tree).as_posix())
    return archive


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_imagefolder_archive(tmp_path: Path, kind: str) -> None:
    tree = make_tree(tmp_path / "tree")
    archive = (tar_of if kind == "tar.gz" else zip_of)(tree, tmp_path / f"tree.{kind}")
    data_dir = tmp_path / "data"
    prepare("imagefolder", data_dir, root=str(archive))
    check_tree_data(data_dir)
    assert sorted(p.name for p in data_dir.iterdir()) == ["imagefolder.json", "imagefolder.pt"]


def one_line_error(data_dir: Path, root: Path) -> str:
    with pytest.raises(PrunebenchError) as e:
        prepare("imagefolder", data_dir, root=str(root))
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("packed", [False, True])
def test_imagefolder_class_mismatch_names_the_folder(tmp_path: Path, packed: bool) -> None:
    tree = make_tree(tmp_path / "tree")
    (tree / "test" / "dog").rename(tree / "test" / "wolf")
    root = tar_of(tree, tmp_path / "tree.tar.gz") if packed else tree
    msg = one_line_error(tmp_path / "data", root)
    where = f"{root}:mydata/test" if packed else str(tree / "test")
    assert f"class folders in {where} differ" in msg
    assert "missing ['dog']" in msg and "unexpected ['wolf']" in msg


def test_imagefolder_unreadable_image_names_the_file(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    bad = tree / "train" / "dog" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert str(bad) in one_line_error(tmp_path / "data", tree)


def test_imagefolder_mixed_sizes_names_the_file(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    odd = tree / "test" / "cat" / "1.png"
    Image.new("RGB", (9, 8)).save(odd)
    msg = one_line_error(tmp_path / "data", tree)
    assert str(odd) in msg and "3x8x9" in msg


def test_imagefolder_errors_inside_an_archive_name_it(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    (tree / "train" / "cat" / "0.png").write_bytes(b"not an image")
    archive = zip_of(tree, tmp_path / "tree.zip")
    msg = one_line_error(tmp_path / "data", archive)
    assert "image train/cat/0.png cannot be read" in msg and f"(in archive {archive})" in msg


def test_parallel_read_reports_first_bad_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "READ_CHUNK", 2)
    monkeypatch.setattr(datasets, "read_threads", lambda: 4)
    files = []
    for k in range(21):
        f = tmp_path / f"{k:02d}.png"
        Image.new("RGB", (4, 4), (k, 2 * k, 3 * k)).save(f)
        files.append(f)
    x = datasets.read_images(files)
    assert x.shape == (21, 3, 4, 4) and x[:, 1, 0, 0].tolist() == [2 * k for k in range(21)]
    Image.new("RGB", (5, 4)).save(files[17])
    files[13].write_bytes(b"junk")
    with pytest.raises(PrunebenchError, match="13.png cannot be read"):
        datasets.read_images(files)


# -- local copies of cifar10, cifar100, tinyimagenet ---------------------------------------------

def cifar10_tree(root: Path, classes: list[str] = CIFAR10_NAMES, size: int = 32) -> Path:
    return make_tree(root, tuple(classes), n=2, size=size)


def test_imagefolder_records_local_provenance(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    prepare("imagefolder", tmp_path / "data", root=str(tree))
    m = load_prepared("imagefolder", tmp_path / "data").manifest
    assert (m["data_origin"], m["data_source"]) == ("local", "local folder tree")
    assert m["data_source_sha256"] == datasets.tree_sha256(tree)


def test_tree_checksum_names_listing_and_content(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a")
    shutil.copytree(a, tmp_path / "b")
    assert datasets.tree_sha256(a) == datasets.tree_sha256(tmp_path / "b")  # not the location
    (tmp_path / "b" / "train" / "cat" / "0.png").rename(tmp_path / "b" / "train" / "cat" / "9.png")
    assert datasets.tree_sha256(a) != datasets.tree_sha256(tmp_path / "b")
    (a / "test" / "dog" / "notes.txt").write_text("changed")
    assert datasets.tree_sha256(a) != datasets.tree_sha256(make_tree(tmp_path / "c"))


@pytest.mark.parametrize("form", ["folder", "folder one down", "tar.gz", "zip"])
def test_cifar10_from_local_copy(served: Server, tmp_path: Path, form: str) -> None:
    """--root naming a tree or an archive of one reads it: no request, official class order."""
    tree = cifar10_tree(tmp_path / "copy" / "cifar10-jpeg")
    root = {"folder": tree, "folder one down": tmp_path / "copy",
            "tar.gz": tar_of(tree, tmp_path / "c.tar.gz", "cifar10-jpeg"),
            "zip": zip_of(tree, tmp_path / "c.zip")}[form]
    before = len(served.requests)
    prepare("cifar10", tmp_path / "data", root=str(root),
            url=served.url("cifar-10-python.tar.gz"))
    assert len(served.requests) == before  # nothing downloaded
    data = load_prepared("cifar10", tmp_path / "data")
    t, m = data.tensors, data.manifest
    assert m["classes"] == CIFAR10_NAMES and (m["num_train"], m["num_test"]) == (20, 20)
    assert t["train_y"].tolist() == [c for c in range(10) for _ in range(2)]
    assert np.abs(t["test_x"][4, :, 0, 0].numpy().astype(int) - colour(2, 0)).max() == 0
    assert m["data_origin"] == "local"
    if root.is_file():
        assert m["data_source"] == f"local archive {root.name}"
        assert m["data_source_sha256"] == hashlib.sha256(root.read_bytes()).hexdigest()
    else:
        assert m["data_source"] == f"local folder {root.name}"
        assert m["data_source_sha256"] == datasets.tree_sha256(root)
    assert not (tmp_path / "data" / "raw").exists()


@pytest.mark.parametrize("packed", [False, True])
def test_local_copy_with_other_classes_refused(tmp_path: Path, packed: bool) -> None:
    tree = cifar10_tree(tmp_path / "tree", ["plane", *CIFAR10_NAMES[1:]])
    root = tar_of(tree, tmp_path / "tree.tar.gz") if packed else tree
    with pytest.raises(PrunebenchError) as e:
        prepare("cifar10", tmp_path / "data", root=str(root))
    msg = str(e.value)
    assert f"{root} is not a copy of cifar10" in msg and "\n" not in msg
    assert "missing [airplane]" in msg and "unexpected [plane]" in msg
    assert not (tmp_path / "data" / "cifar10.pt").exists()


def test_local_copy_of_another_size_refused(tmp_path: Path) -> None:
    tree = cifar10_tree(tmp_path / "tree", size=16)
    with pytest.raises(PrunebenchError, match="its images are 3x16x16 .*cifar10's are 3x32x32"):
        prepare("cifar10", tmp_path / "data", root=str(tree))


def test_cifar100_from_local_tree(tmp_path: Path) -> None:
    names = localcopy.OFFICIAL_CLASSES["cifar100"]
    assert len(names) == len(set(names)) == 100 and names == sorted(names)
    tree = make_tree(tmp_path / "tree", tuple(names), n=1, size=32)
    prepare("cifar100", tmp_path / "data", root=str(tree))
    m = load_prepared("cifar100", tmp_path / "data").manifest
    assert m["classes"] == names and m["num_train"] == 100 and m["data_origin"] == "local"


def fake_wnids(n: int = localcopy.TINY_CLASSES) -> list[str]:
    return [f"n{10_000_000 + 37 * i:08d}" for i in range(n)]


@pytest.mark.parametrize("form", ["official layout zip", "official layout folder",
                                  "regrouped folder"])
def test_tinyimagenet_from_local_copy(tmp_path: Path, form: str) -> None:
    wnids = fake_wnids()
    if form == "regrouped folder":
        root = make_tree(tmp_path / "tiny", tuple(wnids), n=1, size=64)
        (root / "train" / wnids[0] / "0.jpg").write_bytes(jpeg((9, 9, 9), grey=True))
    else:
        base = tmp_path / "tiny" / "tiny-imagenet-200"
        (base / "val" / "images").mkdir(parents=True)
        (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
        ann = []
        for k, w in enumerate(wnids):
            (base / "train" / w / "images").mkdir(parents=True)
            (base / "train" / w / "images" / f"{w}_0.JPEG").write_bytes(jpeg((k, 0, 0)))
            (base / "val" / "images" / f"val_{k}.JPEG").write_bytes(jpeg((k, 9, 9)))
            ann.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63\n")
        (base / "val" / "val_annotations.txt").write_text("".join(ann))
        (base / "test" / "images").mkdir(parents=True)  # unlabelled: never read
        (base / "test" / "images" / "test_0.JPEG").write_bytes(jpeg((1, 2, 3)))
        root = zip_of(tmp_path / "tiny", tmp_path / "tiny.zip") if "zip" in form else base
    prepare("tinyimagenet", tmp_path / "data", root=str(root))
    data = load_prepared("tinyimagenet", tmp_path / "data")
    m = data.manifest
    assert m["classes"] == sorted(wnids) and (m["num_train"], m["num_test"]) == (200, 200)
    assert m["image_shape"] == [3, 64, 64] and m["data_origin"] == "local"
    assert data.tensors["test_y"].tolist() == list(range(200))


def test_tinyimagenet_copy_with_too_few_classes_refused(served: Server, tmp_path: Path) -> None:
    fake = shutil.copy(served.root / "tiny-imagenet-200.zip", tmp_path / "tiny-copy.zip")
    with pytest.raises(PrunebenchError, match="has 3 classes .expected 200 WordNet ids"):
        prepare("tinyimagenet", tmp_path / "data", root=str(fake))


def test_official_archive_under_root_or_as_root_stays_official(served: Server,
                                                               tmp_path: Path) -> None:
    archive = served.root / "cifar-10-python.tar.gz"
    url, digest = served.url(archive.name), md5(archive)
    kept = tmp_path / "archives"
    kept.mkdir()
    shutil.copy(archive, kept / archive.name)
    before = len(served.requests)
    for root in (kept, kept / archive.name):
        prepare("cifar10", tmp_path / "data", root=str(root), url=url, checksum=digest)
        m = load_prepared("cifar10", tmp_path / "data").manifest
        assert m["data_origin"] == "official" and m["num_train"] == 15
        assert m["data_source_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert len(served.requests) == before


def test_folder_with_archive_and_tree_is_ambiguous(tmp_path: Path) -> None:
    root = cifar10_tree(tmp_path / "both")
    (root / "cifar-10-python.tar.gz").write_bytes(b"x")
    with pytest.raises(PrunebenchError, match="holds both the official cifar-10-python.tar.gz "
                                              "and an image tree.*ambiguous"):
        prepare("cifar10", tmp_path / "data", root=str(root))


def test_renamed_official_archive_explained(served: Server, tmp_path: Path) -> None:
    renamed = shutil.copy(served.root / "cifar-10-python.tar.gz", tmp_path / "cifar10.tar.gz")
    with pytest.raises(PrunebenchError, match="holds no train/ and test/ folders .* no local copy "
                                              "of cifar10; an official archive is recognised "
                                              "only under its official name"):
        prepare("cifar10", tmp_path / "data", root=str(renamed))


def test_missing_local_archive_named_not_downloaded(tmp_path: Path) -> None:
    missing = tmp_path / "cifar10-jpeg.tar.gz"
    with pytest.raises(PrunebenchError, match=f"--root {missing} does not exist"):
        prepare("cifar10", tmp_path / "data", root=str(missing))
    assert not missing.exists()


@pytest.mark.slow
def test_cli_prepare_cifar10_from_local_archive(tmp_path: Path) -> None:
    archive = tar_of(cifar10_tree(tmp_path / "tree"), tmp_path / "copy.tar.gz")
    proc = subprocess.run(
        [PYTHON, "-m", "prunebench", "prepare", "--dataset", "cifar10", "--data-dir",
         str(tmp_path / "data"), "--root", str(archive)],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert load_prepared("cifar10", tmp_path / "data").manifest["data_origin"] == "local"
    bad = tar_of(cifar10_tree(tmp_path / "bad", ["plane", *CIFAR10_NAMES[1:]]),
                 tmp_path / "bad.tar.gz")
    proc = subprocess.run(
        [PYTHON, "-m", "prunebench", "prepare", "--dataset", "cifar10", "--data-dir",
         str(tmp_path / "data2"), "--root", str(bad)],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "is not a copy of cifar10" in proc.stderr


# The real CIFAR-10 JPEG copy: PRUNEBENCH_CIFAR10_ARCHIVE names it (default: data/ in the
# checkout, LOCAL_CIFAR_JPEG). Without it the same test runs on a generated
# archive of the same layout and says so; under CI=true a named archive that is missing fails.
CIFAR_ARCHIVE_ENV = "PRUNEBENCH_CIFAR10_ARCHIVE"


def _generated_cifar10_jpeg(folder: Path, n_train: int = 10, n_test: int = 2) -> Path:
    """An archive laid out as the real copy: cifar10-jpeg/{train,test}/<class>/NNNN.jpg, 32x32
    JPEGs at quality 75, `n_train` and `n_test` per class."""
    rng = np.random.default_rng(0)
    tree = folder / "cifar10-jpeg"
    for split, n in (("train", n_train), ("test", n_test)):
        for name in CIFAR10_NAMES:
            (tree / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tree / split / name / f"{i:04d}.jpg", quality=75)
    return tar_of(tree, folder / "cifar10-jpeg.tar.gz", arcname="cifar10-jpeg")


def _cifar10_copy(tmp_path: Path) -> tuple[Path, bool]:
    """(the archive to prepare, whether it is the real copy)."""
    named = os.environ.get(CIFAR_ARCHIVE_ENV)
    path = Path(named) if named else LOCAL_CIFAR_JPEG
    if path.is_file():
        return path, True
    if named and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CIFAR_ARCHIVE_ENV}={named} does not exist (CI=true)")
    warnings.warn(f"no CIFAR-10 JPEG copy at {path} (set {CIFAR_ARCHIVE_ENV}): "
                  "test_shared_cifar10_jpeg_copy ran on a generated archive of the same layout",
                  stacklevel=2)
    return _generated_cifar10_jpeg(tmp_path / "generated"), False


@pytest.mark.slow
def test_shared_cifar10_jpeg_copy(tmp_path: Path) -> None:
    """The real CIFAR-10 (JPEG re-encoded) prepared as cifar10 from its archive, or, where no
    copy is at hand, the same code path on a generated archive of its layout (never a skip)."""
    archive, real = _cifar10_copy(tmp_path)
    prepare("cifar10", tmp_path / "data", root=str(archive))
    data = load_prepared("cifar10", tmp_path / "data")
    t, m = data.tensors, data.manifest
    n_train, n_test = (5000, 1000) if real else (10, 2)
    assert (m["num_train"], m["num_test"]) == (10 * n_train, 10 * n_test)
    assert m["image_shape"] == [3, 32, 32] and m["classes"] == CIFAR10_NAMES
    assert np.bincount(t["train_y"].numpy()).tolist() == [n_train] * 10
    assert np.bincount(t["test_y"].numpy()).tolist() == [n_test] * 10
    assert m["data_origin"] == "local" and m["data_source"] == "local archive cifar10-jpeg.tar.gz"
    assert m["data_source_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    if real:
        assert channel_stats(t["train_x"].numpy())[0] == pytest.approx(
            [0.491, 0.482, 0.447], abs=0.003)  # the JPEG copy is close to the published mean
    else:
        decoded = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(
            (tmp_path / "generated" / "cifar10-jpeg" / "train").rglob("*.jpg"))])
        assert channel_stats(t["train_x"].numpy())[0] == pytest.approx(
            (decoded / 255.0).mean(axis=(0, 1, 2)).tolist(), abs=1e-9)


def test_channel_stats_match_float_computation() -> None:
    x = np.random.default_rng(0).integers(0, 256, (3000, 3, 32, 32), dtype=np.uint8)
    x[:, 0] //= 3  # distinct channels
    xf = x.astype(np.float64) / 255.0
    mean, std = channel_stats(x)
    assert np.allclose(mean, xf.mean(axis=(0, 2, 3)), atol=1e-12)
    assert np.allclose(std, xf.std(axis=(0, 2, 3)), atol=1e-12)


# -- imagefolder at any image size -----------------------------------------------------------------

def test_imagefolder_resizes_images_of_any_size(tmp_path: Path) -> None:
    """image_size: images of several sizes and aspect ratios become one NxN tensor; center_crop
    keeps the middle of a wide image, stretch squeezes all of it; the manifest, the statistics
    (from the training images as prepared) and every run record it."""
    tree = make_tree(tmp_path / "tree", n=10, size=8)
    wide = Image.new("RGB", (40, 10), (255, 0, 0))  # red edges, a green middle
    wide.paste((0, 255, 0), (10, 0, 30, 10))
    wide.save(tree / "train" / "cat" / "0.png")
    Image.new("RGB", (5, 30), (0, 0, 255)).save(tree / "test" / "dog" / "0.png")
    crop = load_prepared("imagefolder", prepare("imagefolder", tmp_path / "c", root=str(tree),
                                                 image_size=6).parent)
    stretch = load_prepared("imagefolder", prepare("imagefolder", tmp_path / "s", root=str(tree),
                                                    image_size=6, resize="stretch").parent)
    for data in (crop, stretch):
        assert tuple(data.tensors["train_x"].shape) == (20, 3, 6, 6)
        assert tuple(data.tensors["test_x"].shape) == (20, 3, 6, 6)
    middle = crop.tensors["train_x"][0]
    assert (middle[1] == 255).all() and (middle[0] == 0).all()  # only the green middle
    squeezed = stretch.tensors["train_x"][0]
    assert squeezed[0, :, 0].float().mean() > 200  # the red left edge survives
    assert crop.manifest["data_resize"] == "center_crop to 6x6"
    assert stretch.manifest["data_resize"] == "stretch to 6x6"
    x = crop.tensors["train_x"].double() / 255
    assert crop.manifest["mean"] == pytest.approx(x.mean(dim=(0, 2, 3)).tolist())


def test_image_size_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    with pytest.raises(PrunebenchError, match="image_size applies to imagefolder"):
        prepare("cifar10", tmp_path, image_size=48)
    tree = make_tree(tmp_path / "tree", n=10)
    with pytest.raises(PrunebenchError, match="resize one of center_crop, stretch"):
        prepare("imagefolder", tmp_path / "d", root=str(tree), image_size=6, resize="fit")
