"""MkDocs hook: the reference tables are generated from the code at build time, never copied.

A page line `<!-- generated: NAME [ARG ...] -->` is replaced by GENERATORS[NAME](*ARGS): the command
line from prunebench's argparse parser, the workflow config from config/schema.yaml, the training
settings from TrainConfig and recipe(), every method's options from its hparams dataclass, and the
benchmark tables from benchmarks/results/*.csv. An unknown name stops the build.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # document this checkout's code, not another installed copy

MARKER = re.compile(r"^<!-- generated: ([a-z-]+)((?: [a-z0-9_]+)*) -->$", re.MULTILINE)


def cell(text: Any) -> str:
    """A value as one Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip() or " "


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def code(text: Any) -> str:
    return f"`{text}`" if str(text) != "" else '`""`'


# --- command line -------------------------------------------------------------------------------

def cli_reference() -> str:
    """Each subcommand's `--help`, as the parser prints it."""
    from prunebench.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: a fixed width for the page
    sys.argv[0] = "prunebench"
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in commands._choices_actions}
    out = ["## prunebench", "", "```text", parser.format_help().rstrip(), "```"]
    for name, sub in commands.choices.items():
        out += ["", f"## {name}", "", helps.get(name) or "", "", "```text",
                sub.format_help().rstrip(), "```"]
    return "\n".join(out)


# --- workflow config ----------------------------------------------------------------------------

def _schema_type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return "one of " + ", ".join(code(v) for v in node["enum"])
    kind = node.get("type", "")
    limits = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                      ("exclusiveMaximum", "<")):
        if key in node:
            limits.append(f"{sign} {node[key]}")
    if "pattern" in node:
        limits.append(f"matching {code(node['pattern'])}")
    return " ".join([str(kind), *limits]).strip()


def _schema_rows(node: dict[str, Any], path: str, defs: dict[str, Any],
                 rows: list[tuple[str, str, str, str]]) -> None:
    """One row per key below `node`, depth first, `$ref`s followed."""
    if "$ref" in node:
        ref = defs[node["$ref"].rsplit("/", 1)[1]]
        node = {**ref, **{k: v for k, v in node.items() if k != "$ref"}}
    properties = node.get("properties", {})
    for key, child in properties.items():
        if "$ref" in child:
            child = {**defs[child["$ref"].rsplit("/", 1)[1]],
                     **{k: v for k, v in child.items() if k != "$ref"}}
        sub = f"{path}.{key}" if path else key
        kind = _schema_type(child)
        if child.get("type") == "array" and "items" in child:
            items = child["items"]
            if "$ref" in items:
                items = defs[items["$ref"].rsplit("/", 1)[1]]
            kind = f"list of {_schema_type(items) or 'entries'}"
        default = code(yaml.safe_dump(child["default"], default_flow_style=True).strip()
                       .removesuffix("...").strip()) if "default" in child else ""
        required = " (required)" if key in node.get("required", []) else ""
        rows.append((code(sub) + required, kind, default,
                     " ".join(str(child.get("description", "")).split())))
        if child.get("type") == "array" and isinstance(child.get("items"), dict):
            _schema_rows(child["items"], f"{sub}[]", defs, rows)
        elif "properties" in child:
            _schema_rows(child, sub, defs, rows)
        extra = child.get("additionalProperties")
        if isinstance(extra, dict) and ("properties" in extra or "$ref" in extra):
            _schema_rows(extra, f"{sub}.<name>", defs, rows)


def config_schema() -> str:
    """Every key of a workflow config, from config/schema.yaml."""
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    rows: list[tuple[str, str, str, str]] = []
    _schema_rows(schema, "", schema.get("$defs", {}), rows)
    return table(["key", "type", "default", "meaning"], rows)


# --- training settings and methods --------------------------------------------------------------

