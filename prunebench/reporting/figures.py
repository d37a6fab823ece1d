"""Seaborn figures from the aggregated results, as PDF + PNG, listed with captions in
`manifest.json` (the report includes what the manifest lists).

Per dataset/arch: test accuracy vs sparsity (mean +- std over seeds, published points overlaid),
test accuracy vs effective MACs, training curves (history.csv) and per-layer density of the
extracted networks (layers.csv). Once: reproduced vs published accuracy, where settings match.
Per paper (papers.PAPER_FIGURES): its published figures and tables redrawn from the reproduced
runs. Every method is drawn in its fixed look (style.py).
"""
from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator  # noqa: E402

from prunebench import paths  # noqa: E402
from prunebench.fileio import atomic_write, write_json  # noqa: E402
from prunebench.reporting.aggregate import load_summary  # noqa: E402
from prunebench.reporting.papers import (  # noqa: E402
    NO_BUDGET,
    PAPER_FIGURES,
    PAPERS,
    PaperFigure,
    budget_label,
    method_label,
)
from prunebench.reporting.published import (  # noqa: E402
    compare_published,
    load_published,
    match_published,
)
from prunebench.reporting.style import Look, results_looks  # noqa: E402

FORMATS = ("pdf", "png")
PNG_DPI = 150


def _save(fig: plt.Figure, out_dir: Path, name: str) -> list[str]:
    """Write `name`.pdf and `name`.png atomically; close the figure."""
    files = []
    for fmt in FORMATS:
        path = out_dir / f"{name}.{fmt}"
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        atomic_write(path, lambda tmp, fmt=fmt, metadata=metadata: fig.savefig(
            tmp, format=fmt, dpi=PNG_DPI, bbox_inches="tight", metadata=metadata))
        files.append(path.name)
    plt.close(fig)
    return files


def _run_folder(row: pd.Series, results: Path) -> Path:
    """Where a run's files are now: as aggregated, else under <results>/<paths.RUNS>/<run_id>."""
    folder = Path(str(row["run_dir"]))
    return folder if folder.is_dir() else results / paths.RUNS / str(row["run_id"])


def _read_run_csv(runs: pd.DataFrame, results: Path, name: str) -> pd.DataFrame:
    frames = []
    for _, row in runs.iterrows():
        path = _run_folder(row, results) / name
        if not path.is_file():
            continue
        try:
            df = pd.read_csv(path)
        except pd.errors.EmptyDataError:  # no epoch of its own (magnitude from a dense run)
            continue
        df["row_index"] = range(len(df))
        for key in ("method", "variant", "sparsity_target", "seed", "run_id"):
            df[key] = row[key]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _sparsity_axis(ax: plt.Axes, ticks: list[float], extent: list[float]) -> None:
    """x = density on a log scale, inverted, ticks labelled as sparsity (high sparsity right);
    `ticks` are the sparsities labelled, `extent` every sparsity drawn."""
    ax.set_xscale("log")
    densities = sorted({round(1 - s, 6) for s in ticks if not pd.isna(s)}, reverse=True)
    span = [1 - s for s in [*ticks, *extent] if not pd.isna(s)]
    if not densities or not span:
        return
    lo, hi = min(span), max(span)
    ax.set_xlim(hi * 1.4, lo / 1.4)
    ax.xaxis.set_major_locator(FixedLocator(densities))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{1 - d:.4g}" for d in densities], rotation=45 if len(densities) > 5
                       else 0)
    ax.set_xlabel("sparsity (fraction of prunable weights removed; log scale of density)")


def _look(looks: dict[str, Look], label: str) -> Look:
    """The look of `label`; black for a label the results set did not list."""
    return looks.get(label) or Look(label, "", "#000000", "o")


def _line(ax: plt.Axes, x: Any, mean: Any, std: Any, look: Look) -> None:
    """A method's mean as a line in its look, its ± std as a light band of its colour."""
    ax.plot(x, mean, **look.line_kwargs())
    lo, hi = np.asarray(mean, float) - np.asarray(std, float), np.asarray(mean, float) + \
        np.asarray(std, float)
    ax.fill_between(x, lo, hi, color=look.color, alpha=0.15, linewidth=0, gid=look.label,
                    zorder=look.zorder - 1)


def _point(ax: plt.Axes, x: float, y: float, xerr: float, yerr: float, look: Look) -> None:
    """One setting as its method's marker with error bars, every artist tagged with its label."""
    container = ax.errorbar(x, y, xerr=xerr, yerr=yerr, capsize=3,
                            **{**look.line_kwargs(), "linestyle": "none"})
    for artist in container.get_children():
        artist.set_gid(look.label)


