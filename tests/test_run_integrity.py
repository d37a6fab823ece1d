"""A finished run's files stay what they are and say what they are (issue 22, items 4, 5 and 7):
a finished run is never replaced (a missing or unreadable config.json beside its metrics.json is
refused, naming the folder); `method.dense_from` takes only a dense run of the same dataset,
arch, seed and full recipe, and the pruned run records which one; `load_run` checks the saved
network and masks against each other, the network and metrics.json (each error names the file),
and identical runs write identical network files, with the mode of every other output."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from faultlaunch import FIGURES, cli_refuses
from safetensors import safe_open
from safetensors.torch import load_file

import prunebench
from prunebench import paths
from prunebench.errors import PrunebenchError
from prunebench.plan.config import resolve
from prunebench.training.artifact import canonical_safetensors
from prunebench.training.run import execute

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(digits_dir: Path, run_dir: Path, method: str = "dense", sparsity: float | None = None,
        **overrides: str) -> dict:
    cfg = resolve("digits", "conv2", method, sparsity, 0, overrides={
        "epochs": "1", "device": "cpu", "data_dir": str(digits_dir), **overrides})
    return execute(cfg, run_dir)


@pytest.fixture(scope="module")
def dense(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished dense run (read only: tests copy it before changing anything)."""
    d = tmp_path_factory.mktemp("dense") / "run"
    run(digits_dir, d)
    return d


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# -- a finished run is never replaced --------------------------------------------------------------

CONFIG_DAMAGE = {
    "missing": lambda p: p.unlink(),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:20]),
    "empty": lambda p: p.write_bytes(b""),
    "not UTF-8": lambda p: p.write_bytes(b"\xff\xfe{}"),
    "a list": lambda p: p.write_text("[1, 2]"),
}


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_finished_run_without_a_readable_config_is_never_replaced(
        damage: str, dense: Path, digits_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_run(dense, tmp_path / "run")
    before = (folder / paths.METRICS).read_bytes()
    CONFIG_DAMAGE[damage](folder / paths.CONFIG)
    with pytest.raises(PrunebenchError, match=f"run folder {folder} holds a finished run"):
        run(digits_dir, folder, epochs="2")
    cli_refuses(capsys, ["run", "--dataset", "digits", "--arch", "conv2", "--method", "dense",
                         "--run-dir", str(folder), "epochs=2", "device=cpu",
                         f"data_dir={digits_dir}"], str(folder), "never overwritten")
    assert (folder / paths.METRICS).read_bytes() == before
    FIGURES["finished runs kept from replacement"] += 1


def test_unreadable_metrics_of_a_finished_run_is_one_line(dense: Path, digits_dir: Path,
                                                          tmp_path: Path) -> None:
    folder = copy_run(dense, tmp_path / "run")
    (folder / paths.METRICS).write_text("{truncated")
    with pytest.raises(PrunebenchError, match=f"{folder / paths.METRICS} cannot be read"):
        run(digits_dir, folder)
    assert (folder / paths.METRICS).read_text() == "{truncated"


def test_finished_run_on_other_data_is_refused_not_relabelled(digits_dir: Path,
                                                              tmp_path: Path) -> None:
    """Data prepared again from another source after the run finished: the finished result is
    neither returned as this config's (it was returned unchanged, labelled with the new data's
    job) nor replaced. Data that is gone is no difference."""
    data, folder = tmp_path / "data", tmp_path / "run"
    shutil.copytree(digits_dir, data)
    run(data, folder)
    before = (folder / paths.METRICS).read_bytes()
    manifest_path = paths.dataset_manifest(data, "digits")
    manifest = json.loads(manifest_path.read_text())
    manifest["data_source_sha256"] = "0" * 64  # as if prepared from another archive
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PrunebenchError, match=r"other inputs .* data_source_sha256"):
        run(data, folder)
    assert (folder / paths.METRICS).read_bytes() == before
    shutil.rmtree(data)
    assert run(data, folder)["test_top1"] == json.loads(before)["test_top1"]
    FIGURES["finished runs kept from replacement"] += 1


