"""Seaborn figures from the aggregated results, as PDF + PNG, listed with captions in
`manifest.json` (the report includes what the manifest lists).

Per dataset/arch: test accuracy vs sparsity (mean +- std over seeds, published points overlaid),
test accuracy vs effective MACs, training curves (history.csv) and per-layer density of the
extracted networks (layers.csv). Once: reproduced vs published accuracy, where settings match.
Per paper (papers.PAPER_FIGURES): its published figures and tables redrawn from the reproduced
runs.
"""
from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
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

FORMATS = ("pdf", "png")
PNG_DPI = 150


def _palette(labels: list[str]) -> dict[str, Any]:
    """One colour per method label, the same in every figure of a results set."""
    name = "colorblind" if len(labels) <= 10 else "husl"
    colors = sns.color_palette(name, n_colors=max(len(labels), 1))
    return dict(zip(labels, colors, strict=False))


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


def accuracy_vs_sparsity(runs: pd.DataFrame, settings: pd.DataFrame, published: pd.DataFrame,
                         dataset: str, arch: str, palette: dict[str, Any]
                         ) -> tuple[plt.Figure, str]:
    """Mean +- std test top-1 over seeds per method, published points overlaid."""
    ok = runs[(runs["status"] == "ok") & (runs["dataset"] == dataset) & (runs["arch"] == arch)]
    ok = ok.assign(label=[method_label(m, v) for m, v in zip(ok["method"], ok["variant"],
                                                            strict=True)],
                   density=1 - ok["sparsity_target"])
    st = settings[(settings["dataset"] == dataset) & (settings["arch"] == arch)]
    pub = published[(published["dataset"] == dataset) & (published["arch"] == arch)]
    pub = pub.assign(label=[method_label(m, v) for m, v in zip(pub["method"], pub["variant"],
                                                              strict=True)])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgeted = ok[ok["sparsity_target"].notna()]
    if len(budgeted):
        sns.lineplot(data=budgeted, x="density", y="test_top1_pct", hue="label", palette=palette,
                     errorbar="sd", marker="o", ax=ax, legend=False, err_kws={"alpha": 0.2})
    free = st[st["sparsity_target"].isna() & (st["n"] > 0)]
    for row in free.itertuples():
        label = method_label(row.method, row.variant)
        ax.errorbar(1 - row.sparsity_achieved_mean, row.test_top1_pct_mean,
                    xerr=_nan0(row.sparsity_achieved_std), yerr=_nan0(row.test_top1_pct_std),
                    fmt="D", color=palette[label], capsize=3, markersize=6)
    ticks = list(ok["sparsity_target"].dropna()) + list(pub["sparsity"].dropna())
    if (ok["sparsity_achieved"] == 0).any():
        ticks.append(0.0)
    extent = list(ok["sparsity_achieved"].dropna())
    placed_at_ours = off_axis = 0
    for row in pub.itertuples():
        color = palette.get(row.label, "black")
        if not pd.isna(row.sparsity):
            ax.scatter(1 - row.sparsity, row.accuracy, marker="*", s=140, color=color,
                       edgecolors="black", linewidths=0.6, zorder=5)
            continue
        ours = free[(free["method"] == row.method) & (free["variant"] == row.variant)]
        if len(ours):
            ax.scatter(1 - ours["sparsity_achieved_mean"].mean(), row.accuracy, marker="*",
                       s=140, color=color, edgecolors="black", linewidths=0.6, zorder=5)
            placed_at_ours += 1
        else:
            ax.axhline(row.accuracy, color=color, linestyle=":", linewidth=1.2)
            off_axis += 1
    _sparsity_axis(ax, ticks, extent)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{dataset} / {arch}")
    labels = sorted(set(ok["label"]) | set(pub["label"]))
    handles = [Line2D([], [], color=palette.get(lab, "black"), marker="o", label=lab)
               for lab in labels]
    handles += [Line2D([], [], color="black", marker="o", label="ours, budget: mean ± std"),
                Line2D([], [], color="black", marker="D", linestyle="",
                       label="ours, no budget: mean ± std (x and y)")]
    if len(pub):
        handles.append(Line2D([], [], color="white", marker="*", markersize=11, linestyle="",
                              markeredgecolor="black", label="published"))
    if off_axis:
        handles.append(Line2D([], [], color="black", linestyle=":",
                              label="published, sparsity not reported"))
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    n_seeds = sorted(set(ok["seed"].dropna().astype(int)))
    failed = st[st["n_failed"] > 0]
    caption = (f"Test top-1 accuracy against sparsity on {dataset} with {arch}: lines and bands "
               f"are the mean ± standard deviation over seeds ({len(n_seeds)} seed(s): "
               f"{', '.join(map(str, n_seeds))}) of the finished runs; diamonds are methods "
               "without a budget, placed at their achieved sparsity (error bars: std in both "
               "axes). ")
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