def _handle(look: Look, **changes: Any) -> Line2D:
    """A legend entry drawn as the method is drawn."""
    kwargs = {k: v for k, v in look.line_kwargs().items() if k not in ("gid", "zorder")}
    return Line2D([], [], label=look.label, **{**kwargs, **changes})


def _legend_outside(owner: plt.Axes | plt.Figure, handles: list[Any]) -> None:
    """The legend right of the plot, never over the data."""
    if isinstance(owner, plt.Figure):
        owner.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
                     frameon=False)
    else:
        owner.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5),
                     frameon=False)


def _in_order(looks: dict[str, Look], labels: Any) -> list[str]:
    """`labels` in legend order (proposed, baselines, controls), unknown ones last."""
    present = set(labels)
    return [lab for lab in looks if lab in present] + sorted(present - set(looks))


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(label=[method_label(m, v) for m, v in zip(frame["method"],
                                                                  frame["variant"], strict=True)])


def accuracy_vs_sparsity(runs: pd.DataFrame, settings: pd.DataFrame, published: pd.DataFrame,
                         dataset: str, arch: str, looks: dict[str, Look]
                         ) -> tuple[plt.Figure, str]:
    """Mean ± std test top-1 over seeds per method, published points overlaid."""
    ok = runs[(runs["status"] == "ok") & (runs["dataset"] == dataset) & (runs["arch"] == arch)]
    st = _labelled(settings[(settings["dataset"] == dataset) & (settings["arch"] == arch)])
    done = st[st["n"] > 0]
    pub = _labelled(published[(published["dataset"] == dataset) & (published["arch"] == arch)])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgeted = done[done["sparsity_target"].notna()]
    for label, group in budgeted.groupby("label", sort=False):
        group = group.sort_values("sparsity_target")
        _line(ax, 1 - group["sparsity_target"], group["test_top1_pct_mean"],
              group["test_top1_pct_std"].fillna(0), _look(looks, label))
    free = done[done["sparsity_target"].isna()]
    for row in free.itertuples():
        look = _look(looks, row.label)
        _point(ax, 1 - row.sparsity_achieved_mean, row.test_top1_pct_mean,
               _nan0(row.sparsity_achieved_std), _nan0(row.test_top1_pct_std), look)
        if row.method == "dense":
            ax.axhline(row.test_top1_pct_mean, color=look.color, linestyle=look.linestyle,
                       linewidth=look.linewidth, gid=look.label, zorder=1)
    ticks = list(budgeted["sparsity_target"]) + list(pub["sparsity"].dropna())
    if (ok["sparsity_achieved"] == 0).any():
        ticks.append(0.0)
    extent = list(ok["sparsity_achieved"].dropna())
    placed_at_ours = off_axis = 0
    for row in pub.itertuples():
        look = _look(looks, row.label)
        star = {"marker": "*", "s": 150, "color": look.color, "edgecolors": "black",
                "linewidths": 0.6, "zorder": 5, "gid": look.label}
        if not pd.isna(row.sparsity):
            ax.scatter(1 - row.sparsity, row.accuracy, **star)
            continue
        ours = free[(free["method"] == row.method) & (free["variant"] == row.variant)]
        if len(ours):
            ax.scatter(1 - ours["sparsity_achieved_mean"].mean(), row.accuracy, **star)
            placed_at_ours += 1
        else:
            ax.axhline(row.accuracy, color=look.color, linestyle=":", linewidth=1.2,
                       gid=look.label)
            off_axis += 1
    _sparsity_axis(ax, ticks, extent)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{dataset} / {arch}")
    handles = [_handle(_look(looks, lab)) for lab in _in_order(looks, [*done["label"],
                                                                        *pub["label"]])]
    handles.append(Line2D([], [], color="black", marker="+", markersize=10, linestyle="none",
                          label="no budget: at its achieved sparsity\n(error bars in x and y)"))
    if len(pub):
        handles.append(Line2D([], [], color="white", marker="*", markersize=11, linestyle="",
                              markeredgecolor="black", label="published"))
    if off_axis:
        handles.append(Line2D([], [], color="black", linestyle=":",
                              label="published, sparsity not reported"))
    _legend_outside(ax, handles)
    n_seeds = sorted(set(ok["seed"].dropna().astype(int)))
    failed = st[st["n_failed"] > 0]
    caption = (f"Test top-1 accuracy against sparsity on {dataset} with {arch}: lines and bands "
               f"are the mean ± standard deviation over seeds ({len(n_seeds)} seed(s): "
               f"{', '.join(map(str, n_seeds))}) of the finished runs, one colour and marker "
               "per method (a variant: its method's colour, its own dashes and marker fill); "
               "methods without a budget are single points at their achieved sparsity (error "
               "bars: std in both axes)")
    caption += ("; the dashed black line is the dense runs' accuracy. " if (free["method"] ==
                                                                           "dense").any()
                else ". ")
    if len(pub):
        caption += f"Stars are the {len(pub)} published result(s) for this dataset and arch"
        if placed_at_ours:
            caption += ("; published results without a reported sparsity are drawn at the mean "
                        "sparsity our runs of that method achieved")
        if off_axis:
            caption += ("; dotted lines are published results whose sparsity was not reported "
                        "and which we did not run")
        caption += ". "
    else:
        caption += "No published result exists for this dataset and arch. "
    if len(failed):
        caption += (f"{int(failed['n_failed'].sum())} failed run(s) in {len(failed)} setting(s) "
                    "are not included (see the failed-runs table).")
    return fig, caption.strip()


