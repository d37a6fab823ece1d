"""Command-line conventions: --version, every option's default in --help, and
`list --options METHOD` (a method's options with defaults and the help of their fields)."""
from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from prunebench import __version__, paths, provenance
from prunebench.cli import build_parser, main
from prunebench.training.registry import get_method


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version: the version and where the code comes from (provenance.describe)."""
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == provenance.current().line()
    assert provenance.current().line().startswith(f"prunebench {__version__}, ")


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "(default: 0)" in out and "(default: results/runs)" in out
    assert "(default: None)" not in out and "(default: )" not in out


@pytest.mark.parametrize("method", ["gumbel", "reparam", "supermask"])
def test_list_options_prints_every_option_with_its_default(
        capsys: pytest.CaptureFixture[str], method: str) -> None:
    assert main(["list", "--options", method]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{method} (")
    fields = dataclasses.fields(get_method(method).hparams_cls)
    assert len(lines) == 1 + len(fields)
    for f, line in zip(fields, lines[1:], strict=True):
        assert line.split()[0] == f.name and f"  {f.default}" in line, line
        assert f.metadata["help"] and f.metadata["help"] in line, line  # every option has help
        if f.metadata["choices"]:
            assert line.endswith(f"(one of: {', '.join(f.metadata['choices'])})"), line


def test_list_options_of_unknown_method(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["list", "--options", "nope"])
    assert e.value.code == 2
    assert "unknown method 'nope'; registered methods: " in capsys.readouterr().err


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_subcommand_has_a_description_and_every_option_help() -> None:
    for name, sub in _subparsers().items():
        assert sub.description and len(sub.description) > 40, name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_one_config_flag_everywhere_with_a_hidden_alias(
        capsys: pytest.CaptureFixture[str]) -> None:
    """--configfile on run, report and coverage (as Snakemake names it); --config is accepted
    and means the same, but --help does not show it."""
    subs = _subparsers()
    for name in ("run", "report", "coverage"):
        text = subs[name].format_help()
        assert "--configfile YAML" in text and "--config " not in text, name
        assert subs[name].parse_args(_required(name) + ["--config", "x.yaml"]).configfile == (
            "x.yaml")
        assert subs[name].parse_args(_required(name) + ["--configfile", "y.yaml"]).configfile \
            == "y.yaml"
    assert not [n for n, s in subs.items() if n not in ("run", "report", "coverage")
                and "--config" in s.format_help()]


def _required(name: str) -> list[str]:
    return (["--dataset", "digits", "--arch", "conv4", "--method", "dense"] if name == "run"
            else [])


def test_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code in paths.EXIT_CODES:
        assert re.search(rf"^ +{code}  \S", out, re.M), code
