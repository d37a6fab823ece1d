"""The LaTeX report: render the packaged `report/templates/report.tex.j2` with the aggregated
results, then build `report.pdf` with latexmk.

Every number comes from summary.csv / summary_by_setting.csv (and so from the runs); user strings
(method names, reasons, published settings) are LaTeX-escaped by default, and only fragments
built here from numbers are marked safe.
"""
from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

from prunebench import paths, provenance, resources
from prunebench.errors import PrunebenchError
from prunebench.fileio import write_text
from prunebench.paths import budget_text
from prunebench.reporting.aggregate import STATUSES, SUMMARY, SUMMARY_BY_SETTING, load_summary
from prunebench.reporting.papers import (
    NO_BUDGET,
    PAPER_FIGURES,
    PAPERS,
    PROPOSED,
    budget_label,
    method_label,
)
from prunebench.reporting.published import MATCHED, compare_published, load_published
from prunebench.reporting.statistics import paired_differences
from prunebench.reporting.style import Look, results_looks

TEMPLATE = "report.tex.j2"
TEXT_WIDTH_IN = 6.7  # A4 with 2 cm margins: a figure this wide (before cropping) fills the line
INSTALL_HINT = ("install one with `apt-get install texlive-latex-recommended latexmk` (Debian/"
                "Ubuntu; `make run` does this on Debian) or use a TeX Live/MiKTeX distribution")
LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "±": r"$\pm$",
}
_SPECIAL_RE = re.compile("|".join(re.escape(c) for c in LATEX_SPECIAL))


def latex_escape(text: Any) -> str:
    """Plain text -> LaTeX source that prints it literally."""
    return _SPECIAL_RE.sub(lambda m: LATEX_SPECIAL[m.group()], str(text))


def _finalize(value: Any) -> Any:
    if isinstance(value, Markup):
        return str(value)
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "--"
    return latex_escape(value)


def make_env(templates: Path | None = None) -> jinja2.Environment:
    """Jinja with delimiters that do not clash with LaTeX braces: \\VAR{x}, \\BLOCK{...},
    `%% for ...` line statements, `%#` line comments; every value escaped unless Markup."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates or resources.path(resources.TEMPLATES))),
        block_start_string=r"\BLOCK{", block_end_string="}",
        variable_start_string=r"\VAR{", variable_end_string="}",
        comment_start_string=r"\#{", comment_end_string="}",
        line_statement_prefix="%%", line_comment_prefix="%#",
        trim_blocks=True, lstrip_blocks=True, autoescape=False, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, finalize=_finalize)


def num(value: Any, digits: int = 2) -> Markup | None:
    """A number with fixed decimals, or None (printed as --) when missing."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(v) else Markup(f"{v:.{digits}f}")


def mean_std(mean: Any, std: Any, digits: int = 2) -> Markup | None:
    m, s = num(mean, digits), num(std, digits)
    if m is None:
        return None
    return Markup(f"{m} $\\pm$ {s}") if s is not None else m


def signed(value: Any, digits: int = 2) -> Markup | None:
    m = num(value, digits)
    if m is None:
        return None
    return Markup(f"{float(value):+.{digits}f}")


def breakable(text: str) -> Markup:
    """Plain text that may break after a slash: a long value (a run folder in a method option)
    stays inside its table column."""
    return Markup(latex_escape(text).replace("/", r"/\allowbreak{}"))


def path_text(text: str) -> Markup:
    """A run folder in typewriter, breakable after each slash."""
    return Markup(r"\texttt{" + latex_escape(text).replace("/", r"/\allowbreak{}") + "}")


def colour_key(styles: dict[str, Look], method: str, variant: str = "") -> Markup:
    """The method's colour as in the figures, a square before its name in every table: filled
    for the method's own settings, outlined for a variant (macros of the template)."""
    look = styles.get(method_label(method, variant))
    if look is None:
        return Markup("")
    macro = r"\vkey" if variant else r"\mkey"
    return Markup(f"{macro}{{{look.color.lstrip('#').upper()}}}")


def _sorted_budgets(values: pd.Series) -> list[float]:
    budgets = sorted({float(v) for v in values.dropna()})
    return ([float("nan")] if values.isna().any() else []) + budgets