def reproduced_vs_published(matched: pd.DataFrame, palette: dict[str, Any]
                            ) -> tuple[plt.Figure, str]:
    """Our mean accuracy (± std) against the published one, where settings match."""
    fig, ax = plt.subplots(figsize=(6, 5))
    data = matched.assign(**{"dataset / arch": matched["dataset"] + " / " + matched["arch"],
                             "method": [method_label(m, v) for m, v in
                                        zip(matched["method"], matched["variant"], strict=True)]})
    sns.scatterplot(data=data, x="published_top1_pct", y="ours_top1_pct_mean", hue="method",
                    style="dataset / arch", palette=palette, s=70, ax=ax, zorder=3)
    ax.errorbar(data["published_top1_pct"], data["ours_top1_pct_mean"],
                yerr=data["ours_top1_pct_std"].fillna(0), fmt="none", ecolor="grey",
                capsize=2, zorder=2)
    std = data["ours_top1_pct_std"].fillna(0)
    lo = float(np.nanmin([data["published_top1_pct"].min(),
                          (data["ours_top1_pct_mean"] - std).min()]))
    hi = float(np.nanmax([data["published_top1_pct"].max(),
                          (data["ours_top1_pct_mean"] + std).max()]))
    pad = max(2.0, 0.05 * (hi - lo))
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", linestyle="--",
            linewidth=1, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("published test top-1 (%)")
    ax.set_ylabel("reproduced test top-1 (%), mean ± std over seeds")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    caption = (f"Reproduced against published test top-1 accuracy for the {len(matched)} "
               "published result(s) whose dataset, architecture, method, sparsity and variant "
               "match exactly one setting with finished runs (published results without a "
               "reported sparsity are matched to our runs of that method and variant without a "
               "budget). Points above the dashed line beat the published number.")
    return fig, caption


def training_curves(history: pd.DataFrame, dataset: str, arch: str) -> tuple[plt.Figure, str]:
    """Train and validation top-1 per epoch, mean ± std over seeds, one panel per method."""
    value_cols = [c for c in ("train_top1", "val_top1") if c in history]
    long = history.melt(id_vars=["epoch", "label", "budget", "seed"], value_vars=value_cols,
                        var_name="metric", value_name="top1").dropna(subset=["top1"])
    budgets = sorted(long["budget"].unique(), key=_budget_order)
    labels = sorted(long["label"].unique())
    grid = sns.relplot(data=long, x="epoch", y="top1", hue="budget", hue_order=budgets,
                       style="metric", col="label", col_order=labels,
                       col_wrap=min(3, len(labels)), kind="line", errorbar="sd", height=2.4,
                       aspect=1.3, palette="viridis", facet_kws={"sharey": True})
    grid.set_titles("{col_name}")
    grid.set_axis_labels("epoch", "top-1 (%)")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    seeds = sorted(set(history["seed"].dropna().astype(int)))
    caption = (f"Training curves on {dataset} with {arch}: top-1 accuracy on the training "
               "batches (as trained, with augmentation and the training-time mask) and on the "
               "held-out validation split, per epoch, mean ± std over seeds "
               f"({', '.join(map(str, seeds))}); one panel per method, colour = budget. "
               "Epochs count every phase (e.g. dense pre-training then fine-tuning).")
    return grid.figure, caption


