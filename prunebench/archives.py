"""Safe extraction of downloaded or user-supplied archives (tar, tar.gz, zip).

Refuses members that would escape the target folder (absolute paths, `..`), links and device
files, and archives whose members add up to more than a size limit (decompression bombs).
"""
from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from prunebench.errors import PrunebenchError

MAX_TOTAL_BYTES = 8 << 30
MAX_MEMBERS = 2_000_000


def _check_name(archive: Path, name: str) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise PrunebenchError(f"archive {archive}: member {name!r} would escape the target folder")
    return p


def _check_totals(archive: Path, count: int, total: int, max_bytes: int) -> None:
    if count > MAX_MEMBERS:
        raise PrunebenchError(f"archive {archive}: {count} members is more than {MAX_MEMBERS}")
    if total > max_bytes:
        raise PrunebenchError(
            f"archive {archive}: members add up to {total} bytes, more than the {max_bytes} "
            "allowed; refusing (possible decompression bomb)")


def safe_extract(archive: str | Path, dest: str | Path, max_bytes: int = MAX_TOTAL_BYTES) -> Path:
    """Extract `archive` into `dest` after checking every member; return `dest`."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_name(archive, info.filename)
                mode = (info.external_attr >> 16) & 0o170000
                if mode == 0o120000:
                    raise PrunebenchError(f"archive {archive}: member {info.filename!r} is a "
                                          "symbolic link; links are not allowed")
            _check_totals(archive, len(infos), sum(i.file_size for i in infos), max_bytes)
            for info in infos:
                target = dest / _check_name(archive, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    _copy_limited(src, out, info.file_size, archive, info.filename)
        return dest
    try:
        tf = tarfile.open(archive)
    except (tarfile.TarError, OSError) as e:
        raise PrunebenchError(f"archive {archive} is not a readable tar or zip file: {e}") from None
    with tf:
        members = tf.getmembers()
        for m in members:
            _check_name(archive, m.name)
            if not (m.isfile() or m.isdir()):
                raise PrunebenchError(f"archive {archive}: member {m.name!r} is a link or special "
                                      "file; only regular files and folders are allowed")
        _check_totals(archive, len(members), sum(m.size for m in members), max_bytes)
        for m in members:
            target = dest / _check_name(archive, m.name)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            with src, open(target, "wb") as out:
                _copy_limited(src, out, m.size, archive, m.name)
    return dest


def _copy_limited(src, out, declared: int, archive: Path, name: str) -> None:
    """Copy at most `declared` bytes; a member that inflates past its header is refused."""
    written = 0
    while chunk := src.read(1 << 20):
        written += len(chunk)
        if written > declared:
            raise PrunebenchError(f"archive {archive}: member {name!r} is larger than its header "
                                  "says; refusing")
        out.write(chunk)


def remove_tree(path: str | Path) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
