"""Corrupt, crafted or missing prepared data and image trees: one-line errors that name the file and
the fix, from the library and from the CLI (exit code 1, one line on stderr, no finished-looking
run); nothing is ever unpickled with code (crafted files are refused, never executed)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO
from faultlaunch import FIGURES, cli_refuses, crafted, proves_live, run_args
from PIL import Image

from prunebench.cli import main
from prunebench.data.prepared import load_prepared
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


def replace_dataset(data_dir: Path, write) -> Path:
    """Overwrite digits.pt and make the manifest's checksum match it (a consistent forgery)."""
    path = data_dir / "digits.pt"
    write(path)
    manifest = json.loads((data_dir / "digits.json").read_text())
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (data_dir / "digits.json").write_text(json.dumps(manifest))
    return path


def one_line_load_error(data_dir: Path) -> str:
    with pytest.raises(PrunebenchError) as e:
        load_prepared("digits", data_dir)
    assert "\n" not in str(e.value) and str(data_dir / "digits.pt") in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("form", ["pickle", "torch.save"])
def test_crafted_dataset_file_is_refused_before_any_run(
        form: str, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proves_live(form, tmp_path)
    marker = tmp_path / "marker"
    path = replace_dataset(prepared, lambda p: crafted(p, marker, form))
    assert "cannot be loaded" in one_line_load_error(prepared)
    runs = tmp_path / "runs"
    cli_refuses(capsys, run_args("dense", prepared, out=runs), str(path))
    assert not marker.exists() and not runs.exists()  # nothing ran, no run folder
    FIGURES["crafted pickles refused"] += 1


WRONG_CONTENTS = {
    "a bare tensor": (lambda t: torch.zeros(3), "not the prepared tensors"),
    "missing tensor": (lambda t: {k: v for k, v in t.items() if k != "test_y"}, "lacks"),
    "wrong image shape": (lambda t: {**t, "train_x": t["train_x"][:, :, :4]}, "train_x"),
    "labels out of range": (lambda t: {**t, "test_y": t["test_y"] + 5}, "labels outside 0..9"),
    "float images": (lambda t: {**t, "test_x": t["test_x"].float()}, "test_x torch.float32"),
    "bad validation indices": (lambda t: {**t, "val_idx": t["val_idx"] + 10**6}, "val_idx"),
}


@pytest.mark.parametrize("case", list(WRONG_CONTENTS))
def test_dataset_file_with_other_contents_is_refused(case: str, prepared: Path) -> None:
    """A file whose checksum matches its manifest but whose tensors do not: one line, no run."""
    change, fragment = WRONG_CONTENTS[case]
    contents = change(torch.load(prepared / "digits.pt", weights_only=True))
    replace_dataset(prepared, lambda p: torch.save(contents, p))
    assert fragment in one_line_load_error(prepared)
    FIGURES["corrupt or wrong data refused"] += 1


def test_truncated_dataset_file_stops_the_cli_before_any_run(
        prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pt = prepared / "digits.pt"
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 3])
    runs = tmp_path / "runs"
    cli_refuses(capsys, run_args("dense", prepared, out=runs), str(pt), "checksum")
    assert not runs.exists()
    FIGURES["corrupt or wrong data refused"] += 1


def image_tree(root: Path) -> Path:
    for split in ("train", "test"):
        for label, name in enumerate(("cat", "dog")):
            d = root / split / name
            d.mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (8, 8), (40 * label, 30 * k, 7)).save(d / f"{k}.png")
                Image.new("RGB", (8, 8), (40 * label, 30 * k, 9)).save(d / f"{k}.jpg",
                                                                      quality=95)
    return root


@pytest.mark.parametrize("case", ["truncated jpeg", "truncated png", "empty file"])
def test_truncated_image_names_the_file(case: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An image tree that arrived cut short: `prepare` stops in one line naming the file and
    writes no prepared dataset."""
    tree = image_tree(tmp_path / "tree")
    suffix = {"truncated jpeg": "jpg", "truncated png": "png", "empty file": "png"}[case]
    bad = tree / "train" / "dog" / f"1.{suffix}"
    bad.write_bytes(b"" if case == "empty file" else bad.read_bytes()[: bad.stat().st_size // 2])
    data = tmp_path / "data"
    argv = ["prepare", "--dataset", "imagefolder", "--root", str(tree), "--data-dir", str(data)]
    cli_refuses(capsys, argv, str(bad))
    assert not list(data.glob("imagefolder.*")) and not list(data.glob(".*.tmp"))
    FIGURES["corrupt or wrong data refused"] += 1


def test_every_load_of_a_file_is_data_only() -> None:
    """Static check over the engine, methods and workflow: every torch.load passes
    weights_only=True, and nothing calls pickle.load(s) (CIFAR batches go through the
    restricted unpickler in prunebench/data/downloads.py)."""
    import ast

    unsafe = []
    files = [p for d in ("prunebench", "methods", "baselines") for p in (REPO / d).rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = getattr(node.func.value, "id", "")
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                           for k in node.keywords)
                if not safe:
                    unsafe.append(where)
            if owner == "pickle" and node.func.attr in ("load", "loads"):
                unsafe.append(where)
    assert not unsafe, f"unsafe loads: {unsafe}"
    for smk in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")]:
        assert "torch.load" not in smk.read_text() and "pickle" not in smk.read_text()