def test_finished_run_from_a_changed_init_file_is_refused(
        dense: Path, digits_dir: Path, tmp_path: Path) -> None:
    """init_from's file rewritten after the run finished from it: refused, naming the file."""
    start = tmp_path / "start.safetensors"
    shutil.copy2(dense / paths.NETWORK, start)
    folder = tmp_path / "run"
    run(digits_dir, folder, init_from=str(start))
    run(digits_dir, folder, init_from=str(start))  # unchanged: the finished run is returned
    tensors = load_file(start)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    from safetensors.torch import save_file
    save_file(tensors, start)
    with pytest.raises(PrunebenchError, match=f"init_from {start}"):
        run(digits_dir, folder, init_from=str(start))


# -- dense_from: the same dataset, arch, seed and recipe, recorded --------------------------------

def test_dense_from_refuses_another_recipe(digits_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "dense-other"
    run(digits_dir, other, batch_size="128", schedule="constant", crop_padding="0")
    with pytest.raises(PrunebenchError) as e:
        run(digits_dir, tmp_path / "magnitude", "magnitude", 0.5,
            **{"method.dense_from": str(other)})
    for key in ("train_batch_size=128", "train_schedule='constant'", "train_crop_padding=0"):
        assert key in str(e.value), str(e.value)
    FIGURES["dense runs of another setting refused"] += 1


@pytest.mark.parametrize("key,value", [("dataset", "imagefolder"), ("arch", "conv4"),
                                       ("seed", 1), ("train_normalize", False)])
def test_dense_from_refuses_another_dataset_arch_or_seed(key: str, value: object, dense: Path,
                                                         digits_dir: Path,
                                                         tmp_path: Path) -> None:
    folder = copy_run(dense, tmp_path / "dense")
    metrics = json.loads((folder / paths.METRICS).read_text())
    (folder / paths.METRICS).write_text(json.dumps({**metrics, key: value}))
    with pytest.raises(PrunebenchError, match=f"{key}={value!r}"):
        run(digits_dir, tmp_path / "magnitude", "magnitude", 0.5,
            **{"method.dense_from": str(folder)})
    FIGURES["dense runs of another setting refused"] += 1


def test_pruned_run_records_the_dense_run_it_started_from(dense: Path, digits_dir: Path,
                                                         tmp_path: Path) -> None:
    metrics = run(digits_dir, tmp_path / "magnitude", "magnitude", 0.5,
                  **{"method.dense_from": str(dense)})
    source = json.loads((dense / paths.METRICS).read_text())
    assert metrics["method_dense_run_dir"] == str(dense.resolve())
    assert metrics["method_dense_config_digest"] == source["config_digest"]
    assert metrics["method_dense_network_sha256"] == source["network_sha256"]
    recipe = json.loads(metrics["method_dense_recipe"])
    assert recipe == {k: source[k] for k in recipe} and recipe["dataset"] == "digits"
    assert {k for k in source if k.startswith("train_")} - {"train_seconds"} <= set(recipe)


# -- load_run checks everything; identical runs, identical files ---------------------------------

def forge(folder: Path, name: str, change) -> Path:
    """Rewrite `name` with `change(tensors, metadata)` and record its new sha256 in metrics.json,
    as a consistent forgery would (the checksum alone then passes)."""
    path = folder / name
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        metadata = dict(f.metadata())
    change(tensors, metadata)
    blob = canonical_safetensors(tensors, metadata)
    path.write_bytes(blob)
    metrics = json.loads((folder / paths.METRICS).read_text())
    key = "network_sha256" if name == paths.NETWORK else "masks_sha256"
    metrics[key] = hashlib.sha256(blob).hexdigest()
    (folder / paths.METRICS).write_text(json.dumps(metrics))
    return path


def _first(tensors: dict) -> str:
    return sorted(tensors)[0]


TAMPER = {  # name -> (file, change, fragment of the error)
    "mask of the wrong shape": (paths.MASKS, lambda t, m: t.update(
        {_first(t): t[_first(t)][:1]}), "expected torch.bool"),
    "missing mask": (paths.MASKS, lambda t, m: t.pop(_first(t)), "missing ['"),
    "extra mask": (paths.MASKS, lambda t, m: t.update(extra=torch.ones(2, dtype=torch.bool)),
                   "unexpected ['extra']"),
    "float mask": (paths.MASKS, lambda t, m: t.update({_first(t): t[_first(t)].float()}),
                   "torch.float32"),
    "mask disagreeing with the weights": (paths.MASKS, lambda t, m: t.update(
        {_first(t): ~t[_first(t)]}), "disagrees with the network's weights"),
    "NaN weight": (paths.NETWORK, lambda t, m: t[_first(t)].view(-1).__setitem__(
        0, float("nan")), "NaN or infinite"),
    "missing weight": (paths.NETWORK, lambda t, m: t.pop(_first(t)), "does not fit"),
    "weight of another dtype": (paths.NETWORK, lambda t, m: t.update(
        {_first(t): t[_first(t)].double()}), "torch.float64"),
    "num_classes 1e11": (paths.NETWORK, lambda t, m: m.update(num_classes="100000000000"),
                         "num_classes 100000000000 is outside"),
    "num_classes not a number": (paths.NETWORK, lambda t, m: m.update(num_classes="1e11"),
                                 "malformed"),
    "huge image side": (paths.NETWORK, lambda t, m: m.update(image_shape="[1, 100000, 8]"),
                        "image_shape"),
    "metadata not JSON": (paths.NETWORK, lambda t, m: m.update(mean="[0.1"), "malformed"),
    "unknown arch": (paths.NETWORK, lambda t, m: m.update(arch="evil"), "arch 'evil'"),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_load_run_refuses_what_does_not_fit_naming_the_file(case: str, dense: Path,
                                                            tmp_path: Path) -> None:
    name, change, fragment = TAMPER[case]
    folder = copy_run(dense, tmp_path / "run")
    path = forge(folder, name, change)
    with pytest.raises(PrunebenchError) as e:
        prunebench.load_run(folder)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and fragment in message, message
    FIGURES["tampered saved networks refused"] += 1


@pytest.mark.parametrize("name", [paths.NETWORK, paths.MASKS])
def test_load_run_refuses_a_file_changed_after_the_run(name: str, dense: Path,
                                                       tmp_path: Path) -> None:
    folder = copy_run(dense, tmp_path / "run")
    path = folder / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one bit of one tensor: still a valid file
    path.write_bytes(bytes(data))
    with pytest.raises(PrunebenchError, match=f"{path} fails its sha256 recorded in"):
        prunebench.load_run(folder)
    (folder / paths.METRICS).write_text("{truncated")
    with pytest.raises(PrunebenchError, match=f"{folder / paths.METRICS} cannot be read"):
        prunebench.load_run(folder)
    FIGURES["tampered saved networks refused"] += 1


def test_identical_runs_write_identical_network_files(dense: Path, digits_dir: Path,
                                                      tmp_path: Path) -> None:
    """Byte for byte (the header's keys in one order), tied to metrics.json by their sha256,
    and readable by all as every other output (0644 under the usual umask 022)."""
    old = os.umask(0o022)
    try:
        again = tmp_path / "again"
        metrics = run(digits_dir, again)
    finally:
        os.umask(old)
    for name, key in ((paths.NETWORK, "network_sha256"), (paths.MASKS, "masks_sha256")):
        assert (again / name).read_bytes() == (dense / name).read_bytes(), name
        assert metrics[key] == hashlib.sha256((again / name).read_bytes()).hexdigest()
        assert stat.S_IMODE((again / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((again / paths.METRICS).stat().st_mode) == 0o644