def _budget_order(label: str) -> tuple[int, float]:
    return (0, 0.0) if label == NO_BUDGET else (1, float(label.split()[-1]))


def layer_density(layers: pd.DataFrame, dataset: str, arch: str, palette: dict[str, Any]
                  ) -> tuple[plt.Figure, str]:
    """Per-layer density of the extracted networks, mean ± std over seeds."""
    order = (layers.groupby("layer")["row_index"].min().sort_values().index.tolist())
    layers = layers.assign(layer_pos=layers["layer"].map({n: i for i, n in enumerate(order)}))
    budgets = sorted(layers["budget"].unique(), key=_budget_order)
    labels = sorted(layers["label"].unique())
    grid = sns.relplot(data=layers, x="layer_pos", y="density", hue="label", hue_order=labels,
                       col="budget", col_order=budgets,
                       col_wrap=min(2 if len(order) > 12 else 3, len(budgets)),
                       kind="line", marker="o", errorbar="sd", height=2.8,
                       aspect=max(1.2, 0.3 * len(order) / 2.8), palette=palette)
    grid.set_titles("{col_name}")
    grid.set_axis_labels("layer", "density (fraction kept)")
    if grid.legend is not None:
        grid.legend.set_title("method")
    for ax in grid.axes.flat:
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=90, fontsize=7)
        ax.set_ylim(-0.03, 1.03)
    caption = (f"Per-layer density (fraction of each prunable layer's weights kept) of the "
               f"extracted networks on {dataset} with {arch}, mean ± std over seeds; one panel "
               "per budget, layers in forward order. A point at 0 is a collapsed layer. Dense "
               "runs (density 1 everywhere) are left out.")
    return grid.figure, caption