def _same(a: Any, b: Any) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def _cell(row: pd.Series | None) -> Markup | None:
    """`mean ± std (n)` for the results tables; achieved sparsity for settings without budget."""
    if row is None:
        return None
    count = f"{int(row['n'])}"
    if row["n_failed"]:
        count += f", {int(row['n_failed'])} failed"
    if row["n_incomplete"]:
        count += f", {int(row['n_incomplete'])} unfinished"
    if row["n"] == 0:
        return Markup(r"\textit{no result} {\scriptsize(" + count + ")}")
    text = str(mean_std(row["test_top1_pct_mean"], row["test_top1_pct_std"]))
    if pd.isna(row["sparsity_target"]) and not pd.isna(row["sparsity_achieved_mean"]):
        text += f" {{\\scriptsize at {float(row['sparsity_achieved_mean']):.3f}}}"
    return Markup(text + r" {\scriptsize(" + count + ")}")


def results_tables(settings: pd.DataFrame, styles: dict[str, Look]) -> list[dict[str, Any]]:
    """Per dataset/arch: rows = method, columns = budget, cells = test top-1 mean ± std (n)."""
    tables = []
    for (dataset, arch), group in settings.groupby(["dataset", "arch"], sort=True):
        budgets = _sorted_budgets(group["sparsity_target"])
        rows = []
        for (method, variant), mgroup in group.groupby(["method", "variant"], sort=True):
            cells = []
            for b in budgets:
                hit = mgroup[[_same(s, b) for s in mgroup["sparsity_target"]]]
                cells.append(_cell(hit.iloc[0] if len(hit) else None))
            local = any(_local(o) for o in mgroup["data_origin"])
            rows.append({"method": method_label(method, variant), "cells": cells,
                         "key": colour_key(styles, method, variant),
                         "local": LOCAL_MARK if local else ""})
        tables.append({"dataset": dataset, "arch": arch, "rows": rows,
                       "budgets": [budget_label(b) for b in budgets]})
    return tables


def setting_rows(settings: pd.DataFrame, styles: dict[str, Look]) -> list[dict[str, Any]]:
    """Every row of summary_by_setting.csv, formatted."""
    rows = []
    for _, r in settings.iterrows():
        macs = r["macs_effective_mean"] / r["macs_dense_mean"] * 100
        rows.append({
            "dataset": r["dataset"], "arch": r["arch"],
            "method": method_label(r["method"], r["variant"]),
            "key": colour_key(styles, r["method"], r["variant"]),
            "local": LOCAL_MARK if _local(r["data_origin"]) else "",
            "target": budget_text(r["sparsity_target"], NO_BUDGET),
            "n": int(r["n"]), "n_failed": int(r["n_failed"]),
            "n_other": int(r["n_incomplete"]) + int(r["n_excluded"]),
            "top1": mean_std(r["test_top1_pct_mean"], r["test_top1_pct_std"]),
            "top5": mean_std(r["test_top5_pct_mean"], r["test_top5_pct_std"]),
            "sparsity": mean_std(r["sparsity_achieved_mean"], r["sparsity_achieved_std"], 4),
            "macs": num(macs, 1),
            "collapsed": num(r["num_layers_collapsed_mean"], 1),
            "seconds": num(r["train_seconds_mean"], 0),
        })
    return rows


LOCAL_MARK = Markup(r"$^\dagger$")  # a setting whose runs read a local copy of the dataset


def _local(origin: Any) -> bool:
    return "local" in str(origin).split(" / ")


def local_note(settings: pd.DataFrame) -> str:
    """Where the runs marked with a dagger read their data from (empty when none did)."""
    local = settings[[_local(o) for o in settings["data_origin"]]]
    sources = sorted({s for text in local["data_source"] for s in str(text).split(" / ") if s})
    if local.empty:
        return ""
    return ("read their dataset from a local copy (" + "; ".join(sources or ["source not "
            "recorded"]) + ") instead of the official download; they are still compared with "
            "the dataset's published rows")


