"""Values out of a setting's declared range (issue 22, items 8 and 9): each is refused in one line
naming the key, by `run` before any run folder exists, by `check-options` and by the workflow's
grid expansion alike, because all three read the one declaration beside the default and help
(`option(..., bounds=...)`). Before, each was accepted: some crashed after the run folder existed,
others finished "ok" with a meaningless setting."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from faultlaunch import FIGURES, cli_refuses

from prunebench.errors import PrunebenchError
from prunebench.plan.catalogue import method_catalogue
from prunebench.plan.config import RunConfig, TrainConfig, load_config_file
from prunebench.plan.grid import ConfigError, expand
from prunebench.plan.values import interval
from prunebench.training.registry import check_options, get_method

# (method, sparsity, option, value, what the message must hold)
METHOD_CASES = [
    ("gumbel", None, "logit_lr", "-50", "logit_lr=-50.0"),
    ("supermask", None, "lr", "-1", "lr=-1.0"),
    ("edgepopup", "0.5", "lr", "-1", "lr=-1.0"),
    ("magnitude_ft", "0.5", "ft_lr", "-1", "ft_lr=-1.0"),
    ("snip", "0.5", "score_batch_size", "0", "score_batch_size=0"),
    ("snip", "0.5", "samples_per_class", "-3", "samples_per_class=-3"),
    ("magnitude_ft", "0.5", "ft_epochs", "-1", "ft_epochs=-1"),
    ("reparam", "0.5", "lam", "-10", "lam=-10.0"),
    ("edgepopup", "0.5", "momentum", "-1", "momentum=-1.0"),
    ("gumbel", None, "logit_momentum", "1", "logit_momentum=1.0"),
]
# (train option, value, what the message must hold); digits images are 8x8
TRAIN_CASES = [
    ("crop_padding", "1000000000", "crop_padding=1000000000"),
    ("crop_padding", "50", "crop_padding=50"),
    ("momentum", "1.5", "momentum=1.5"),
    ("val_fraction", "0.9999", "val_fraction=0.9999"),  # only the data can judge these two
    ("val_fraction", "0.001 selection=val", "holds out no image"),
]


def run_argv(method: str, sparsity: str | None, data_dir: Path, out: Path,
             *extra: str) -> list[str]:
    argv = ["run", "--dataset", "digits", "--arch", "conv2", "--method", method, "--out",
            str(out), f"data_dir={data_dir}", "device=cpu", "epochs=1", *extra]
    return argv + (["--sparsity", sparsity] if sparsity else [])


@pytest.mark.parametrize("method,sparsity,name,value,fragment", METHOD_CASES)
def test_out_of_range_method_option_is_refused_everywhere(
        method: str, sparsity: str | None, name: str, value: str, fragment: str,
        digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    cli_refuses(capsys, run_argv(method, sparsity, digits_dir, out, f"method.{name}={value}"),
                fragment, "out of range; allowed:")
    assert not out.exists()
    with pytest.raises(PrunebenchError, match=f"method options of {method}.*{name}"):
        check_options(method, {name: float(value)}, f"method options of {method}")
    config = workflow_config(method, sparsity)
    config["methods"] = {method: {"options": {name: float(value)}}}
    with pytest.raises(PrunebenchError, match=f"config methods.{method}.options.{name}="):
        expand(config)
    FIGURES["out-of-range values refused"] += 1


@pytest.mark.parametrize("name,value,fragment", TRAIN_CASES)
def test_out_of_range_train_option_is_refused_before_the_run_folder(
        name: str, value: str, fragment: str, digits_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    cli_refuses(capsys, run_argv("dense", None, digits_dir, out, *f"{name}={value}".split()),
                fragment)
    assert not out.exists()
    if name != "val_fraction":  # the workflow knows digits' image size, not its class sizes
        config = workflow_config("dense", None)
        config["train"] = {name: float(value)}
        with pytest.raises(ConfigError, match=name):
            expand(config)
    FIGURES["out-of-range values refused"] += 1


def test_seed_beyond_what_the_generators_take(digits_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    cli_refuses(capsys, run_argv("dense", None, digits_dir, out, "--seed",
                                 "18446744073709551616"),
                "seed=18446744073709551616 is out of range; allowed: in [0, 4294967295]")
    assert not out.exists()
    config = workflow_config("dense", None)
    config["grids"][0]["seeds"] = [0, 2**64]
    with pytest.raises(ConfigError, match=r"grids\[0\].seeds"):
        expand(config)
    FIGURES["out-of-range values refused"] += 1


@pytest.mark.parametrize("fraction", ["nan", "inf", "-0.5", "1", "2", "0.9999"])
def test_prepare_checks_the_validation_fraction(fraction: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """0.9999 leaves digits' classes without a training image."""
    data = tmp_path / "data"
    cli_refuses(capsys, ["prepare", "--dataset", "digits", "--data-dir", str(data),
                         "--val-fraction", fraction], "fraction=")
    assert not list(data.glob("digits.*"))
    FIGURES["out-of-range values refused"] += 1


def test_a_list_where_text_is_expected_names_the_key(digits_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"methods": {"magnitude": {"options": {
        "dense_from": ["a", "b"]}}}}))
    out = tmp_path / "runs"
    cli_refuses(capsys, run_argv("magnitude", "0.5", digits_dir, out, "--config", str(config)),
                "dense_from: ['a', 'b'] is not a valid str")
    assert not out.exists()
    FIGURES["out-of-range values refused"] += 1


def workflow_config(method: str, sparsity: str | None) -> dict[str, Any]:
    config = load_config_file(REPO / "config" / "config.yaml")
    config["methods"] = {}
    config["grids"] = [{"datasets": ["digits"], "archs": ["conv2"], "methods": [method],
                        "sparsities": [float(sparsity)] if sparsity else [], "seeds": [0]}]
    return config


def numeric(f: dataclasses.Field) -> bool:
    return any(t in str(f.type) for t in ("int", "float")) and "bool" not in str(f.type)


def test_every_numeric_setting_declares_its_range() -> None:
    """A new option or train key cannot skip the declaration: every number has `bounds`
    ("(-inf, inf)" when any finite value means something), and each default lies inside."""
    settings = [("TrainConfig", f, f.default) for f in dataclasses.fields(TrainConfig)]
    settings += [("RunConfig", f, None) for f in dataclasses.fields(RunConfig)
                 if f.name in ("seed", "sparsity")]
    for name in method_catalogue():
        settings += [(name, f, f.default) for f in dataclasses.fields(get_method(name).hparams_cls)]
    for owner, f, default in settings:
        if not numeric(f):
            continue
        bounds = f.metadata.get("bounds", "")
        assert bounds, f"{owner}.{f.name} declares no bounds"
        if default is not None and not (isinstance(default, float) and math.isnan(default)):
            assert default in interval(bounds), f"{owner}.{f.name}: default outside {bounds}"


def test_check_options_prints_ok_only_for_values_in_range(capsys) -> None:
    from prunebench.cli import main

    bad = {"snip": {"method": "snip", "options": {"score_batch_size": 0}, "budgeted": True}}
    assert main(["check-options", json.dumps(bad)]) == 1
    assert "ok" not in capsys.readouterr().out
