"""Atomic writes and checksums: a file either has its full content or does not exist."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prunebench.errors import PrunebenchError, os_error_text


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` then fsync and rename tmp over `path`; an I/O error (a full disk) is a
    one-line PrunebenchError naming `path` and the cause, and leaves no file behind.

    tmp lives in a hidden folder beside `path` (same filesystem, so the rename is atomic) and
    has the same file name, so formats that embed the name stay byte-identical."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise PrunebenchError(f"cannot write {path}: {os_error_text(e)}") from None
    tmp = tmp_dir / path.name
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise PrunebenchError(f"cannot write {path}: {os_error_text(e)}") from None
    finally:
        with contextlib.suppress(OSError):  # never hide the error above behind this one
            tmp.unlink(missing_ok=True)
            tmp_dir.rmdir()


def remove_stale_temps(folder: str | Path, names: list[str] | None = None) -> list[Path]:
    """Remove the hidden temp folders `atomic_write` leaves when its process is killed inside it
    (only those of `names`, if given); return them. Call only where no other process writes."""
    folder = Path(folder)
    patterns = [f".{n}.*.tmp" for n in names] if names is not None else [".*.tmp"]
    stale = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_dir()})
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV (columns: union of keys in first-seen order), written atomically."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save through a Python file object: its write errors keep their errno (given a
    path, torch's own writer reports a full disk as `unexpected pos ...`)."""
    def write(tmp: Path) -> None:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as e:  # the writer's end-of-file check hides the write's OSError
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise

    atomic_write(path, write)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

