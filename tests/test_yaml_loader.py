"""The suite's one YAML loader (issue 22, items 3 and 10): a duplicate key, an alias bomb, a
structure that contains itself and bytes that are not UTF-8 are each refused in one line naming
the file (and the line), by `run --config`, `coverage` and the workflow alike. Before, the last
duplicate won silently, a bomb was accepted (and exploded wherever the config was walked:
RunConfig.to_dict, Snakemake) and non-UTF-8 bytes ended in a UnicodeDecodeError traceback."""
from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from conftest import REPO
from faultlaunch import FIGURES, cli_refuses

from prunebench.errors import PrunebenchError
from prunebench.plan.config import load_config_file
from prunebench.plan.yamlfile import MAX_NODES, load_yaml


def bomb(kind: str, levels: int = 9) -> str:
    """A billion-laughs config: `levels` levels of ten aliases of the level below."""
    lines = ["grids: []", "aliases:", "  l0: &l0 " + ("{a: 1, b: 2}" if kind == "dict"
                                                      else "[1, 2]")]
    for i in range(1, levels + 1):
        refs = [f"k{j}: *l{i - 1}" if kind == "dict" else f"*l{i - 1}" for j in range(10)]
        lines.append(f"  l{i}: &l{i} " + ("{%s}" if kind == "dict" else "[%s]") % ", ".join(refs))
    return "\n".join(lines) + "\n"


# name -> (file bytes, fragments of the one-line error)
HOSTILE = {
    "duplicate top-level key": (b"train:\n  device: cpu\ntrain:\n  epochs: 1\n",
                                ["line 3", "duplicate key 'train' (first at line 1)"]),
    "duplicate nested key": (b"methods:\n  gumbel:\n    options: {tau: 1, tau: 2}\n",
                             ["line 3", "duplicate key 'tau'"]),
    "not UTF-8": (b"train:\n  device: cpu\ngrids:\n  - name: caf\xe9\n",
                  ["line 4", "not UTF-8"]),
    "UTF-16": ("train: {epochs: 1}\n".encode("utf-16"), ["line 1", "not UTF-8"]),
    "alias bomb of mappings": (bomb("dict").encode(), [f"more than {MAX_NODES} values"]),
    "alias bomb of lists": (bomb("list").encode(), [f"more than {MAX_NODES} values"]),
    "structure containing itself": (b"grids: []\naliases:\n  a: &a [1, *a]\n",
                                    ["line 3", "contains it"]),
    "nested too deeply": (b"train: " + b"[" * 5000 + b"]" * 5000 + b"\n",
                          ["line 1", "nested more than 64 levels deep"]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_yaml_is_refused_in_one_line(case: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    data, fragments = HOSTILE[case]
    path = tmp_path / "hostile.yaml"
    path.write_bytes(data)
    with pytest.raises(PrunebenchError) as e:
        load_config_file(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    out = tmp_path / "runs"
    cli_refuses(capsys, ["run", "--dataset", "digits", "--arch", "conv2", "--method", "dense",
                         "--config", str(path), "--out", str(out)], str(path), *fragments)
    cli_refuses(capsys, ["coverage", "--configfile", str(path)], str(path))
    assert not out.exists()
    FIGURES["hostile configs refused"] += 1


def test_ordinary_yaml_still_loads(tmp_path: Path) -> None:
    """Merge keys may override what they merge (that is their use), aliases may repeat, and
    every config the repository ships loads unchanged."""
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nthing:\n  <<: *b\n  x: 3\nboth: [*b, *b]\n")
    assert load_yaml(path) == {"base": {"x": 1, "y": 2}, "thing": {"x": 3, "y": 2},
                               "both": [{"x": 1, "y": 2}] * 2}
    import yaml

    for shipped in sorted((REPO / "config").glob("*.yaml")):
        assert load_yaml(shipped) == yaml.safe_load(shipped.read_text()), shipped


@pytest.mark.parametrize("case", ["duplicate top-level key", "alias bomb of lists"])
def test_the_workflow_refuses_them_before_the_schema(case: str, tmp_path: Path) -> None:
    """Snakemake parses a --configfile itself (keeping the last duplicate); the Snakefile then
    reads it with the suite's loader before validating it: one message naming the file."""
    from snakemake.api import SnakemakeApi
    from snakemake.exceptions import WorkflowError
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    workdir = tmp_path / "workflow"
    workdir.mkdir()
    for name in ("Snakefile", "rules", "config", "prunebench", "methods", "baselines"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, workdir / name)
    path = workdir / "config" / "hostile.yaml"
    path.write_bytes(HOSTILE[case][0])
    buf = io.StringIO()
    with pytest.raises(WorkflowError) as e, redirect_stderr(buf), redirect_stdout(buf), \
            SnakemakeApi(OutputSettings()) as api:
        api.workflow(ResourceSettings(cores=1), ConfigSettings(configfiles=[path]),
                     snakefile=workdir / "Snakefile", workdir=workdir).list_rules()
    message = str(e.value)
    assert str(path) in message and HOSTILE[case][1][-1] in message, message
    FIGURES["hostile configs refused"] += 1
