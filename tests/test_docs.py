"""The documentation cannot drift from the code: the site builds with warnings as errors, every
command the README and the docs show parses with the real parsers (prunebench's, Snakemake's),
every workflow config they show validates, and no file names what only the developers had."""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import cli_env

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
PYTHONS = ("python", "python3", ".venv/bin/python")


def doc_files() -> list[Path]:
    """The README and every page of the site (the engineers' notes in docs/notes are not)."""
    pages = [p for p in sorted(DOCS.rglob("*.md")) if "notes" not in p.relative_to(DOCS).parts]
    return [REPO / "README.md", *pages]


FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^\n]*)\n(?P<body>.*?)"
                   r"^(?P=indent)(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL)


def code_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(info string, body) of every fenced block, then every 4-space indented block."""
    for m in FENCE.finditer(text):
        body = "\n".join(line[len(m["indent"]):] for line in m["body"].splitlines())
        yield m["info"].strip(), body
    rest = FENCE.sub("", text)
    block: list[str] = []
    previous_blank = True
    for line in [*rest.splitlines(), ""]:
        if line.startswith("    ") and (block or previous_blank):
            block.append(line[4:])
        else:
            if block:
                yield "", "\n".join(block)
            block = []
        previous_blank = not line.strip()


def inline_spans(text: str) -> Iterator[str]:
    rest = FENCE.sub("", text)
    yield from re.findall(r"(?<!`)`([^`\n]+)`(?!`)", rest)


def command_lines(text: str) -> Iterator[str]:
    """Every shell line of the code blocks (continuations joined) and every inline span."""
    for info, body in code_blocks(text):
        if info and info.split()[0] not in ("bash", "sh", "shell", "console"):
            continue
        yield from body.replace("\\\n", " ").splitlines()
    yield from inline_spans(text)


def commands() -> list[tuple[str, str, list[str]]]:
    """(where, tool, argv) of every prunebench and snakemake command the docs show."""
    found = []
    for path in doc_files():
        for line in command_lines(path.read_text()):
            try:
                words = shlex.split(line.strip().removeprefix("$ "), comments=True)
            except ValueError:
                continue
            for op in ("&&", "||", "|", ";", ">", "2>&1"):
                words = words[:words.index(op)] if op in words else words
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words = words[1:]  # environment assignments before the command
            where = f"{path.relative_to(REPO)}: {line.strip()}"
            if len(words) > 3 and words[0] in PYTHONS and words[1:3] == ["-m", "prunebench"]:
                found.append((where, "prunebench", words[3:]))
            elif len(words) > 1 and words[0].split("/")[-1] == "prunebench":
                found.append((where, "prunebench", words[1:]))  # the bare name is prose
            elif words and words[0].split("/")[-1] == "snakemake":
                found.append((where, "snakemake", words[1:]))
    return found


COMMANDS = commands()


def test_the_docs_show_commands_of_both_tools() -> None:
    tools = {tool for _, tool, _ in COMMANDS}
    assert tools == {"prunebench", "snakemake"}
    readme = [argv for where, tool, argv in COMMANDS if where.startswith("README.md")]
    assert ["--configfile", "config/paper.yaml", "--cores", "all"] in readme


def _parse_prunebench(argv: list[str]) -> argparse.Namespace:
    """As `prunebench.cli.main` parses: flags, then key=value overrides anywhere after `run`;
    a `run` is also resolved, so every override must be a setting the run accepts."""
    from prunebench.cli import build_parser, run_config

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and args.command != "run"):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if args.command == "run":
        args.overrides = [*args.overrides, *extra]
        run_config(args)
    return args


@pytest.mark.parametrize("where,argv", [(w, a) for w, t, a in COMMANDS if t == "prunebench"],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_prunebench_commands_parse(where: str, argv: list[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["prunebench"])
    try:
        _parse_prunebench(argv)
    except SystemExit as e:
        assert not e.code, f"{where}: the parser refuses it (exit {e.code})"  # 0: --version


@pytest.mark.parametrize("where,argv", [(w, a) for w, t, a in COMMANDS if t == "snakemake"],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_snakemake_commands_parse(where: str, argv: list[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from snakemake.cli import parse_args, parse_config

    monkeypatch.chdir(REPO)
    try:
        _, args = parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: Snakemake refuses it (exit {e.code})")
    for configfile in args.configfile or []:
        path = REPO / configfile
        if path.parent == REPO / "config" and path.is_file():  # shipped, with its --config
            config = {**yaml.safe_load(path.read_text()), **parse_config(args.config or [])}
            _validate_config(config, where)


def _validate_config(config: dict, where: str) -> None:
    from prunebench.plan.grid import expand

    try:
        jsonschema.validate(config, SCHEMA)
    except jsonschema.ValidationError as e:
        pytest.fail(f"{where}: {e.message} at {'.'.join(map(str, e.absolute_path))}")
    expand(config)


def yaml_snippets() -> list[tuple[str, str]]:
    return [(f"{path.relative_to(REPO)} block {i}", body)
            for path in doc_files()
            for i, (info, body) in enumerate(code_blocks(path.read_text()))
            if info.split()[:1] == ["yaml"]]


@pytest.mark.parametrize("where,body", yaml_snippets(), ids=lambda v: v if " block " in v else None)
def test_yaml_snippets_are_valid(where: str, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snippet headed `# profiles/...` is a Snakemake profile: each key a Snakemake option;
    any other is a workflow config: it validates against config/schema.yaml and expands."""
    monkeypatch.chdir(REPO)
    data = yaml.safe_load(body)
    if body.lstrip().startswith("# profiles/"):
        from snakemake.cli import get_argument_parser

        known = {s.lstrip("-") for a in get_argument_parser()._actions for s in a.option_strings}
        assert set(data) <= known, f"{where}: not Snakemake options: {set(data) - known}"
    else:
        _validate_config(data, where)


