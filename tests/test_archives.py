"""safe_extract and SafeZip: hostile members are refused before anything is written, with an error
naming the archive and the member; good archives unpack exactly; `prepare` refuses a hostile
image archive in one line."""
from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
from faultlaunch import FIGURES, cli_refuses

from prunebench.data import archives
from prunebench.data.archives import SafeZip, read_files, safe_extract
from prunebench.errors import PrunebenchError


def make_tar(path: Path, members: list[tuple[str, bytes | None, bytes]], mode: str = "w:gz"
             ) -> Path:
    """members: (name, tar type or None for a regular file, data or link target)."""
    with tarfile.open(path, mode) as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind is None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.type = kind
                if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    info.linkname = data.decode()
                tf.addfile(info)
    return path


def make_zip(path: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None
             ) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return path


def outside_is_untouched(tmp_path: Path, archive: Path, dest: Path) -> None:
    """Only the archive and the (empty) target exist: nothing was written anywhere else."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, dest.name])
    assert list(dest.iterdir()) == []


def refused(archive: Path, dest: Path, member: str, words: str, **kw) -> str:
    with pytest.raises(PrunebenchError) as e:
        safe_extract(archive, dest, **kw)
    msg = str(e.value)
    assert str(archive) in msg and (not member or repr(member) in msg) and words in msg, msg
    assert "\n" not in msg
    return msg


def test_good_tar_and_zip_unpack_exactly(tmp_path: Path) -> None:
    files = {"top/a.txt": b"alpha", "top/sub/b.bin": bytes(range(256)) * 10}
    tar = make_tar(tmp_path / "t.tar.gz", [("./", tarfile.DIRTYPE, b""), ("top", tarfile.DIRTYPE,
                                           b"")] + [(n, None, d) for n, d in files.items()])
    zp = make_zip(tmp_path / "z.zip", list(files.items()))
    for archive in (tar, zp):
        dest = safe_extract(archive, tmp_path / f"out-{archive.suffix}")
        got = {p.relative_to(dest).as_posix(): p.read_bytes()
               for p in dest.rglob("*") if p.is_file()}
        assert got == files


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/tmp/abs-evil.txt",
                                  "C:/evil.txt"])
def test_tar_member_escaping_is_refused(tmp_path: Path, name: str) -> None:
    archive = make_tar(tmp_path / "bad.tar.gz", [("ok.txt", None, b"fine"), (name, None, b"x")])
    dest = tmp_path / "out"
    refused(archive, dest, name, "escape")
    outside_is_untouched(tmp_path, archive, dest)
    assert not Path("/tmp/abs-evil.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs-evil.txt", "..\\evil.txt"])
def test_zip_member_escaping_is_refused(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "bad.zip", [("ok.txt", b"fine"), (name, b"x")])
    dest = tmp_path / "out"
    refused(archive, dest, name, "escape")
    outside_is_untouched(tmp_path, archive, dest)


@pytest.mark.parametrize("kind,words", [(tarfile.SYMTYPE, "symbolic link"),
                                        (tarfile.LNKTYPE, "hard link"),
                                        (tarfile.FIFOTYPE, "device file or FIFO"),
                                        (tarfile.CHRTYPE, "device file or FIFO")])
def test_tar_links_and_special_files_are_refused(tmp_path: Path, kind: bytes, words: str) -> None:
    archive = make_tar(tmp_path / "bad.tar", [("ok.txt", None, b"fine"),
                                              ("link", kind, b"/etc/passwd")], mode="w")
    dest = tmp_path / "out"
    refused(archive, dest, "link", words)
    outside_is_untouched(tmp_path, archive, dest)


def test_zip_symlink_is_refused_by_extract_and_safezip(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bad.zip", [("ok.txt", b"fine")], {"link": "/etc/passwd"})
    dest = tmp_path / "out"
    refused(archive, dest, "link", "symbolic link")
    outside_is_untouched(tmp_path, archive, dest)
    with pytest.raises(PrunebenchError, match="symbolic link"):
        SafeZip(archive)


def test_tar_bomb_refused_before_writing(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "bomb.tar.gz", [("small.bin", None, b"x" * 100),
                                                  ("huge.bin", None, bytes(5000))])
    dest = tmp_path / "out"
    refused(archive, dest, "huge.bin", "decompression bomb", max_bytes=1000)
    outside_is_untouched(tmp_path, archive, dest)


def test_zip_bomb_refused_before_writing(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", [("zeros.bin", bytes(4 << 20))])
    assert archive.stat().st_size < 20_000  # 4 MiB of zeros deflate to a few KiB
    dest = tmp_path / "out"
    refused(archive, dest, "zeros.bin", "decompression bomb", max_bytes=1 << 20)
    outside_is_untouched(tmp_path, archive, dest)
    with pytest.raises(PrunebenchError, match="decompression bomb"):
        SafeZip(archive, max_bytes=1 << 20)


def test_too_many_members_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_MEMBERS", 3)
    archive = make_zip(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(5)])
    dest = tmp_path / "out"
    refused(archive, dest, "", "more than 3 members")
    outside_is_untouched(tmp_path, archive, dest)


def lying_zip(path: Path, real: bytes, declared: int) -> Path:
    """A zip whose one member `big.bin` inflates to `real` but whose headers declare fewer
    bytes (both the local header and the central directory are patched)."""
    make_zip(path, [("big.bin", real)])
    raw = bytearray(path.read_bytes())
    local = raw.index(b"PK\x03\x04")
    struct.pack_into("<I", raw, local + 22, declared)
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, declared)
    path.write_bytes(bytes(raw))
    return path


def test_zip_member_larger_than_its_header_is_refused(tmp_path: Path) -> None:
    archive = lying_zip(tmp_path / "lying.zip", bytes(range(256)) * 400, declared=1000)
    assert zipfile.ZipFile(archive).getinfo("big.bin").file_size == 1000
    dest = tmp_path / "out"
    refused(archive, dest, "big.bin", "larger than its header")
    assert [p for p in dest.rglob("*") if p.is_file()] == []  # the partial file was removed
    with SafeZip(archive) as zf, pytest.raises(PrunebenchError, match="big.bin"):
        zf.read("big.bin")


def test_copy_guard_stops_a_stream_longer_than_declared(tmp_path: Path) -> None:
    out = io.BytesIO()
    with pytest.raises(PrunebenchError, match="larger than its header"):
        archives._copy_limited(io.BytesIO(b"x" * 5000), out, 4000, tmp_path / "a.zip", "m")
    assert len(out.getvalue()) <= 4000


def test_existing_link_inside_target_cannot_lead_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    os.symlink(outside, dest / "link")
    archive = make_tar(tmp_path / "t.tar.gz", [("link/evil.txt", None, b"x")])
    refused(archive, dest, "link/evil.txt", "outside")
    assert list(outside.iterdir()) == []


def test_truncated_and_non_archives_give_one_line_errors(tmp_path: Path) -> None:
    good = make_tar(tmp_path / "t.tar.gz", [(f"f{i}.bin", None, os.urandom(20_000))
                                            for i in range(5)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.txt"
    text.write_text("not an archive")
    for archive in (cut, text, tmp_path / "missing.tar"):
        with pytest.raises(PrunebenchError) as e:
            safe_extract(archive, tmp_path / "out")
        assert str(archive) in str(e.value) and "\n" not in str(e.value)


def test_safezip_reads_members_without_writing(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "z.zip", [("d/a.txt", b"alpha"), ("d/", b"")])
    with SafeZip(archive) as zf:
        assert sorted(zf.names) == ["d/a.txt"]
        assert zf.read("d/a.txt") == b"alpha"
        with pytest.raises(PrunebenchError, match="no member 'd/b.txt'"):
            zf.read("d/b.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.zip"]


def test_read_files_applies_the_same_checks_and_writes_nothing(tmp_path: Path) -> None:
    files = {"top/a.png": b"alpha", "top/sub/b.jpg": b"beta", "top/c.txt": b"skip"}
    tar = make_tar(tmp_path / "t.tar.gz", [("./", tarfile.DIRTYPE, b""), ("./top/empty",
                                           tarfile.DIRTYPE, b"")]
                   + [("./" + n, None, d) for n, d in files.items()])
    zp = make_zip(tmp_path / "z.zip", list(files.items()) + [("top/empty/", b"")])
    for archive in (tar, zp):
        got, dirs = read_files(archive, keep=lambda n: not n.endswith(".txt"))
        assert got == {"top/a.png": b"alpha", "top/sub/b.jpg": b"beta"}
        assert dirs == {"top", "top/sub", "top/empty"}
    bad = [make_tar(tmp_path / "esc.tar", [("../evil", None, b"x")], mode="w"),
           make_tar(tmp_path / "link.tar", [("l", tarfile.SYMTYPE, b"/etc")], mode="w"),
           make_zip(tmp_path / "bomb.zip", [("zeros", bytes(1 << 20))])]
    for archive, words in zip(bad, ["escape", "symbolic link", "decompression bomb"],
                              strict=True):
        with pytest.raises(PrunebenchError, match=words):
            read_files(archive, max_bytes=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["t.tar.gz", "z.zip", "esc.tar", "link.tar", "bomb.zip"])


# -- more hostile archives: PAX/GNU names, UNC and drive paths, devices, through both readers ------

def _tar(path: Path, infos: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> Path:
    with tarfile.open(path, "w:gz", format=fmt) as tf:
        for info, data in infos:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


def _zip(path: Path, members: list[tuple[str, int, bytes]]) -> Path:
    """members: (name, unix mode or 0, data)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, mode, data in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def hostile_archives(d: Path, outside: Path) -> dict[str, tuple[Path, str]]:
    """name -> (archive, words the refusal must contain). `outside` is where an escape lands."""
    ok = (_info("train/a/0.png"), b"fine")
    up = os.path.relpath(outside, d / "out")
    return {
        "tar block device": (_tar(d / "blk.tar.gz", [ok, (_info("dev", tarfile.BLKTYPE), b"")],
                                  tarfile.GNU_FORMAT), "device file or FIFO"),
        "tar PAX path escaping": (_tar(d / "pax.tar.gz", [ok, (_info(
            "innocent.txt", pax_headers={"path": f"{up}/pax.txt"}), b"x")], tarfile.PAX_FORMAT),
            "escape"),
        "tar GNU long name escaping": (_tar(d / "long.tar.gz", [ok, (_info(
            f"{up}/{'n' * 120}.txt"), b"x")], tarfile.GNU_FORMAT), "escape"),
        "tar absolute long name": (_tar(d / "abs.tar.gz", [ok, (_info(
            f"{outside}/{'a' * 120}.txt"), b"x")], tarfile.GNU_FORMAT), "escape"),
        "tar folder escaping": (_tar(d / "dir.tar.gz", [ok, (_info(f"{up}/evil-dir",
                                                                    tarfile.DIRTYPE), b"")],
                                     tarfile.GNU_FORMAT), "escape"),
        "tar hard link to an absolute path": (_tar(d / "hard.tar.gz", [ok, (_info(
            "train/a/1.png", tarfile.LNKTYPE, linkname="/etc/passwd"), b"")], tarfile.GNU_FORMAT),
            "hard link"),
        "zip absolute path": (_zip(d / "abs.zip", [("train/a/0.png", 0, b"fine"),
                                                   (f"{outside}/abs.txt", 0, b"x")]), "escape"),
        "zip UNC path": (_zip(d / "unc.zip", [("\\\\server\\share\\evil.txt", 0, b"x")]),
                         "escape"),
        "zip drive letter": (_zip(d / "drive.zip", [("C:\\evil.txt", 0, b"x")]), "escape"),
        "zip character device": (_zip(d / "chr.zip", [("dev", 0o020644, b"")]), "special file"),
        "zip FIFO": (_zip(d / "fifo.zip", [("fifo", 0o010644, b"")]), "special file"),
        "zip symlink": (_zip(d / "sym.zip", [("link", 0o120777, str(outside).encode())]),
                        "symbolic link"),
    }


