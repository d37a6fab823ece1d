"""Atomic writes: a file holds either its old or its complete new content, never a part."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunebench.errors import PrunebenchError
from prunebench.fileio import atomic_write, save_torch, sha256_file, write_json


def test_failed_write_leaves_previous_content_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})

    def half_write(tmp: Path) -> None:
        tmp.write_text('{"a": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(PrunebenchError, match=r"cannot write .*metrics\.json: disk full$"):
        atomic_write(target, half_write)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.json", lambda tmp: (_ for _ in ()).throw(RuntimeError()))
    assert list(tmp_path.iterdir()) == []


def test_torch_files_are_byte_identical_across_writes(tmp_path: Path) -> None:
    obj = {"w": torch.arange(10.0)}
    save_torch(tmp_path / "a.pt", obj)
    first = sha256_file(tmp_path / "a.pt")
    save_torch(tmp_path / "a.pt", obj)
    assert sha256_file(tmp_path / "a.pt") == first
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], obj["w"])