def _nan0(v: float) -> float:
    return 0.0 if pd.isna(v) else float(v)


def _panels(n: int, wrap: int, width: float, height: float, **kwargs: Any
            ) -> tuple[plt.Figure, list[plt.Axes]]:
    """`n` panels in rows of `wrap`; the unused cells of the last row are hidden."""
    cols = max(1, min(wrap, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             **kwargs)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def reproduced_vs_published(matched: pd.DataFrame, looks: dict[str, Look]
                            ) -> tuple[plt.Figure, str]:
    """Our mean accuracy (± std) against the published one where settings match, one panel per
    dataset/architecture."""
    data = _labelled(matched)
    pairs = sorted(set(zip(data["dataset"], data["arch"], strict=True)))
    fig, axes = _panels(len(pairs), 3, 3.4, 3.2)
    for ax, (dataset, arch) in zip(axes, pairs, strict=True):
        sel = data[(data["dataset"] == dataset) & (data["arch"] == arch)]
        for label in _in_order(looks, sel["label"]):
            group = sel[sel["label"] == label]
            for row in group.itertuples():
                _point(ax, row.published_top1_pct, row.ours_top1_pct_mean, 0.0,
                       _nan0(row.ours_top1_pct_std), _look(looks, label))
        std = sel["ours_top1_pct_std"].fillna(0)
        lo = float(np.nanmin([sel["published_top1_pct"].min(),
                              (sel["ours_top1_pct_mean"] - std).min()]))
        hi = float(np.nanmax([sel["published_top1_pct"].max(),
                              (sel["ours_top1_pct_mean"] + std).max()]))
        pad = max(2.0, 0.05 * (hi - lo))
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle="--",
                linewidth=1, zorder=0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{dataset} / {arch}")
        ax.set_xlabel("published top-1 (%)")
        ax.set_ylabel("reproduced top-1 (%)")
    handles = [_handle(_look(looks, lab), linestyle="none") for lab in
               _in_order(looks, data["label"])]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="y = x"))
    _legend_outside(fig, handles)
    fig.tight_layout()
    caption = (f"Reproduced against published test top-1 accuracy for the {len(matched)} "
               "published result(s) whose dataset, architecture, method, sparsity and variant "
               "match exactly one setting with finished runs (published results without a "
               "reported sparsity are matched to our runs of that method and variant without a "
               "budget), one panel per dataset and architecture; error bars are the std over "
               "seeds. Points above the dashed line beat the published number.")
    return fig, caption


BUDGET_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">")


def shade(color: str, i: int, n: int) -> tuple[float, float, float]:
    """The i-th of n shades of `color`: the colour itself, then darker (mixed with black)."""
    r, g, b = matplotlib.colors.to_rgb(color)
    t = 0.0 if n <= 1 else 0.6 * i / (n - 1)
    return (r * (1 - t), g * (1 - t), b * (1 - t))


def _budget_line(ax: plt.Axes, stats: pd.DataFrame, color: Any, budget_index: int,
                 linestyle: Any, label: str) -> None:
    """One budget of a method's panel: its mean (`stats`' index against `mean`) in a shade of
    the method's colour with the budget's marker, ± `std` as a light band."""
    ax.plot(stats.index, stats["mean"], color=color, linestyle=linestyle, linewidth=1.3,
            marker=BUDGET_MARKERS[budget_index % len(BUDGET_MARKERS)], markersize=4,
            markevery=max(1, len(stats) // 6), gid=label)
    ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0),
                    stats["mean"] + stats["std"].fillna(0), color=color, alpha=0.12,
                    linewidth=0, gid=label)


