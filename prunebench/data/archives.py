"""Safe extraction of downloaded or user-supplied archives (tar, tar.gz, zip).

Every member is checked before anything is written: names that would escape the target folder
(absolute paths, `..`, drive letters, empty names), links, device files and FIFOs are refused,
and so are archives whose declared member sizes add up to more than a limit (decompression
bombs). While copying, a member may not grow past its declared size. Reading in memory is
bounded whatever the archive declares: no member over MAX_MEMBER_BYTES, at most MAX_READ_BYTES
held at once, tar members streamed one at a time. Errors name the archive and the member.
`SafeZip` applies the same checks but reads members into memory, writing nothing, and
`read_files` reads a tar's or zip's files into memory the same way (for archives of many small
images, where unpacking and deleting costs more than reading).
"""
from __future__ import annotations

import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from prunebench.errors import PrunebenchError

MAX_TOTAL_BYTES = 8 << 30  # declared sizes of all members, extracted or read
MAX_MEMBERS = 2_000_000
# Reading in memory (`read_files`, `SafeZip.read`): no member over MAX_MEMBER_BYTES (an image is
# kilobytes to a few megabytes) and at most MAX_READ_BYTES held at once, whatever the archive
# declares; a larger archive of images is unpacked and read as a folder.
MAX_MEMBER_BYTES = 64 << 20
MAX_READ_BYTES = 4 << 30
_S_IFMT, _S_IFLNK, _S_IFREG, _S_IFDIR = 0o170000, 0o120000, 0o100000, 0o040000
# What a corrupt or lying member raises while it is read.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError, OSError,
                NotImplementedError, RuntimeError)


def one_line(e: object) -> str:
    """An exception's text on one line (tarfile lists each method it tried on its own line)."""
    return " ".join(str(e).split()) or type(e).__name__


def _check_name(archive: Path, name: str, is_dir: bool = False) -> PurePosixPath:
    """A member's path relative to the target; `.` only for a folder entry such as `./`."""
    p = PurePosixPath(name.replace("\\", "/"))
    parts = [q for q in p.parts if q != "."]
    if (p.is_absolute() or ".." in p.parts or (parts and ":" in parts[0]) or "\x00" in name
            or (not parts and not is_dir)):
        raise PrunebenchError(f"archive {archive}: member {name!r} would escape the target folder")
    return PurePosixPath(*parts)


class _Totals:
    """Running member count and declared size, refused as soon as either passes its limit."""

    def __init__(self, archive: Path, max_bytes: int) -> None:
        self.archive, self.max_bytes, self.count, self.total = archive, max_bytes, 0, 0

    def add(self, name: str, size: int) -> None:
        self.count += 1
        self.total += max(size, 0)
        if self.count > MAX_MEMBERS:
            raise PrunebenchError(f"archive {self.archive}: more than {MAX_MEMBERS} members")
        if self.total > self.max_bytes:
            raise PrunebenchError(
                f"archive {self.archive}: members up to {name!r} add up to {self.total} bytes, "
                f"more than the {self.max_bytes} allowed; refusing (possible decompression bomb)")


def _zip_infos(archive: Path, zf: zipfile.ZipFile, max_bytes: int) -> list[zipfile.ZipInfo]:
    """The members of a zip, after every check (nothing read or written yet)."""
    totals = _Totals(archive, max_bytes)
    infos = zf.infolist()
    for info in infos:
        _check_name(archive, info.filename, info.is_dir())
        kind = (info.external_attr >> 16) & _S_IFMT
        if kind and kind not in (_S_IFREG, _S_IFDIR):
            what = "a symbolic link" if kind == _S_IFLNK else "a special file"
            raise PrunebenchError(f"archive {archive}: member {info.filename!r} is {what}; only "
                                  "regular files and folders are allowed")
        totals.add(info.filename, info.file_size)
    return infos