def _field_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return code(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return code(f.default_factory())
    return "(required)"


def _allowed(f: dataclasses.Field) -> str:
    choices = f.metadata.get("choices") or ()
    bounds = f.metadata.get("bounds") or ""
    return ", ".join(code(c) for c in choices) if choices else (code(bounds) if bounds else "")


def _type_name(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _option_rows(cls: type) -> list[tuple[str, str, str, str, str]]:
    return [(code(f.name), _type_name(f), _field_default(f), _allowed(f),
             f.metadata.get("help", "")) for f in dataclasses.fields(cls)
            if "help" in f.metadata]


def train_options() -> str:
    """TrainConfig's fields: `key=value` on `prunebench run`, `train:` in a workflow config."""
    from prunebench.plan.config import TrainConfig

    return table(["setting", "type", "default", "allowed", "meaning"], _option_rows(TrainConfig))


def recipes() -> str:
    """What recipe() changes from TrainConfig's defaults, per dataset and architecture."""
    from prunebench.plan.config import ARCHS, DATASETS, recipe

    rows = []
    for dataset in DATASETS:
        for arch in ARCHS:
            changes = recipe(dataset, arch)
            rows.append((dataset, arch, ", ".join(f"{k}={v}" for k, v in changes.items())
                         or "(the defaults)"))
    return table(["dataset", "arch", "recipe"], rows)


def method_options(*names: str) -> str:
    """The named registered methods (default: every one): paper, budget rule and options."""
    from prunebench.training.registry import get_method, list_methods

    out = []
    for name in names or list_methods():
        cls = get_method(name)
        budget = ("prunes to a budget (`--sparsity`)" if cls.budgeted else
                  f"no budget unless `{cls.budget_option}` is on" if
                  getattr(cls, "budget_option", "") else "no budget (emergent sparsity)")
        out += [f"### `{name}` options" if names else f"### {name}", "",
                f"{cls.paper}. {budget[0].upper() + budget[1:]}.", ""]
        rows = _option_rows(cls.hparams_cls)
        out += [table(["option", "type", "default", "allowed", "meaning"], rows) if rows
                else "No options.", ""]
    return "\n".join(out).rstrip()


def method_looks() -> str:
    """Each method's colour, marker and role in every figure and table (reporting/style.py)."""
    from matplotlib.markers import MarkerStyle

    from prunebench.reporting.papers import PROPOSED
    from prunebench.reporting.style import CONTROLS, METHOD_COLORS

    roles = {**dict.fromkeys(PROPOSED, "proposed: thick lines, large markers"),
             **dict.fromkeys(CONTROLS, "control: thin, dashed, black or grey")}
    rows = [(code(name), f'<span style="color:{color}">&#9632;</span> `{color}`',
             MarkerStyle.markers[marker].replace("_", " "), roles.get(name, "baseline"))
            for name, (color, marker) in METHOD_COLORS.items()]
    return table(["method", "colour", "marker", "role"], rows)


# --- benchmarks ---------------------------------------------------------------------------------

MACHINE = ("device", "device_name", "cpu_count", "torch_threads", "torch_version",
           "python_version", "clock")
PROVENANCE = ("benchmark", "load_avg_1min", "mode", "run_id", "git_commit", "note", "status")
# Per CSV, the columns a reader compares (the file holds more: benchmarks/README.md).
SHOWN = {
    "data_path": ("case", "engine_images_per_s", "dataloader_images_per_s", "ratio",
                  "ratio_range", "target", "target_met", "engine_threads", "repeats"),
    "engine_changes": ("case", "arch", "method", "ratio", "ratio_range", "ratio_of",
                       "before_vs_dense", "after_vs_dense", "repeats"),
    "epoch_time": ("arch", "method", "batch_size", "dense_step_ms", "images_per_s",
                   "cifar10_epoch_s", "checkpoint_s", "ratio"),
    "gpu": ("benchmark", "case", "status"),
    "grid_cost": ("dataset", "arch", "method", "jobs", "epochs", "device_hours", "hours"),
    "inference": ("arch", "method", "density", "subnet_forward_ms", "dense_forward_ms", "ratio",
                  "ratio_range", "target_met"),
    "memory": ("arch", "method", "phase", "peak_mib", "ratio", "state_mib", "state_ratio"),
    "method_overhead": ("arch", "method", "phase", "method_step_ms", "dense_step_ms", "ratio",
                        "ratio_range", "target_met", "repeats"),
    "workflow": ("benchmark", "case", "wall_s", "cpu_s", "ratio", "ratio_of", "target",
                 "target_met"),
}


def _number(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.4g}" if not value.is_integer() or abs(value) >= 1e6 else str(int(value))


def benchmark_tables() -> str:
    """Each committed benchmark CSV: the machine and run it was measured on, then its rows."""
    out = []
    for path in sorted((REPO / "benchmarks" / "results").glob("*.csv")):
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        measured = [r for r in rows if r.get("status", "ok") == "ok"] or rows
        machines = sorted({tuple(r.get(k, "") for k in MACHINE) for r in measured})
        runs = sorted({(r.get("run_id", ""), r.get("git_commit", "")) for r in rows})
        loads = [float(r["load_avg_1min"]) for r in rows if r.get("load_avg_1min")]
        out += [f"### {path.name}", ""]
        for m in machines:
            out.append(f"Measured on: {m[1]} ({m[0]}), {m[2]} CPUs, {m[3]} torch thread(s), "
                       f"torch {m[4]}, Python {m[5]}; clock: {m[6] or 'see rows'}.")
        out.append("Run " + ", ".join(f"{run} (commit {commit})" for run, commit in runs)
                   + (f"; machine load (1-minute average) {min(loads):g}-{max(loads):g}."
                      if loads else "."))
        statuses = sorted({r.get("status", "") for r in rows} - {"ok", ""})
        if statuses:
            out.append("Rows not measured: " + "; ".join(statuses) + ".")
        columns = [c for c in SHOWN.get(path.stem, ()) if any(r.get(c) for r in rows)]
        columns = columns or [c for c in rows[0] if c not in MACHINE + PROVENANCE]
        out += ["", table(columns, ([_number(r.get(c, "")) for c in columns] for r in rows)),
                ""]
    return "\n".join(out).rstrip()


GENERATORS: dict[str, Callable[..., str]] = {
    "cli": cli_reference,
    "config-schema": config_schema,
    "train-options": train_options,
    "recipes": recipes,
    "method-options": method_options,
    "method-looks": method_looks,
    "benchmarks": benchmark_tables,
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace every generation marker of a page by its generated Markdown."""
    def generate(match: re.Match[str]) -> str:
        name, args = match.group(1), match.group(2).split()
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_path}: unknown generated section {name!r}; "
                              f"known: {', '.join(GENERATORS)}")
        try:
            return GENERATORS[name](*args)
        except Exception as e:  # the page names what failed, the build stops
            raise PluginError(f"{page.file.src_path}: generated section {name} "
                              f"{' '.join(args)}: {e}") from e

    return MARKER.sub(generate, markdown)