def test_hostile_archives_are_refused_without_writing(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "archives"
    src.mkdir()
    cases = hostile_archives(src, outside)
    readers = [("safe_extract", lambda a: safe_extract(a, tmp_path / "archives/out")),
               ("read_files", read_files)]  # read_files: the in-memory imagefolder reader
    for name, (archive, words) in cases.items():
        for reader, read in readers:
            with pytest.raises(PrunebenchError) as e:
                read(archive)
            msg = str(e.value)
            assert str(archive) in msg and words in msg and "\n" not in msg, (name, reader, msg)
            FIGURES["hostile archive reads refused"] += 1
        out = src / "out"
        assert not out.exists() or not any(out.rglob("*")), name
    assert list(outside.iterdir()) == []
    assert not Path("/abs.txt").exists() and not Path("/evil.txt").exists()


def test_hostile_archive_through_the_cli(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`prepare --dataset imagefolder --root <archive>`: one line naming the archive, no data."""
    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "archives"
    src.mkdir()
    archive, words = hostile_archives(src, outside)["tar PAX path escaping"]
    data = tmp_path / "data"
    argv = ["prepare", "--dataset", "imagefolder", "--root", str(archive), "--data-dir", str(data)]
    cli_refuses(capsys, argv, str(archive), words)
    assert list(outside.iterdir()) == [] and not list(data.rglob("*.pt"))
    FIGURES["hostile archive reads refused"] += 1


# -- memory bounded whatever an archive or image declares (issue 22, item 2) --------------------

def declaring_tar(path: Path, name: str, declared: int, data: bytes) -> Path:
    """A .tar.gz whose one member's header declares `declared` bytes (it holds `data`)."""
    info = tarfile.TarInfo(name)
    info.size = declared
    with gzip.open(path, "wb") as f:
        f.write(info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * 1024)
    return path


def test_a_member_larger_than_the_limit_is_refused_before_it_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 2 KB .tar.gz declaring one 2 GiB image under train/airplane/ (before: read whole into
    memory, 4.9 GB resident, then `cannot identify image file <_io.BytesIO object at 0x...>`)."""
    archive = declaring_tar(tmp_path / "bomb.tar.gz", "train/airplane/big.png", 2 << 30, b"x")
    member = "train/airplane/big.png"
    with pytest.raises(PrunebenchError) as e:
        read_files(archive)
    assert f"member {member!r} is 2147483648 bytes, more than the 67108864" in str(e.value)
    data = tmp_path / "data"
    cli_refuses(capsys, ["prepare", "--dataset", "cifar10", "--root", str(archive),
                         "--data-dir", str(data)], str(archive), repr(member), "67108864")
    assert not list(data.rglob("*.pt"))
    FIGURES["hostile archive reads refused"] += 1


@pytest.mark.parametrize("form", ["tar", "zip"])
def test_real_member_over_the_limit_is_never_read(form: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that really holds more than the limit (the limit lowered to 1 MiB here)."""
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", 1 << 20)
    members = [("train/a/0.png", b"\0" * (2 << 20))]
    archive = (make_tar(tmp_path / "a.tar.gz", [(n, None, d) for n, d in members])
               if form == "tar" else make_zip(tmp_path / "a.zip", members))
    with pytest.raises(PrunebenchError, match="'train/a/0.png' is 2097152 bytes, more than"):
        read_files(archive)
    if form == "zip":
        with SafeZip(archive) as zf, pytest.raises(PrunebenchError, match="more than"):
            zf.read("train/a/0.png")
    FIGURES["hostile archive reads refused"] += 1


def test_members_held_in_memory_are_bounded_in_total(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_READ_BYTES", 1000)
    archive = make_tar(tmp_path / "a.tar.gz", [(f"train/a/{i}.png", None, b"p" * 400)
                                               for i in range(3)])
    with pytest.raises(PrunebenchError, match="add up to more than the 1000 bytes"):
        read_files(archive)
    assert len(read_files(archive, keep=lambda n: n.endswith(("0.png", "1.png")))[0]) == 2
    FIGURES["hostile archive reads refused"] += 1


def image_tree(root: Path, big: tuple[int, int] | None = None) -> Path:
    """train/ and test/ with two classes of 8x8 PNGs; `big`: one bilevel image of that size."""
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (60 * i, 9, 9)).save(root / split / c / f"{i}.png")
    if big:
        Image.new("1", big).save(root / "train" / "b" / "9.png")
    return root


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # as outside pytest
@pytest.mark.parametrize("size", [(10000, 10000), (20000, 10000)])
def test_decompression_bomb_image_is_one_line_naming_the_file(
        size: tuple[int, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Over Pillow's limit (where it only warns) and over twice it (where it raises; before:
    a raw `PIL.Image.DecompressionBombError` traceback; the first was decoded, 100 MB)."""
    tree = image_tree(tmp_path / "tree", size)
    data = tmp_path / "data"
    cli_refuses(capsys, ["prepare", "--dataset", "imagefolder", "--root", str(tree),
                         "--data-dir", str(data)], str(tree / "train" / "b" / "9.png"),
                "larger than the 89478485 pixels allowed")
    assert not list(data.rglob("*.pt"))
    FIGURES["hostile archive reads refused"] += 1


def test_decoded_images_are_bounded_before_allocation(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from prunebench.data import datasets

    monkeypatch.setattr(datasets, "MAX_DECODED_BYTES", 500)
    tree = image_tree(tmp_path / "tree")
    with pytest.raises(PrunebenchError, match="4 images of 3x8x8 .* would take 768 bytes"):
        datasets.read_folder_tree(tree)