def _budget_handles(budgets: list[str]) -> list[Line2D]:
    """Legend entries of the budgets: grey shades (darker = higher) with their markers."""
    return [Line2D([], [], color=shade("#999999", i, len(budgets)),
                   marker=BUDGET_MARKERS[i % len(BUDGET_MARKERS)], label=budget)
            for i, budget in enumerate(budgets)]


def training_curves(history: pd.DataFrame, dataset: str, arch: str, looks: dict[str, Look]
                    ) -> tuple[plt.Figure, str]:
    """Train and validation top-1 per epoch, mean ± std over seeds, one panel per method in the
    method's colour (darker: higher sparsity)."""
    budgets = sorted(history["budget"].unique(), key=_budget_order)
    labels = _in_order(looks, history["label"].unique())
    fig, axes = _panels(len(labels), 3, 3.1, 2.5, sharey=True)
    metrics = [(c, ls) for c, ls in (("train_top1", "-"), ("val_top1", "--")) if c in history]
    for ax, label in zip(axes, labels, strict=True):
        look = _look(looks, label)
        runs = history[history["label"] == label]
        present = [b for b in budgets if b in set(runs["budget"])]
        for i, budget in enumerate(present):
            for column, linestyle in metrics:
                stats = runs[runs["budget"] == budget].groupby("epoch")[column].agg(
                    ["mean", "std"]).dropna(subset=["mean"])
                if not stats.empty:
                    _budget_line(ax, stats, shade(look.color, i, len(present)),
                                 budgets.index(budget), linestyle, label)
        ax.set_title(label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 (%)")
    handles = [Line2D([], [], color="black", linestyle=ls, label=name) for (c, ls), name in
               zip(metrics, ("training batches", "validation"), strict=False)]
    handles += _budget_handles(budgets)
    _legend_outside(fig, handles)
    fig.tight_layout()
    seeds = sorted(set(history["seed"].dropna().astype(int)))
    caption = (f"Training curves on {dataset} with {arch}: top-1 accuracy on the training "
               "batches (solid: as trained, with augmentation and the training-time mask) and "
               "on the held-out validation split (dashed), per epoch, mean ± std over seeds "
               f"({', '.join(map(str, seeds))}); one panel per method, in the method's colour, "
               "darker and with its own marker for a higher budget. Epochs count every phase "
               "(e.g. dense pre-training then fine-tuning).")
    return fig, caption


def _budget_order(label: str) -> tuple[int, float]:
    return (0, 0.0) if label == NO_BUDGET else (1, float(label.split()[-1]))


# More prunable layers than this (timm models: a ViT-B has 74) are drawn one point per block.
MAX_LAYERS_DRAWN = 30


def layer_block(name: str) -> str:
    """The block a layer belongs to: its name up to its last numeric part (`blocks.3.attn.qkv`
    -> `blocks.3`, `stages.1.blocks.0.mlp.fc1` -> `stages.1.blocks.0`); others stay whole."""
    parts = name.split(".")
    numeric = [i for i, part in enumerate(parts) if part.isdigit()]
    return ".".join(parts[:numeric[-1] + 1]) if numeric else name


def by_block(layers: pd.DataFrame) -> pd.DataFrame:
    """One row per run and block: density = kept / total weights of the block's layers."""
    grouped = layers.assign(layer=layers["layer"].map(layer_block))
    keys = ["run_id", "label", "budget", "layer"]
    out = grouped.groupby(keys, sort=False).agg(nonzero=("nonzero", "sum"),
                                                numel=("numel", "sum"),
                                                row_index=("row_index", "min")).reset_index()
    return out.assign(density=out["nonzero"] / out["numel"])


def layer_density(layers: pd.DataFrame, dataset: str, arch: str, looks: dict[str, Look]
                  ) -> tuple[plt.Figure, str]:
    """Per-layer density of the extracted networks, mean ± std over seeds; one point per block
    when there are more than MAX_LAYERS_DRAWN prunable layers."""
    if "prunable" in layers:  # layers left dense by exclude_layers are not drawn
        layers = layers[layers["prunable"].astype(str).str.lower() != "false"]
    n_layers = layers["layer"].nunique()
    grouped = n_layers > MAX_LAYERS_DRAWN
    if grouped:
        layers = by_block(layers)
    order = (layers.groupby("layer")["row_index"].min().sort_values().index.tolist())
    layers = layers.assign(layer_pos=layers["layer"].map({n: i for i, n in enumerate(order)}))
    budgets = sorted(layers["budget"].unique(), key=_budget_order)
    labels = _in_order(looks, layers["label"])
    fig, axes = _panels(len(labels), 2 if len(order) > 12 else 3, max(3.4, 0.3 * len(order)),
                        2.6, sharey=True)
    for ax, label in zip(axes, labels, strict=True):
        look = _look(looks, label)
        runs = layers[layers["label"] == label]
        present = [b for b in budgets if b in set(runs["budget"])]
        for i, budget in enumerate(present):
            stats = runs[runs["budget"] == budget].groupby("layer_pos")["density"].agg(
                ["mean", "std"])
            _budget_line(ax, stats, shade(look.color, i, len(present)), budgets.index(budget),
                         look.linestyle, label)
        ax.set_title(label, fontsize=9)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=90, fontsize=7)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("block" if grouped else "layer")
        ax.set_ylabel("density (fraction kept)")
    _legend_outside(fig, _budget_handles(budgets))
    fig.tight_layout()
    unit = (f"block (the {n_layers} prunable layers grouped into {len(order)} blocks by name, "
            "each point the kept fraction of its block's weights)" if grouped else "layer")
    caption = (f"Per-layer density (fraction of each prunable layer's weights kept) of the "
               f"extracted networks on {dataset} with {arch}, mean ± std over seeds; one panel "
               f"per method, in the method's colour, darker and with its own marker for a "
               f"higher budget; one point per {unit}, in forward order. A point at 0 is a "
               "collapsed layer. Dense runs (density 1 everywhere) "
               "and layers left dense (exclude_layers) are left out.")
    return fig, caption


