"""Corrupt or missing prepared data: one-line errors that name the file and the fix, from the
library and from the CLI (exit code 1, one line on stderr, no finished-looking run)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from prunebench.cli import main
from prunebench.data import load_prepared
from prunebench.errors import PrunebenchError


@pytest.fixture
def prepared(digits_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared digits files, free to damage."""
    d = tmp_path / "data"
    d.mkdir()
    for name in ("digits.pt", "digits.json"):
        shutil.copy(digits_dir / name, d / name)
    return d


def load_error(data_dir: Path, name: str = "digits") -> str:
    with pytest.raises(PrunebenchError) as e:
        load_prepared(name, data_dir)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_tensor_file(prepared: Path) -> None:
    truncate(prepared / "digits.pt")
    msg = load_error(prepared)
    assert str(prepared / "digits.pt") in msg and "checksum" in msg and "prepare" in msg


def test_truncated_tensor_file_with_matching_manifest(prepared: Path) -> None:
    """Checksum passes (the manifest was rewritten too) but the file cannot be unpickled."""
    pt, manifest = prepared / "digits.pt", prepared / "digits.json"
    truncate(pt)
    m = json.loads(manifest.read_text())
    m["sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(m))
    msg = load_error(prepared)
    assert str(pt) in msg and "cannot be loaded" in msg


def test_wrong_manifest_checksum(prepared: Path) -> None:
    manifest = prepared / "digits.json"
    m = json.loads(manifest.read_text())
    m["sha256"] = "0" * 64
    manifest.write_text(json.dumps(m))
    msg = load_error(prepared)
    assert str(prepared / "digits.pt") in msg and "000000000000" in msg


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"'])
def test_unreadable_manifest(prepared: Path, text: str) -> None:
    (prepared / "digits.json").write_text(text)
    assert str(prepared / "digits.json") in load_error(prepared)


@pytest.mark.parametrize("missing", ["digits.pt", "digits.json", None])
def test_missing_prepared_dataset_tells_the_prepare_command(prepared: Path,
                                                            missing: str | None) -> None:
    if missing is None:
        shutil.rmtree(prepared)
    else:
        (prepared / missing).unlink()
    msg = load_error(prepared)
    assert f"python -m prunebench prepare --dataset digits --data-dir {prepared}" in msg


def run_cli(data_dir: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`python -m prunebench run ...` in-process (its __main__ is `sys.exit(main())`)."""
    code = main(["run", "--dataset", "digits", "--arch", "conv2", "--method", "dense",
                 "--out", str(out), "epochs=1", f"data_dir={data_dir}"])
    return code, capsys.readouterr().err


def test_cli_corrupt_and_missing_data_exit_1_with_one_line(
        prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truncate(prepared / "digits.pt")
    code, err = run_cli(prepared, tmp_path / "runs1", capsys)
    assert code == 1, err
    assert err.startswith("prunebench: error:") and len(err.splitlines()) == 1, err
    assert str(prepared / "digits.pt") in err
    code, err = run_cli(tmp_path / "nowhere", tmp_path / "runs2", capsys)
    assert code == 1, err
    assert len(err.splitlines()) == 1 and "python -m prunebench prepare" in err, err
    assert not list(tmp_path.rglob("metrics.json"))