def _iter_tar(archive: Path, tf: tarfile.TarFile, max_bytes: int) -> Iterator[tarfile.TarInfo]:
    """The members of a tar, checked one by one while the (possibly compressed) stream is read,
    so a bomb is refused as soon as its declared sizes pass the limit."""
    totals = _Totals(archive, max_bytes)
    try:
        for m in tf:
            _check_name(archive, m.name, m.isdir())
            if not (m.isfile() or m.isdir()):
                what = ("a symbolic link" if m.issym() else "a hard link" if m.islnk()
                        else "a device file or FIFO")
                raise PrunebenchError(f"archive {archive}: member {m.name!r} is {what}; only "
                                      "regular files and folders are allowed")
            totals.add(m.name, m.size)
            yield m
    except _READ_ERRORS as e:
        raise PrunebenchError(f"archive {archive} is damaged after {totals.count} members: "
                              f"{one_line(e)}") from None


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PrunebenchError(f"archive {archive} is not a readable tar or zip file: "
                              f"{one_line(e)}") from None


def safe_extract(archive: str | Path, dest: str | Path, max_bytes: int = MAX_TOTAL_BYTES) -> Path:
    """Extract `archive` into `dest` after checking every member; return `dest`."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise PrunebenchError(f"archive {archive} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    top = dest.resolve()
    if zipfile.is_zipfile(archive):
        try:
            zf = zipfile.ZipFile(archive)
        except _READ_ERRORS as e:
            raise PrunebenchError(f"archive {archive} is not a readable zip file: "
                                  f"{one_line(e)}") from None
        with zf:
            for info in _zip_infos(archive, zf, max_bytes):
                target = _target(archive, top, info.filename, info.is_dir())
                if info.is_dir():
                    _make_dir(archive, info.filename, target)
                    continue
                _write_member(archive, info.filename, info.file_size, lambda i=info: zf.open(i),
                              target)
        return dest
    with _open_tar(archive) as tf:
        for m in list(_iter_tar(archive, tf, max_bytes)):  # check all before writing any
            target = _target(archive, top, m.name, m.isdir())
            if m.isdir():
                _make_dir(archive, m.name, target)
                continue
            _write_member(archive, m.name, m.size, lambda m=m: tf.extractfile(m), target)
    return dest


def _target(archive: Path, top: Path, name: str, is_dir: bool) -> Path:
    """Where member `name` goes; also refused if a link already inside `top` leads out."""
    target = top / _check_name(archive, name, is_dir)
    if target == top:
        return target
    parent = target.parent.resolve()
    if parent != top and top not in parent.parents:
        raise PrunebenchError(f"archive {archive}: member {name!r} would be written outside "
                              f"{top} (through an existing link)")
    if target.is_symlink():
        raise PrunebenchError(f"archive {archive}: member {name!r} would overwrite the link "
                              f"{target}")
    return target


def _make_dir(archive: Path, name: str, target: Path) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrunebenchError(f"archive {archive}: folder member {name!r} cannot be created: "
                              f"{one_line(e)}") from None


def _write_member(archive: Path, name: str, declared: int, open_member: Callable[[], IO[bytes]],
                  target: Path) -> None:
    """Copy one member to `target`; on any failure remove the partial file and say why."""
    _make_dir(archive, name, target.parent)
    try:
        with open_member() as src, open(target, "wb") as out:
            _copy_limited(src, out, declared, archive, name)
    except PrunebenchError:
        target.unlink(missing_ok=True)
        raise
    except _READ_ERRORS as e:
        if target.is_file():
            target.unlink()
        raise PrunebenchError(f"archive {archive}: member {name!r} cannot be extracted (corrupt, "
                              f"larger than its header says, or clashing with a folder): "
                              f"{one_line(e)}") from None


def _copy_limited(src: IO[bytes], out: IO[bytes], declared: int, archive: Path,
                  name: str) -> None:
    """Copy at most `declared` bytes; a member that inflates past its header is refused."""
    written = 0
    while chunk := src.read(1 << 20):
        written += len(chunk)
        if written > declared:
            raise PrunebenchError(f"archive {archive}: member {name!r} is larger than its header "
                                  "says; refusing")
        out.write(chunk)


def _check_readable(archive: Path, name: str, size: int) -> None:
    """Refuse a member too large to read in memory, before any of it is read."""
    if size > MAX_MEMBER_BYTES:
        raise PrunebenchError(
            f"archive {archive}: member {name!r} is {size} bytes, more than the "
            f"{MAX_MEMBER_BYTES} bytes ({MAX_MEMBER_BYTES >> 20} MiB) a member read in memory "
            "may have; refusing (an image is far smaller: possible decompression bomb)")


class SafeZip:
    """A zip archive whose members passed the `safe_extract` checks, read into memory.

    `names` maps each file member's normalised path (`a/b.jpg`) to its entry; `read` returns a
    member's bytes. Reading from several threads at once is safe (zipfile locks its file).
    """

    def __init__(self, archive: str | Path, max_bytes: int = MAX_TOTAL_BYTES) -> None:
        self.archive = Path(archive)
        if not zipfile.is_zipfile(self.archive):
            raise PrunebenchError(f"archive {self.archive} is not a zip file")
        try:
            self._zf = zipfile.ZipFile(self.archive)
        except _READ_ERRORS as e:
            raise PrunebenchError(f"archive {self.archive} is not a readable zip file: "
                                  f"{one_line(e)}") from None
        self.infos = _zip_infos(self.archive, self._zf, max_bytes)
        self.names = {str(_check_name(self.archive, i.filename)): i
                      for i in self.infos if not i.is_dir()}

    def read(self, name: str) -> bytes:
        info = self.names.get(name)
        if info is None:
            raise PrunebenchError(f"archive {self.archive} has no member {name!r}")
        _check_readable(self.archive, name, info.file_size)
        try:
            with self._zf.open(info) as src:
                data = src.read(info.file_size + 1)
        except _READ_ERRORS as e:
            raise PrunebenchError(f"archive {self.archive}: member {name!r} is corrupt or larger "
                                  f"than its header says: {one_line(e)}") from None
        if len(data) > info.file_size:
            raise PrunebenchError(f"archive {self.archive}: member {name!r} is larger than its "
                                  "header says; refusing")
        return data

    def close(self) -> None:
        self._zf.close()

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_files(archive: str | Path, keep: Callable[[str], bool] = lambda name: True,
               max_bytes: int = MAX_TOTAL_BYTES) -> tuple[dict[str, bytes], set[str]]:
    """The bytes of every file member that `keep` accepts, by normalised path (`a/b.jpg`), and
    every folder (listed or implied), after the `safe_extract` checks; nothing is written.
    For archives of many small files, where unpacking and deleting costs more than reading."""
    archive = Path(archive)
    if not archive.is_file():
        raise PrunebenchError(f"archive {archive} does not exist")
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    held = 0

    def hold(name: str, size: int) -> None:
        nonlocal held
        _check_readable(archive, name, size)
        held += size
        if held > MAX_READ_BYTES:
            raise PrunebenchError(
                f"archive {archive}: its files up to {name!r} add up to more than the "
                f"{MAX_READ_BYTES} bytes ({MAX_READ_BYTES >> 30} GiB) read in memory at once; "
                "unpack it and give the folder instead")

    if zipfile.is_zipfile(archive):
        with SafeZip(archive, max_bytes) as zf:
            dirs.update(str(_check_name(archive, i.filename, True))
                        for i in zf.infos if i.is_dir())
            for name, info in zf.names.items():
                if keep(name):
                    hold(name, info.file_size)
                    files[name] = zf.read(name)
    else:
        with _open_tar(archive) as tf:
            for m in _iter_tar(archive, tf, max_bytes):  # streamed: one member at a time
                name = str(_check_name(archive, m.name, m.isdir()))
                if m.isdir():
                    dirs.add(name)
                elif keep(name):
                    hold(m.name, m.size)
                    files[name] = _read_tar_member(archive, tf, m)
    for name in list(files) + list(dirs):
        dirs.update(str(p) for p in PurePosixPath(name).parents)
    dirs.discard(".")
    return files, dirs


def _read_tar_member(archive: Path, tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    _check_readable(archive, m.name, m.size)
    try:
        src = tf.extractfile(m)
        assert src is not None  # regular files always have a reader
        with src:
            data = src.read(m.size + 1)
    except _READ_ERRORS as e:
        raise PrunebenchError(f"archive {archive}: member {m.name!r} cannot be read: "
                              f"{one_line(e)}") from None
    if len(data) != m.size:
        raise PrunebenchError(f"archive {archive}: member {m.name!r} has {len(data)} bytes, its "
                              f"header says {m.size}")
    return data