def accuracy_vs_macs(settings: pd.DataFrame, dataset: str, arch: str, looks: dict[str, Look]
                     ) -> tuple[plt.Figure, str]:
    """Mean ± std test top-1 against effective MACs per inference (log x), dense as reference."""
    st = _labelled(settings[(settings["dataset"] == dataset) & (settings["arch"] == arch)
                            & (settings["n"] > 0)])
    dense = st[st["sparsity_target"].isna() & (st["sparsity_achieved_mean"] == 0)]
    pruned = st.drop(index=dense.index)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in _in_order(looks, pruned["label"]):
        look = _look(looks, label)
        group = pruned[pruned["label"] == label].sort_values("macs_effective_mean")
        budgeted = group[group["sparsity_target"].notna()]
        if len(budgeted) > 1:
            ax.plot(budgeted["macs_effective_mean"], budgeted["test_top1_pct_mean"],
                    **{**look.line_kwargs(), "marker": ""})
        for row in group.itertuples():
            _point(ax, row.macs_effective_mean, row.test_top1_pct_mean,
                   _nan0(row.macs_effective_std), _nan0(row.test_top1_pct_std), look)
    macs_dense = float(st["macs_dense_mean"].max())
    if not pd.isna(macs_dense):
        ax.axvline(macs_dense, color="grey", linestyle=":", linewidth=1)
    for row in dense.itertuples():
        look = _look(looks, row.label)
        ax.axhline(row.test_top1_pct_mean, color=look.color, linestyle=look.linestyle,
                   linewidth=look.linewidth, gid=look.label)
        _point(ax, row.macs_effective_mean, row.test_top1_pct_mean, 0.0,
               _nan0(row.test_top1_pct_std), look)
        if not pd.isna(row.test_top1_pct_std):
            ax.axhspan(row.test_top1_pct_mean - row.test_top1_pct_std,
                       row.test_top1_pct_mean + row.test_top1_pct_std,
                       color=look.color, alpha=0.08, gid=look.label)
    ax.set_xscale("log")
    ax.set_xlabel("effective multiply-accumulates per image (log scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{dataset} / {arch}")
    handles = [_handle(_look(looks, lab)) for lab in _in_order(looks, st["label"])]
    handles.append(Line2D([], [], color="grey", linestyle=":", label="dense network's MACs"))
    _legend_outside(ax, handles)
    caption = (f"Test top-1 accuracy against effective multiply-accumulates per image on "
               f"{dataset} with {arch} (log scale; counted on the extracted network, a pruned "
               "weight costing nothing), mean ± std over seeds in both axes, one colour and "
               "marker per method; a method's budgets are joined by a line. The dotted "
               "vertical line is the dense network's MACs")
    caption += (" and the dashed line (band: ± std) the accuracy of the unpruned runs."
                if len(dense) else "; no unpruned run was made for an accuracy reference.")
    return fig, caption


def _paper_rows(compared: pd.DataFrame, spec: PaperFigure) -> pd.DataFrame:
    """The published rows a paper figure redraws, in the CSV's order, labelled."""
    rows = compared[compared["source"] == spec.source].sort_values("published_row")
    if spec.datasets:
        rows = rows[rows["dataset"].isin(spec.datasets)]
    return rows.assign(label=[method_label(m, v) for m, v in zip(rows["method"], rows["variant"],
                                                                strict=True)])