def accuracy_vs_macs(settings: pd.DataFrame, dataset: str, arch: str, palette: dict[str, Any]
                     ) -> tuple[plt.Figure, str]:
    """Mean ± std test top-1 against effective MACs per inference (log x), dense as reference."""
    st = settings[(settings["dataset"] == dataset) & (settings["arch"] == arch)
                  & (settings["n"] > 0)]
    st = st.assign(label=[method_label(m, v) for m, v in zip(st["method"], st["variant"],
                                                            strict=True)])
    dense = st[st["sparsity_target"].isna() & (st["sparsity_achieved_mean"] == 0)]
    pruned = st.drop(index=dense.index)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, group in pruned.groupby("label", sort=True):
        group = group.sort_values("macs_effective_mean")
        budgeted = group[group["sparsity_target"].notna()]
        if len(budgeted) > 1:
            ax.plot(budgeted["macs_effective_mean"], budgeted["test_top1_pct_mean"],
                    color=palette[label], linewidth=1.2)
        for row in group.itertuples():
            ax.errorbar(row.macs_effective_mean, row.test_top1_pct_mean,
                        xerr=_nan0(row.macs_effective_std), yerr=_nan0(row.test_top1_pct_std),
                        fmt="o" if row.budgeted else "D", color=palette[label], capsize=3,
                        markersize=5)
    macs_dense = float(st["macs_dense_mean"].max())
    if not pd.isna(macs_dense):
        ax.axvline(macs_dense, color="grey", linestyle=":", linewidth=1)
    for row in dense.itertuples():
        ax.axhline(row.test_top1_pct_mean, color=palette[row.label], linestyle="--",
                   linewidth=1)
        ax.errorbar(row.macs_effective_mean, row.test_top1_pct_mean,
                    yerr=_nan0(row.test_top1_pct_std), fmt="s", color=palette[row.label],
                    capsize=3, markersize=6)
        if not pd.isna(row.test_top1_pct_std):
            ax.axhspan(row.test_top1_pct_mean - row.test_top1_pct_std,
                       row.test_top1_pct_mean + row.test_top1_pct_std,
                       color=palette[row.label], alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("effective multiply-accumulates per image (log scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{dataset} / {arch}")
    handles = [Line2D([], [], color=palette[lab], marker="o", label=lab)
               for lab in sorted(pruned["label"].unique())]
    handles += [Line2D([], [], color=palette[lab], linestyle="--", marker="s",
                       label=f"{lab} (reference)")
                for lab in sorted(dense["label"].unique())]
    handles.append(Line2D([], [], color="grey", linestyle=":", label="dense network's MACs"))
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    caption = (f"Test top-1 accuracy against effective multiply-accumulates per image on "
               f"{dataset} with {arch} (log scale; counted on the extracted network, a pruned "
               "weight costing nothing), mean ± std over seeds in both axes; circles have a "
               "budget, diamonds do not. The dotted vertical line is the dense network's MACs")
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
                 palette: dict[str, Any]) -> tuple[plt.Figure, str]:
    """A paper's accuracy-vs-pruning-rate curves: ours (mean ± std) solid, published dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(rows["label"]):
        group = rows[rows["label"] == label].sort_values("sparsity")
        color = palette.get(label, "black")
        x = 1 - group["sparsity"]
        ax.plot(x, group["published_top1_pct"], color=color, linestyle="--", marker="*",
                markersize=10, markeredgecolor="black", markeredgewidth=0.5)
        ours = group[group["n"] > 0]
        if len(ours):
            mean, std = ours["ours_top1_pct_mean"], ours["ours_top1_pct_std"].fillna(0)
            ax.plot(1 - ours["sparsity"], mean, color=color, marker="o")
            ax.fill_between(1 - ours["sparsity"], mean - std, mean + std, color=color,
                            alpha=0.2)
    rates = list(rows["sparsity"].dropna())
    _sparsity_axis(ax, rates, rates)
    ax.set_xlabel("pruning rate (fraction of prunable weights removed; log scale of density)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{dataset} / {arch}")
    handles = [Line2D([], [], color=palette.get(lab, "black"), marker="o", label=lab)
               for lab in dict.fromkeys(rows["label"])]
    handles += [Line2D([], [], color="black", marker="o", label="reproduced: mean ± std"),
                Line2D([], [], color="black", marker="*", linestyle="--", markersize=10,
                       label="published")]
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    caption = (f"{paper}: test top-1 accuracy against pruning rate on {dataset} with {arch}, "
               f"redrawn for {', '.join(dict.fromkeys(rows['label']))}. Solid lines and bands "
               "are our runs (mean ± std over seeds), dashed lines with stars the published "
               "values." + _ours_note(rows))
    return fig, caption


def _row_name(row: pd.Series) -> str:
    return textwrap.fill(f"{row['label']}: {row['setting']}", 48)


def paper_bars(rows: pd.DataFrame, paper: str, dataset: str, palette: dict[str, Any]
               ) -> tuple[plt.Figure, str]:
    """A paper's bar chart: one bar per published setting (ours, mean ± std), one panel per
    architecture, the published value as a star on each bar."""
    archs = list(dict.fromkeys(rows["arch"]))
    names = list(dict.fromkeys(_row_name(r) for _, r in rows.iterrows()))
    fig, axes = plt.subplots(1, len(archs), figsize=(3.2 * len(archs) + 3.5,
                                                      0.45 * len(names) + 1.4),
                             sharey=True, squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        for _, row in rows[rows["arch"] == arch].iterrows():
            y = names.index(_row_name(row))
            color = palette.get(row["label"], "grey")
            if row["n"] > 0:
                ax.barh(y, row["ours_top1_pct_mean"], xerr=_nan0(row["ours_top1_pct_std"]),
                        color=color, capsize=3, height=0.7)
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
    handles = [Line2D([], [], color="white", marker="*", markersize=11, linestyle="",
                      markeredgecolor="black", label="published"),
               Line2D([], [], color="grey", linewidth=6, label="reproduced: mean ± std")]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    caption = (f"{paper}: the published {dataset} chart redrawn, one bar per published setting "
               "(method, variant: the paper's setting) and architecture. Bars are our runs "
               "(mean ± std over seeds), stars the published values." + _ours_note(rows))
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


def paper_figures(compared: pd.DataFrame, palette: dict[str, Any]
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
                    g, p, k[0], k[1], palette)))
            elif spec.kind == "bars":
                out.append((keys, lambda g=group, p=paper, k=key: paper_bars(
                    g, p, k[0], palette)))
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


def build_figures(results: str | Path, published_path: str | Path, out_dir: str | Path
                  ) -> dict[str, Any]:
    """Draw every figure the results allow into `out_dir`; write and return the manifest."""
    results, out_dir = Path(results), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, settings = load_summary(results)
    published = load_published(published_path)
    ok = runs[runs["status"] == "ok"].copy()
    labels = sorted({method_label(m, v) for m, v in zip(
        [*runs["method"], *published["method"]], [*runs["variant"], *published["variant"]],
        strict=True)})
    palette = _palette(labels)
    sns.set_theme(style="whitegrid", context="paper")
    figures: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []

    def add(kind: str, name: str, draw: Callable[[], tuple[plt.Figure, str]],
            **keys: str) -> None:
        fig, caption = draw()
        width_in = float(fig.get_size_inches()[0])
        files = _save(fig, out_dir, name)
        scope = ok[[all(r.get(k) == keys[k] for k in ("dataset", "arch") if k in keys)
                    for _, r in ok.iterrows()]]
        figures.append({"kind": kind, "name": name, **keys, "files": files,
                        "pdf": f"{name}.pdf", "png": f"{name}.png", "width_in": width_in,
                        "caption": caption + local_data_note(scope)})

    pairs = runs[["dataset", "arch"]].drop_duplicates().sort_values(["dataset", "arch"])
    for dataset, arch in pairs.itertuples(index=False):
        sel = ok[(ok["dataset"] == dataset) & (ok["arch"] == arch)]
        if sel.empty:
            skipped.append({"kind": "accuracy_vs_sparsity", "dataset": dataset, "arch": arch,
                            "reason": f"no finished run for {dataset} / {arch}"})
            continue
        add("accuracy_vs_sparsity", _slug("accuracy_vs_sparsity", dataset, arch),
            lambda d=dataset, a=arch: accuracy_vs_sparsity(runs, settings, published, d, a,
                                                           palette),
            dataset=dataset, arch=arch)
        add("accuracy_vs_macs", _slug("accuracy_vs_macs", dataset, arch),
            lambda d=dataset, a=arch: accuracy_vs_macs(settings, d, a, palette),
            dataset=dataset, arch=arch)
        tagged = sel.assign(label=[method_label(m, v) for m, v in
                                   zip(sel["method"], sel["variant"], strict=True)])
        history = _read_run_csv(tagged, results, paths.HISTORY)
        if history.empty or "epoch" not in history:
            skipped.append({"kind": "training_curves", "dataset": dataset, "arch": arch,
                            "reason": "no history.csv in the finished runs"})
        else:
            history = _tag(history, tagged)
            add("training_curves", _slug("training_curves", dataset, arch),
                lambda h=history, d=dataset, a=arch: training_curves(h, d, a),
                dataset=dataset, arch=arch)
        pruned = tagged[pd.to_numeric(tagged["sparsity_achieved"], errors="coerce") > 0]
        layers = _read_run_csv(pruned, results, paths.LAYERS)
        if layers.empty or "density" not in layers:
            skipped.append({"kind": "layer_density", "dataset": dataset, "arch": arch,
                            "reason": "no pruned finished run with a layers.csv"})
        else:
            layers = _tag(layers, tagged)
            add("layer_density", _slug("layer_density", dataset, arch),
                lambda lay=layers, d=dataset, a=arch: layer_density(lay, d, a, palette),
                dataset=dataset, arch=arch)
    matched = match_published(settings, published)
    if matched.empty:
        skipped.append({"kind": "reproduced_vs_published", "reason": (
            "no published result matches a reproduced setting (matching on dataset, arch, "
            "method, sparsity and variant); e.g. the quick digits grid has no published "
            "counterpart")})
    else:
        add("reproduced_vs_published", "reproduced_vs_published",
            lambda: reproduced_vs_published(matched, palette))
    for keys, draw in paper_figures(compare_published(settings, published), palette):
        keys = dict(keys)
        kind, name = keys.pop("kind"), keys.pop("name")
        if isinstance(draw, str):
            skipped.append({"kind": kind, **keys, "reason": draw})
        else:
            add(kind, name, draw, **keys)
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
