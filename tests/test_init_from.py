"""A trained starting point: `init_from` loads a .safetensors state_dict (a run's saved network, a
user's checkpoint, timm's pretrained weights with `init_adapt=timm`) before the method starts,
refuses a file that does not fit naming the keys, never unpickles anything, and is recorded."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from prunebench import paths
from prunebench.data.prepared import DeviceData, load_prepared
from prunebench.errors import PrunebenchError
from prunebench.plan.config import TrainConfig, resolve
from prunebench.training.masking import prunable_layers, stored_weight
from prunebench.training.network import build_network, read_initial_weights
from prunebench.training.run import build_method, execute

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(digits_dir: Path, run_dir: Path, method: str, sparsity: float | None = None,
         **overrides: str) -> dict:
    cfg = resolve("digits", "conv4", method, sparsity, 0,
                  overrides={"device": "cpu", "data_dir": str(digits_dir), "epochs": "1",
                             **overrides})
    return execute(cfg, run_dir)


@pytest.fixture(scope="module")
def dense_run(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("dense") / "run"
    _run(digits_dir, run_dir, "dense", epochs="2")
    return run_dir


@pytest.mark.slow
def test_a_run_starts_from_a_dense_runs_network_and_records_it(digits_dir: Path, dense_run: Path,
                                                               tmp_path: Path) -> None:
    """dense with no epoch of its own from a dense run's network: the same network, the same
    accuracy; the path is the recorded setting, the file's sha256 beside it."""
    network = dense_run / paths.NETWORK
    metrics = _run(digits_dir, tmp_path / "again", "dense", epochs="0",
                   init_from=str(network))
    reference = json.loads((dense_run / paths.METRICS).read_text())
    assert metrics["test_top1"] == reference["test_top1"] > 50
    assert metrics["train_init_from"] == str(network)
    assert metrics["init_from_sha256"] == hashlib.sha256(network.read_bytes()).hexdigest()
    saved, original = load_file(tmp_path / "again" / paths.NETWORK), load_file(network)
    assert all(torch.equal(saved[k], v) for k, v in original.items())
    assert "init_from" in (tmp_path / "again" / paths.LOG).read_text()


def test_a_pruning_method_prunes_the_loaded_network(digits_dir: Path, dense_run: Path,
                                                    tmp_path: Path) -> None:
    """magnitude_init ranks the loaded (trained) weights: with no training its network is the
    dense run's, masked to the global top-K by |w|."""
    metrics = _run(digits_dir, tmp_path / "run", "magnitude_init", 0.5, epochs="0",
                   init_from=str(dense_run / paths.NETWORK))
    dense = load_file(dense_run / paths.NETWORK)
    pruned = load_file(tmp_path / "run" / paths.NETWORK)
    kept = 0
    for key, weight in pruned.items():
        nonzero = weight != 0
        assert torch.equal(weight[nonzero], dense[key][nonzero]), key
        kept += int(nonzero.sum())
    assert kept == metrics["kept_prunable"]


def _initial(path: Path, adapt: str = "none"):
    return read_initial_weights(TrainConfig(init_from=str(path), init_adapt=adapt))


def test_a_file_of_another_network_is_refused_naming_the_keys(dense_run: Path) -> None:
    """conv4's network into conv2 (two convolutions fewer, another classifier input)."""
    with pytest.raises(PrunebenchError) as e:
        build_network("conv2", 10, (1, 8, 8), _initial(dense_run / paths.NETWORK), "none")
    msg = str(e.value)
    assert "does not fit conv2 built for 10 classes and 1x8x8 images" in msg
    assert "2 unexpected: features.5.weight, features.7.weight" in msg
    assert "1 mis-shaped: classifier.1.weight (file 256x512, network 256x1024)" in msg
    assert "init_adapt=timm" in msg and "\n" not in msg


def test_a_missing_key_is_named(dense_run: Path, tmp_path: Path) -> None:
    state = load_file(dense_run / paths.NETWORK)
    del state["classifier.5.weight"]
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(PrunebenchError, match=r"1 missing: classifier\.5\.weight"):
        build_network("conv4", 10, (1, 8, 8), _initial(tmp_path / "partial.safetensors"), "none")


def test_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    """A crafted pickle under a .safetensors name is refused without running its code, and a
    .pt/.pth path is refused by the setting itself."""
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    crafted = tmp_path / "model.safetensors"
    crafted.write_bytes(pickle.dumps({"weight": Payload()}))
    with pytest.raises(PrunebenchError, match="is not a readable .safetensors file"):
        _initial(crafted)
    assert not marker.exists()
    with pytest.raises(PrunebenchError, match="must be a .safetensors file"):
        TrainConfig(init_from=str(tmp_path / "model.pth")).validate()
    with pytest.raises(PrunebenchError, match="no such file"):
        _initial(tmp_path / "absent.safetensors")