def _ours_note(rows: pd.DataFrame) -> str:
    missing = int((rows["n"] == 0).sum())
    return (f" {missing} of the {len(rows)} published setting(s) have no finished run and show "
            "the published value only." if missing else "")


def paper_curves(rows: pd.DataFrame, paper: str, dataset: str, arch: str,
                 looks: dict[str, Look]) -> tuple[plt.Figure, str]:
    """A paper's accuracy-vs-pruning-rate curves: ours (mean ± std) in each method's look,
    published as stars on a dotted line of the same colour."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = _in_order(looks, rows["label"])
    for label in labels:
        group = rows[rows["label"] == label].sort_values("sparsity")
        look = _look(looks, label)
        ax.plot(1 - group["sparsity"], group["published_top1_pct"], color=look.color,
                linestyle=":", linewidth=1.2, marker="*", markersize=11, markeredgecolor="black",
                markeredgewidth=0.5, gid=label, zorder=5)
        ours = group[group["n"] > 0]
        if len(ours):
            _line(ax, 1 - ours["sparsity"], ours["ours_top1_pct_mean"],
                  ours["ours_top1_pct_std"].fillna(0), look)
    rates = list(rows["sparsity"].dropna())
    _sparsity_axis(ax, rates, rates)
    ax.set_xlabel("pruning rate (fraction of prunable weights removed; log scale of density)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{dataset} / {arch}")
    handles = [_handle(_look(looks, lab)) for lab in labels]
    handles += [Line2D([], [], color="black", linestyle=":", marker="*", markersize=10,
                       markerfacecolor="white", label="published")]
    _legend_outside(ax, handles)
    caption = (f"{paper}: test top-1 accuracy against pruning rate on {dataset} with {arch}, "
               f"redrawn for {', '.join(labels)}. Lines in each method's colour, marker and "
               "dashes, with bands, are our runs (mean ± std over seeds); stars on a dotted line "
               "of the same colour are the published values." + _ours_note(rows))
    return fig, caption


def _row_name(row: pd.Series) -> str:
    return textwrap.fill(f"{row['label']}: {row['setting']}", 48)


def paper_bars(rows: pd.DataFrame, paper: str, dataset: str, looks: dict[str, Look]
               ) -> tuple[plt.Figure, str]:
    """A paper's bar chart: one bar per published setting (ours, mean ± std) in its method's
    colour and its variant's hatch, one panel per architecture, the published value a star."""
    archs = list(dict.fromkeys(rows["arch"]))
    names = list(dict.fromkeys(_row_name(r) for _, r in rows.iterrows()))
    fig, axes = plt.subplots(1, len(archs), figsize=(3.2 * len(archs) + 3.5,
                                                      0.45 * len(names) + 1.4),
                             sharey=True, squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        for _, row in rows[rows["arch"] == arch].iterrows():
            y = names.index(_row_name(row))
            look = _look(looks, row["label"])
            if row["n"] > 0:
                ax.barh(y, row["ours_top1_pct_mean"], xerr=_nan0(row["ours_top1_pct_std"]),
                        color=look.color, hatch=look.hatch, edgecolor="black", linewidth=0.5,
                        capsize=3, height=0.7, gid=look.label)
            else:
                ax.text(0.5, y, "not reproduced", va="center", fontsize=7, color="grey")
            ax.scatter(row["published_top1_pct"], y, marker="*", s=120, color="white",
                       edgecolors="black", linewidths=0.8, zorder=5)
        ax.set_title(f"{dataset} / {arch}")
        ax.set_xlabel("test top-1 (%)")
        ax.set_xlim(0, 100)
    axes[0][0].set_yticks(range(len(names)))
    axes[0][0].set_yticklabels(names, fontsize=7)
    axes[0][0].invert_yaxis()
    handles: list[Any] = [Patch(facecolor=look.color, hatch=look.hatch, edgecolor="black",
                                linewidth=0.5, label=look.label)
                          for look in (_look(looks, lab) for lab in
                                       _in_order(looks, rows["label"]))]
    handles.append(Line2D([], [], color="white", marker="*", markersize=11, linestyle="",
                          markeredgecolor="black", label="published"))
    axes[0][-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
                       frameon=False)
    caption = (f"{paper}: the published {dataset} chart redrawn, one bar per published setting "
               "(method, variant: the paper's setting) and architecture, in the method's colour "
               "(a variant hatched). Bars are our runs (mean ± std over seeds), stars the "
               "published values." + _ours_note(rows))
    return fig, caption


def paper_table(rows: pd.DataFrame, paper: str, dataset: str) -> tuple[plt.Figure, str]:
    """A paper's results table with our numbers beside the published ones."""
    cells = [[r["arch"], r["label"], textwrap.shorten(r["setting"], 40),
              f"{r['published_top1_pct']:.1f}",
              (f"{r['ours_top1_pct_mean']:.1f} ± {_nan0(r['ours_top1_pct_std']):.1f} "
               f"({int(r['n'])})" if r["n"] > 0 else "not reproduced"),
              (f"{r['difference_pct']:+.1f}" if not pd.isna(r["difference_pct"]) else "--")]
             for _, r in rows.iterrows()]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(cells) + 0.8))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=["arch", "method", "published setting",
                                                "published", "ours (runs)", "diff."],
                     loc="center", cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(6)))
    ax.set_title(f"{dataset}: test top-1 (%)")
    caption = (f"{paper}: the published {dataset} table with our test top-1 (mean ± std over "
               "seeds, runs in parentheses) beside each published value; diff. = ours - "
               "published, only where one published number matches the setting."
               + _ours_note(rows))
    return fig, caption