def test_the_method_example_registers_and_keeps_exactly_k(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The example of docs/adding-a-method.md, run as written: it registers, its options are
    checked, and on a conv net it keeps exactly K = round((1 - s) N) weights."""
    import torch

    from prunebench.training import registry
    from prunebench.training.masking import budget_count, fold, num_prunable, prunable_layers
    from prunebench.training.method import MethodContext, TrainSettings
    from prunebench.training.models import create_model

    page = (DOCS / "adding-a-method.md").read_text()
    example = next(body for info, body in code_blocks(page) if info == "python")
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    module = types.ModuleType("mymethod")
    monkeypatch.setitem(sys.modules, "mymethod", module)
    exec(compile(example, "docs/adding-a-method.md", "exec"), module.__dict__)
    cls = registry.get_method("mymethod")
    assert registry.check_options("mymethod", {"power": 2.0}, "example") is True
    with pytest.raises(Exception, match="norm"):
        registry.check_options("mymethod", {"norm": "l2"}, "example")
    torch.manual_seed(0)
    model = create_model("conv2", 10, 3, 32)
    ctx = MethodContext(sparsity=0.9, num_classes=10, device=torch.device("cpu"), seed=0,
                        train=TrainSettings(1, 0.01, 0.9, 5e-4, "sgd"),
                        sample_batches=lambda *_: iter(()))
    method = cls(cls.hparams_cls(power=2.0), ctx)
    method.prepare(model)
    fold(model)
    kept = sum(int(m.weight.count_nonzero()) for _, m in prunable_layers(model))
    assert kept == budget_count(num_prunable(model), 0.9)


@pytest.mark.slow
def test_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """mkdocs build --strict: a broken link or anchor, a page missing from the navigation, an
    API name mkdocstrings cannot resolve or an unknown generated section fails it."""
    env = {**cli_env(), "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in ("reference/configuration", "reference/cli", "speed", "adding-a-method"):
        assert (tmp_path / "site" / page / "index.html").is_file()
    html = (tmp_path / "site" / "reference" / "configuration" / "index.html").read_text()
    assert "share_dense_phase" in html and "weight_decay_scope" in html  # generated, not typed


FORBIDDEN = ("METHODS" + ".md", ".." + "/shared", "shared" + "/data", "/work" + "/", "/root" + "/")


def test_no_file_names_what_only_the_developers_had() -> None:
    """Users have neither the developers' notes file nor their shared folder or machine."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    hits = []
    for name in filter(None, listed):
        path = REPO / name
        if not path.is_file() or path.suffix in (".png", ".pdf", ".pt", ".gz"):
            continue
        text = path.read_text(errors="replace")
        hits += [f"{name}: {word}" for word in FORBIDDEN if word in text]
    assert not hits, hits


def test_pages_the_code_cites_exist() -> None:
    """A comment, message or page citing `docs/<page>.md` names a page of the site."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    missing = []
    for name in filter(None, listed):
        path = REPO / name
        if path.is_file() and path.suffix in (".py", ".smk", ".md", ".yaml", ".yml", ".toml",
                                              ".txt", ".j2", ""):
            for cited in re.findall(r"\bdocs/[\w/.-]+\.md", path.read_text(errors="replace")):
                if not (REPO / cited).is_file():
                    missing.append(f"{name}: {cited}")
    assert not missing, missing


def test_readme_is_short_and_says_how_to_read_the_docs() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for needed in ("make run", "make test", "make docs", "site/index.html", "CITATION.cff",
                   "LICENSE"):
        assert needed in readme, needed
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in readme
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO / link).exists(), link