@pytest.fixture(scope="module")
def pretrained_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-in for timm's pretrained weights of test_vit: its ImageNet shape (3 channels, 1000
    classes, 160x160), as timm's model.safetensors holds them."""
    torch.manual_seed(1)
    model = timm.create_model("test_vit")
    path = tmp_path_factory.mktemp("pretrained") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def test_timm_pretrained_weights_are_adapted_by_timm(pretrained_vit: Path) -> None:
    """init_adapt=timm: timm's own filter resamples the position embeddings to 32x32 images and
    sums the patch embedding over RGB for one channel; the 1000-class head is replaced by the
    dataset's 10 classes; every other tensor is the file's."""
    state = load_file(pretrained_vit)
    torch.manual_seed(0)
    model = build_network("timm/test_vit", 10, (1, 32, 32), _initial(pretrained_vit, "timm"),
                          "none")
    own = model.state_dict()
    assert own["head.weight"].shape == (10, 64)
    assert own["pos_embed"].shape == (1, 5, 64)
    torch.testing.assert_close(own["patch_embed.proj.weight"],
                               state["patch_embed.proj.weight"].sum(dim=1, keepdim=True))
    same = [k for k in state if k.startswith("blocks.") or k in ("cls_token", "norm.weight")]
    assert len(same) > 50 and all(torch.equal(own[k], state[k]) for k in same)


def test_timm_pretrained_weights_without_adapt_say_how(pretrained_vit: Path) -> None:
    with pytest.raises(PrunebenchError) as e:
        build_network("timm/test_vit", 10, (1, 32, 32), _initial(pretrained_vit), "none")
    assert "head.weight (file 1000x64, network 10x64)" in str(e.value)
    assert "set init_adapt=timm" in str(e.value)


def test_timm_adapt_refuses_weights_of_another_model(pretrained_vit: Path) -> None:
    with pytest.raises(PrunebenchError) as e:
        build_network("timm/test_convnext", 10, (3, 32, 32), _initial(pretrained_vit, "timm"),
                      "none")
    assert "init_adapt=timm) does not fit timm model test_convnext" in str(e.value)


def test_init_adapt_timm_needs_a_timm_arch(pretrained_vit: Path) -> None:
    with pytest.raises(PrunebenchError, match="init_adapt=timm needs a timm/ arch"):
        resolve("digits", "conv4", "dense", None, 0,
                overrides={"init_from": str(pretrained_vit), "init_adapt": "timm"})


@pytest.mark.parametrize("method", ["gumbel", "supermask", "edgepopup"])
def test_frozen_weight_methods_refuse_to_discard_the_loaded_weights(
        method: str, digits_dir: Path, dense_run: Path, tmp_path: Path) -> None:
    """A frozen-weight method re-draws its random weights: with init_from it stops, naming the
    method, the model and the option; with keep_weights it learns its mask over the loaded
    network (weights untouched)."""
    sparsity = 0.5 if method == "edgepopup" else None
    network = str(dense_run / paths.NETWORK)
    with pytest.raises(PrunebenchError) as e:
        _run(digits_dir, tmp_path / "refused", method, sparsity, init_from=network)
    assert f"method {method} on conv4 re-draws" in str(e.value)
    assert "method.keep_weights=true" in str(e.value)
    cfg = resolve("digits", "conv4", method, sparsity, 0,
                  overrides={"device": "cpu", "data_dir": str(digits_dir), "init_from": network,
                             "method.keep_weights": "true"})
    data = DeviceData(load_prepared("digits", digits_dir), torch.device("cpu"), 0.1)
    model = build_network("conv4", 10, (1, 8, 8), read_initial_weights(cfg.train), "none")
    build_method(cfg, data, torch.device("cpu")).prepare(model)
    dense = load_file(network)
    for name, layer in prunable_layers(model):
        assert torch.equal(stored_weight(layer), dense[f"{name}.weight"]), name


@pytest.mark.parametrize(("override", "fragment"), [
    ({"init_from": "absent.safetensors"}, "init_from=absent.safetensors: no such file"),
    ({}, "has no model 'convnext_atoo' (close: timm/convnext_atto"),
])
def test_a_missing_start_stops_before_the_run_folder(override: dict, fragment: str,
                                                     digits_dir: Path, tmp_path: Path) -> None:
    """A timm name timm does not know and a missing init_from file stop the run as missing
    data does: before its folder exists."""
    arch = "conv4" if override else "timm/convnext_atoo"
    cfg = resolve("digits", arch, "dense", None, 0,
                  overrides={"device": "cpu", "data_dir": str(digits_dir), **override})
    with pytest.raises(PrunebenchError) as e:
        execute(cfg, tmp_path / "run")
    assert fragment in str(e.value) and not (tmp_path / "run").exists()