def paper_figures(compared: pd.DataFrame, looks: dict[str, Look]
                  ) -> list[tuple[dict[str, str], Callable[[], tuple[plt.Figure, str]] | str]]:
    """Every paper figure to draw, as (manifest keys, drawing function), or (keys, reason) for
    one with no finished run to draw."""
    out: list[tuple[dict[str, str], Callable[[], tuple[plt.Figure, str]] | str]] = []
    for spec in PAPER_FIGURES:
        rows = _paper_rows(compared, spec)
        paper = PAPERS[spec.source]
        by = ["dataset", "arch"] if spec.kind == "curves" else ["dataset"]
        for key, group in rows.groupby(by, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            keys = {"kind": f"paper_{spec.kind}", "source": spec.source, "paper": paper,
                    **dict(zip(by, key, strict=True))}
            keys["name"] = _slug("paper", spec.source, spec.kind, *key)
            if not (group["n"] > 0).any():
                out.append((keys, "not reproduced: no finished runs of the paper's settings "
                                  f"for {' / '.join(key)}"))
            elif spec.kind == "curves":
                out.append((keys, lambda g=group, p=paper, k=key: paper_curves(
                    g, p, k[0], k[1], looks)))
            elif spec.kind == "bars":
                out.append((keys, lambda g=group, p=paper, k=key: paper_bars(
                    g, p, k[0], looks)))
            else:
                out.append((keys, lambda g=group, p=paper, k=key: paper_table(g, p, k[0])))
    return out


def local_data_note(runs: pd.DataFrame) -> str:
    """A caption sentence naming the finished runs that read their dataset from a local copy
    (e.g. the offline CIFAR-10 JPEG archive) rather than the official download; "" if none."""
    if "data_origin" not in runs:
        return ""
    local = runs[runs["data_origin"].fillna("") == "local"]
    if local.empty:
        return ""
    labels = sorted({method_label(m, v) for m, v in zip(local["method"], local["variant"],
                                                       strict=True)})
    texts = local["data_source"].dropna() if "data_source" in local else []
    sources = sorted({str(x) for x in texts if str(x)})
    return (f" Runs of {', '.join(labels)} read the dataset from a local copy "
            f"({'; '.join(sources) or 'source not recorded'}), not the official download.")


def _slug(*parts: str) -> str:
    return "_".join("".join(ch if ch.isalnum() or ch in "-._" else "-" for ch in str(p))
                    for p in parts)


@dataclass(frozen=True)
class FigurePlan:
    """One figure the results allow: its manifest kind, file name and keys, and how to draw it."""

    kind: str
    name: str
    keys: dict[str, str]
    draw: Callable[[], tuple[plt.Figure, str]]


def plan_figures(results: str | Path, published_path: str | Path
                 ) -> tuple[list[FigurePlan], list[dict[str, str]], pd.DataFrame]:
    """Every figure the results allow (drawn only when asked), the figures skipped and why, and
    the runs they were planned from."""
    results = Path(results)
    runs, settings = load_summary(results)
    published = load_published(published_path)
    ok = runs[runs["status"] == "ok"].copy()
    styles = results_looks(runs, published)
    plans: list[FigurePlan] = []
    skipped: list[dict[str, str]] = []

    def add(kind: str, name: str, draw: Callable[[], tuple[plt.Figure, str]],
            **keys: str) -> None:
        plans.append(FigurePlan(kind, name, keys, draw))

    pairs = runs[["dataset", "arch"]].drop_duplicates().sort_values(["dataset", "arch"])
    for dataset, arch in pairs.itertuples(index=False):
        sel = ok[(ok["dataset"] == dataset) & (ok["arch"] == arch)]
        if sel.empty:
            skipped.append({"kind": "accuracy_vs_sparsity", "dataset": dataset, "arch": arch,
                            "reason": f"no finished run for {dataset} / {arch}"})
            continue
        add("accuracy_vs_sparsity", _slug("accuracy_vs_sparsity", dataset, arch),
            lambda d=dataset, a=arch: accuracy_vs_sparsity(runs, settings, published, d, a,
                                                           styles),
            dataset=dataset, arch=arch)
        add("accuracy_vs_macs", _slug("accuracy_vs_macs", dataset, arch),
            lambda d=dataset, a=arch: accuracy_vs_macs(settings, d, a, styles),
            dataset=dataset, arch=arch)
        tagged = _labelled(sel)
        history = _read_run_csv(tagged, results, paths.HISTORY)
        if history.empty or "epoch" not in history:
            skipped.append({"kind": "training_curves", "dataset": dataset, "arch": arch,
                            "reason": "no history.csv in the finished runs"})
        else:
            history = _tag(history, tagged)
            add("training_curves", _slug("training_curves", dataset, arch),
                lambda h=history, d=dataset, a=arch: training_curves(h, d, a, styles),
                dataset=dataset, arch=arch)
        pruned = tagged[pd.to_numeric(tagged["sparsity_achieved"], errors="coerce") > 0]
        layers = _read_run_csv(pruned, results, paths.LAYERS)
        if layers.empty or "density" not in layers:
            skipped.append({"kind": "layer_density", "dataset": dataset, "arch": arch,
                            "reason": "no pruned finished run with a layers.csv"})
        else:
            layers = _tag(layers, tagged)
            add("layer_density", _slug("layer_density", dataset, arch),
                lambda lay=layers, d=dataset, a=arch: layer_density(lay, d, a, styles),
                dataset=dataset, arch=arch)
    matched = match_published(settings, published)
    if matched.empty:
        skipped.append({"kind": "reproduced_vs_published", "reason": (
            "no published result matches a reproduced setting (matching on dataset, arch, "
            "method, sparsity and variant); e.g. the quick digits grid has no published "
            "counterpart")})
    else:
        add("reproduced_vs_published", "reproduced_vs_published",
            lambda: reproduced_vs_published(matched, styles))
    for keys, draw in paper_figures(compare_published(settings, published), styles):
        keys = dict(keys)
        kind, name = keys.pop("kind"), keys.pop("name")
        if isinstance(draw, str):
            skipped.append({"kind": kind, **keys, "reason": draw})
        else:
            add(kind, name, draw, **keys)
    return plans, skipped, runs


def build_figures(results: str | Path, published_path: str | Path, out_dir: str | Path
                  ) -> dict[str, Any]:
    """Draw every figure the results allow into `out_dir`; write and return the manifest."""
    results, out_dir = Path(results), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    plans, skipped, runs = plan_figures(results, published_path)
    ok = runs[runs["status"] == "ok"]
    figures: list[dict[str, Any]] = []
    for plan in plans:
        fig, caption = plan.draw()
        width_in = float(fig.get_size_inches()[0])
        files = _save(fig, out_dir, plan.name)
        scope = ok[[all(r.get(k) == plan.keys[k] for k in ("dataset", "arch") if k in plan.keys)
                    for _, r in ok.iterrows()]]
        figures.append({"kind": plan.kind, "name": plan.name, **plan.keys, "files": files,
                        "pdf": f"{plan.name}.pdf", "png": f"{plan.name}.png",
                        "width_in": width_in, "caption": caption + local_data_note(scope)})
    manifest = {"figures": figures, "skipped": skipped,
                "inputs": {"results": str(results), "published": str(published_path),
                           "runs_ok": int(len(ok)), "runs_total": int(len(runs))}}
    _remove_old(out_dir, manifest)
    write_json(out_dir / paths.MANIFEST, manifest)
    return manifest


def _tag(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    labels = dict(zip(runs["run_id"], runs["label"], strict=True))
    return frame.assign(label=frame["run_id"].map(labels),
                        budget=frame["sparsity_target"].map(budget_label))


def _remove_old(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Delete figures an earlier call listed that this one did not draw again."""
    old_path = out_dir / paths.MANIFEST
    if not old_path.is_file():
        return
    try:
        old = json.loads(old_path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    keep = {f for entry in manifest["figures"] for f in entry["files"]}
    for entry in old.get("figures", []):
        for name in entry.get("files", []):
            if name not in keep and "/" not in name:
                (out_dir / name).unlink(missing_ok=True)
