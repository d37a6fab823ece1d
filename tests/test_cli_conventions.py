"""Command-line conventions: --version, every option's default in --help, and
`list --options METHOD` (a method's options with defaults and the help of their fields)."""
from __future__ import annotations

import dataclasses

import pytest

from prunebench import __version__, provenance
from prunebench.cli import main
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