def comparison_rows(matched: pd.DataFrame, styles: dict[str, Look]) -> list[dict[str, Any]]:
    rows = []
    for _, r in matched.iterrows():
        rows.append({
            "dataset": r["dataset"], "arch": r["arch"],
            "method": method_label(r["method"], r["variant"]),
            "key": colour_key(styles, r["method"], r["variant"]),
            "local": LOCAL_MARK if _local(r["data_origin"]) else "",
            "sparsity": budget_text(r["sparsity"], "n.r."),
            "achieved": num(r["ours_sparsity_achieved_mean"], 3),
            "source": r["source"], "setting": r["setting"], "protocol": r["protocol"] or "--",
            "published": num(r["published_top1_pct"]),
            "ours": mean_std(r["ours_top1_pct_mean"], r["ours_top1_pct_std"]),
            "n": int(r["n"]), "difference": signed(r["difference_pct"]),
        })
    return rows


def _unique(series: pd.Series) -> str:
    values = [v for v in series.dropna().unique().tolist() if str(v) != ""]
    return " / ".join(sorted(_plain(v) for v in values)) if values else "--"


def _plain(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def recipe_rows(runs: pd.DataFrame, styles: dict[str, Look]) -> list[dict[str, Any]]:
    """Training recipe per dataset/arch/method, as recorded in the runs."""
    cols = ["train_epochs", "train_batch_size", "train_optimizer", "train_lr",
            "train_weight_decay", "train_schedule", "train_selection"]
    rows = []
    for (dataset, arch, method, variant), g in runs.groupby(
            ["dataset", "arch", "method", "variant"], sort=True):
        row = {"dataset": dataset, "arch": arch, "method": method_label(method, variant),
               "key": colour_key(styles, method, variant)}
        row.update({c.removeprefix("train_"): _unique(g[c]) if c in g else "--" for c in cols})
        hp = [c for c in g.columns if c.startswith("hp_") and g[c].notna().any()]
        row["options"] = breakable(", ".join(f"{c.removeprefix('hp_')}={_unique(g[c])}"
                                             for c in hp) or "--")
        rows.append(row)
    return rows


ENV_COLS = ["device", "device_name", "torch_version", "timm_version", "python_version",
            "prunebench_version", "git_commit"]


def _flag(value: Any) -> bool | None:
    """A run's recorded git_dirty as read back from summary.csv (bool, text or missing)."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return None
    return str(value).strip().lower() in ("true", "1")


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def run_provenance(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Each distinct code provenance the finished runs recorded (version, commit, uncommitted
    changes), as a sentence with its number of runs."""
    ok = runs[runs["status"] == "ok"]
    counts: dict[str, int] = {}
    for _, r in ok.iterrows():
        line = provenance.describe(_text(r.get("prunebench_version")) or "(not recorded)",
                                   _text(r.get("git_commit")), _flag(r.get("git_dirty")),
                                   _text(r.get("git_diff_sha256")))
        counts[line] = counts.get(line, 0) + 1
    return [{"text": text, "runs": n} for text, n in sorted(counts.items())]


def environment_rows(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Each distinct hardware/software combination the finished runs recorded, with a count."""
    ok = runs[runs["status"] == "ok"]
    cols = [c for c in ENV_COLS if c in ok]
    if ok.empty or not cols:
        return []
    counts = ok[cols].astype(str).value_counts(dropna=False).reset_index(name="runs")
    rows = []
    for _, r in counts.iterrows():
        row = {c: r[c] for c in cols}
        if "git_commit" in row:
            row["git_commit"] = row["git_commit"][:12] if row["git_commit"] not in (
                "", "nan") else "(installed)"
        row["runs"] = int(r["runs"])
        rows.append(row)
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _figures(results: Path, out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Copy the manifest's PDFs beside the report; return (figures, notes). A paper figure's
    entries carry its `source`; the others have source ""."""
    manifest_path = results / paths.FIGURES / paths.MANIFEST
    if not manifest_path.is_file():
        return [], [{"source": "", "text": f"No figures: {manifest_path} does not exist (run "
                     "`python -m prunebench figures` first)."}]
    manifest = json.loads(manifest_path.read_text())
    figures, notes = [], []
    dest = out_dir / paths.FIGURES
    dest.mkdir(parents=True, exist_ok=True)
    listed = {entry["pdf"] for entry in manifest.get("figures", [])}
    for old in dest.glob("*.pdf"):
        if old.name not in listed:
            old.unlink()
    for entry in manifest.get("figures", []):
        src = manifest_path.parent / entry["pdf"]
        source = entry.get("source", "")
        if not re.fullmatch(r"[A-Za-z0-9._-]+\.pdf", entry["pdf"]):
            notes.append({"source": source, "text": f"Figure {entry['pdf']} has a file name "
                          "LaTeX cannot include."})
            continue
        if not src.is_file():
            notes.append({"source": source, "text": f"Figure {entry['pdf']} is listed in the "
                          "manifest but missing."})
            continue
        shutil.copyfile(src, dest / src.name)
        scale = min(1.0, float(entry.get("width_in", TEXT_WIDTH_IN)) / TEXT_WIDTH_IN)
        figures.append({"path": Markup(f"{paths.FIGURES}/{src.name}"), "caption": entry["caption"],
                        "width": Markup(f"{scale:.2f}"), "source": source,
                        "kind": entry.get("kind", ""),
                        "label": Markup("fig:" + re.sub(r"[^A-Za-z0-9]+", "-", entry["name"]))})
    for entry in manifest.get("skipped", []):
        where = " / ".join(entry[k] for k in ("dataset", "arch") if k in entry)
        notes.append({"source": entry.get("source", ""), "text": (
            f"Figure {entry['kind']}{' for ' + where if where else ''} skipped: "
            f"{entry['reason']}.")})
    return figures, notes


def uncovered_rows(compared: pd.DataFrame, settings: pd.DataFrame, styles: dict[str, Look]
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """Published rows not compared with a number of ours, and why: one by one where we have
    finished runs of that dataset and arch, else counted per dataset/arch (e.g. a digits-only
    grid leaves every published row uncovered)."""
    run_here = {(d, a) for d, a in zip(settings.loc[settings["n"] > 0, "dataset"],
                                       settings.loc[settings["n"] > 0, "arch"], strict=True)}
    missing = compared[compared["match"] != MATCHED]
    here = [(d, a) in run_here for d, a in zip(missing["dataset"], missing["arch"], strict=True)]
    rows = []
    for _, r in missing[here].iterrows():
        rows.append({"dataset": r["dataset"], "arch": r["arch"],
                     "method": method_label(r["method"], r["variant"]),
                     "key": colour_key(styles, r["method"], r["variant"]),
                     "sparsity": budget_text(r["sparsity"], "n.r."),
                     "source": r["source"], "published": num(r["published_top1_pct"]),
                     "why": f"{r['match']}: {r['match_reason']}"})
    elsewhere = missing[[not h for h in here]].groupby(["dataset", "arch"], sort=True).size()
    return rows, [f"{d} / {a} ({k})" for (d, a), k in elsewhere.items()]


def _at_budget(r: pd.Series) -> str:
    """` at 0.5` when the baseline's budget differs from the proposed setting's."""
    if _same(r["baseline_sparsity_target"], r["sparsity_target"]):
        return ""
    return f" at {budget_text(r['baseline_sparsity_target'], NO_BUDGET)}"


def paired_rows(pairs: pd.DataFrame, styles: dict[str, Look]) -> list[dict[str, Any]]:
    """The paired-difference table: proposed method vs best baseline, by seed."""
    rows = []
    for _, r in pairs.iterrows():
        interval = (Markup(f"[{float(r['ci_low_pct']):+.2f}, {float(r['ci_high_pct']):+.2f}]")
                    if not pd.isna(r["ci_low_pct"]) else None)
        rows.append({"dataset": r["dataset"], "arch": r["arch"],
                     "budget": budget_text(r["sparsity_target"], NO_BUDGET),
                     "method": method_label(r["method"], r["variant"]),
                     "key": colour_key(styles, r["method"], r["variant"]),
                     "baseline_key": (colour_key(styles, r["baseline_method"],
                                                 r["baseline_variant"])
                                      if r["baseline_method"] else ""),
                     "baseline": (method_label(r["baseline_method"], r["baseline_variant"])
                                  + _at_budget(r) if r["baseline_method"] else None),
                     "n": int(r["n"]), "mean": signed(r["mean_difference_pct"]),
                     "interval": interval, "verdict": r["verdict"]})
    return rows


def data_rows(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Each dataset source the runs recorded (origin, source text, checksum), with a count."""
    cols = ["dataset", "data_origin", "data_source", "data_source_sha256"]
    if "data_origin" not in runs:
        return []
    ok = runs[runs["status"] == "ok"].reindex(columns=cols).fillna("").astype(str)
    counts = ok.value_counts().reset_index(name="runs").sort_values(cols)
    return [{"dataset": r["dataset"], "origin": r["data_origin"] or "not recorded",
             "source": r["data_source"] or "--", "sha256": r["data_source_sha256"][:16] or "--",
             "runs": int(r["runs"])} for _, r in counts.iterrows()]


def _paper_table_row(r: pd.Series, styles: dict[str, Look]) -> dict[str, Any]:
    ours = mean_std(r["ours_top1_pct_mean"], r["ours_top1_pct_std"], 1)
    return {"arch": r["arch"], "method": method_label(r["method"], r["variant"]),
            "key": colour_key(styles, r["method"], r["variant"]),
            "local": LOCAL_MARK if _local(r["data_origin"]) else "", "setting": r["setting"],
            "published": num(r["published_top1_pct"], 1),
            "ours": Markup(f"{ours} ({int(r['n'])})") if r["n"] > 0 else "not reproduced",
            "difference": signed(r["difference_pct"], 1)}


def paper_sections(compared: pd.DataFrame, figures: list[dict[str, Any]],
                   notes: list[dict[str, str]], styles: dict[str, Look]) -> list[dict[str, Any]]:
    """One section per reproduced paper: its redrawn figures, skipped ones and its tables."""
    sections = []
    for source, title in PAPERS.items():
        tables = []
        for spec in PAPER_FIGURES:
            if spec.source != source or spec.kind != "table":
                continue
            rows = compared[(compared["source"] == source)
                            & compared["dataset"].isin(spec.datasets)].sort_values(
                                "published_row")
            for dataset, group in rows.groupby("dataset", sort=False):
                if not (group["n"] > 0).any():
                    continue  # listed among the skipped figures as not reproduced
                tables.append({"dataset": dataset,
                               "rows": [_paper_table_row(r, styles)
                                        for _, r in group.iterrows()]})
        sections.append({"source": source, "title": title, "tables": tables,
                         "n_published": int((compared["source"] == source).sum()),
                         "figures": [f for f in figures if f["source"] == source
                                     and f["kind"] != "paper_table"],
                         "notes": [n["text"] for n in notes if n["source"] == source]})
    return sections


def _versions() -> dict[str, str]:
    import matplotlib
    import seaborn

    return {"python": platform.python_version(), "prunebench": provenance.current().version,
            "pandas": pd.__version__, "seaborn": seaborn.__version__,
            "matplotlib": matplotlib.__version__, "jinja2": jinja2.__version__}


def build_context(results: Path, published_path: Path, config_path: Path | None,
                  out_dir: Path) -> dict[str, Any]:
    runs, settings = load_summary(results)
    published = load_published(published_path)
    compared = compare_published(settings, published)
    matched = compared[compared["match"] == MATCHED]
    figures, figure_notes = _figures(results, out_dir)
    styles = results_looks(runs, published)
    uncovered, uncovered_elsewhere = uncovered_rows(compared, settings, styles)
    not_ok = runs[runs["status"] != "ok"]
    status_counts = runs["status"].value_counts()
    config_text = None
    if config_path is not None:
        raw = config_path.read_bytes()
        write_text(out_dir / "workflow_config.yaml", raw.decode("utf-8", errors="replace"))
        text = raw.decode("utf-8", errors="replace")
        ascii_text = text.encode("ascii", errors="replace").decode("ascii")
        write_text(out_dir / "workflow_config_listing.yaml", ascii_text)
        config_text = {"path": str(config_path), "sha256": _sha256(config_path),
                       "non_ascii": ascii_text != text}
    seeds = sorted({int(s) for s in runs["seed"].dropna()})
    methods = []
    for method, g in runs.groupby("method", sort=True):
        paper = g["paper"].dropna() if "paper" in g else pd.Series(dtype=str)
        methods.append({"name": method, "paper": paper.iloc[0] if len(paper) else "--",
                        "key": colour_key(styles, method)})
    return {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "results_dir": str(results),
        "n_runs": len(runs),
        "status_counts": [f"{int(status_counts[s])} {s}" for s in STATUSES
                          if status_counts.get(s, 0)],
        "datasets": sorted(runs["dataset"].dropna().unique()),
        "archs": sorted(runs["arch"].dropna().unique()),
        "methods": methods,
        "budgets": [budget_text(b, NO_BUDGET)
                    for b in _sorted_budgets(runs["sparsity_target"])],
        "seeds": seeds,
        "recipe": recipe_rows(runs, styles),
        "environment": environment_rows(runs),
        "results_tables": results_tables(settings, styles),
        "settings": setting_rows(settings, styles),
        "comparison": comparison_rows(matched, styles),
        "uncovered": uncovered,
        "uncovered_elsewhere": uncovered_elsewhere,
        "n_uncovered": int((compared["match"] != MATCHED).sum()),
        "local_note": local_note(settings),
        "local_mark": LOCAL_MARK,
        "data_sources": data_rows(runs),
        "paired": paired_rows(paired_differences(runs, settings, PROPOSED), styles),
        "proposed": list(PROPOSED),
        "papers": paper_sections(compared, figures, figure_notes, styles),
        "published_total": len(published),
        "published_matched": len(matched),
        "published_path": str(published_path),
        "published_sha256": _sha256(published_path),
        "figures": [f for f in figures if not f["source"]],
        "figure_notes": [n["text"] for n in figure_notes if not n["source"]],
        "not_ok": [{"run": path_text(r["run_id"]), "status": r["status"],
                    "reason": str(r["reason"]) if not pd.isna(r["reason"]) else ""}
                   for _, r in not_ok.iterrows()],
        "all_runs": [{"run": path_text(r["run_id"]), "status": r["status"],
                      "top1": num(r.get("test_top1_pct")),
                      "sparsity": num(r.get("sparsity_achieved"), 4),
                      "epochs": _plain(r.get("epochs_run")) if not pd.isna(
                          r.get("epochs_run")) else None,
                      "seconds": num(r.get("train_seconds"), 0),
                      "device": r.get("device")}
                     for _, r in runs.iterrows()],
        "summary_sha256": _sha256(results / SUMMARY),
        "by_setting_sha256": _sha256(results / SUMMARY_BY_SETTING),
        "config": config_text,
        "versions": _versions(),
        "provenance": provenance.current().line(),
        "run_provenance": run_provenance(runs),
    }


def render(context: dict[str, Any], templates: Path | None = None) -> str:
    return make_env(templates).get_template(TEMPLATE).render(**context)


def build_pdf(tex: Path, timeout_s: int = 600) -> Path:
    """latexmk -pdf in a build/ folder beside `tex`; the PDF appears only when complete."""
    exe = shutil.which("latexmk")
    if exe is None:
        raise PrunebenchError(f"latexmk not found on PATH, so {tex} was written but no PDF was "
                              f"built; {INSTALL_HINT}")
    build = tex.parent / "build"
    cmd = [exe, "-pdf", "-interaction=nonstopmode", "-halt-on-error", f"-outdir={build.name}",
           tex.name]
    try:
        proc = subprocess.run(cmd, cwd=tex.parent, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise PrunebenchError(f"latexmk took longer than {timeout_s} s on {tex}") from None
    log = build / (tex.stem + ".log")
    built = build / (tex.stem + ".pdf")
    if proc.returncode != 0 or not built.is_file():
        first = _first_tex_error(log) or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PrunebenchError(f"latexmk failed on {tex} (exit {proc.returncode}): {first} "
                              f"(full log: {log})")
    pdf = tex.with_suffix(".pdf")
    built.replace(pdf)
    return pdf


def _first_tex_error(log: Path) -> str:
    if not log.is_file():
        return ""
    lines = log.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("!"):
            return " ".join(x.strip() for x in lines[i:i + 2])
    return ""


def build_report(results: str | Path, published: str | Path, config: str | Path | None,
                 out_dir: str | Path, pdf: bool = True) -> Path:
    """Write `<out>/report.tex` (always) and build `<out>/report.pdf` (unless pdf=False)."""
    results, published, out_dir = Path(results), Path(published), Path(out_dir)
    config_path = Path(config) if config else None
    if config_path is not None and not config_path.is_file():
        raise PrunebenchError(f"workflow config {config_path} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    old_pdf = out_dir / paths.REPORT_PDF
    old_pdf.unlink(missing_ok=True)
    tex = out_dir / paths.REPORT_TEX
    write_text(tex, render(build_context(results, published, config_path, out_dir)))
    return build_pdf(tex) if pdf else tex
