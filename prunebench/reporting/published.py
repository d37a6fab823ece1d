"""The published numbers beside ours: the papers' results CSV (config/published_results.csv) as
a frame, and each published row matched to the one reproduced setting it describes."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from prunebench.plan.grid import PUBLISHED_COLUMNS, PUBLISHED_OPTIONAL, read_published
from prunebench.reporting.aggregate import PROVENANCE

MATCHED, NOT_REPRODUCED, AMBIGUOUS = "matched", "not reproduced", "ambiguous"


def load_published(path: str | Path) -> pd.DataFrame:
    """The published-results CSV as read by `grid.read_published` (the one reader: columns
    checked, the optional columns "" where absent), with sparsity and accuracy as numbers
    (NaN where the paper reports none)."""
    df = pd.DataFrame(read_published(path),
                      columns=list(PUBLISHED_COLUMNS) + list(PUBLISHED_OPTIONAL))
    df["sparsity"] = pd.to_numeric(df["sparsity"], errors="coerce")
    df["accuracy"] = pd.to_numeric(df["accuracy"], errors="coerce")
    return df


def _sparsity_key(s: pd.Series) -> pd.Series:
    return s.round(4).astype(object).where(s.notna(), "emergent").astype(str)


def compare_published(settings: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Every published row with `match`: `matched` (one published number for one reproduced
    setting with finished runs: same dataset, arch, method, sparsity and variant; a row without
    sparsity matches our runs without a budget), `not reproduced` (no finished run of that
    setting) or `ambiguous` (several published rows name the same setting, so no single number
    can be compared); `match_reason` says which. Matched rows carry our mean, std, n and
    `difference_pct` = ours - published."""
    pub = published.reset_index(drop=True).copy()
    pub["published_row"] = pub.index + 1  # the row's position in the CSV (1 = first data row)
    pub["_s"] = _sparsity_key(pub["sparsity"])
    keys = ["dataset", "arch", "method", "_s", "variant"]
    ours = settings.copy()
    ours["_s"] = _sparsity_key(ours["sparsity_target"])
    ours = ours.drop(columns=["sparsity_target"])
    merged = pub.merge(ours, on=keys, how="left", suffixes=("", "_ours"))
    merged = merged.rename(columns={"accuracy": "published_top1_pct",
                                    "test_top1_pct_mean": "ours_top1_pct_mean",
                                    "test_top1_pct_std": "ours_top1_pct_std",
                                    "sparsity_achieved_mean": "ours_sparsity_achieved_mean"})
    merged["n"] = merged["n"].fillna(0).astype(int)
    merged["n_failed"] = merged["n_failed"].fillna(0).astype(int)
    shared = merged.groupby(keys)["source"].transform("size")
    finished = merged["n"] > 0
    merged["match"] = NOT_REPRODUCED
    merged.loc[finished, "match"] = MATCHED
    merged.loc[finished & (shared > 1), "match"] = AMBIGUOUS
    merged["match_reason"] = ""
    merged.loc[~finished, "match_reason"] = [
        "no finished runs of that setting" + (f" ({f} failed)" if f else "")
        for f in merged.loc[~finished, "n_failed"]]
    merged.loc[merged["match"] == AMBIGUOUS, "match_reason"] = [
        f"{k} published rows name this dataset, arch, method, sparsity and variant; give each "
        "its own variant (the variant column of the published results CSV)"
        for k in shared[merged["match"] == AMBIGUOUS]]
    merged["difference_pct"] = (merged["ours_top1_pct_mean"] - merged["published_top1_pct"]
                                ).where(merged["match"] == MATCHED)
    for col in PROVENANCE:
        merged[col] = merged[col].fillna("") if col in merged else ""
    cols = ["dataset", "arch", "method", "sparsity", "variant", "source", "setting", "certainty",
            "protocol", "published_top1_pct", "match", "match_reason", "ours_top1_pct_mean",
            "ours_top1_pct_std", "n", "n_failed", "ours_sparsity_achieved_mean",
            "difference_pct", *PROVENANCE, "published_row"]
    return merged[cols].sort_values(["dataset", "arch", "method", "sparsity", "variant",
                                     "source"], na_position="first",
                                    kind="stable").reset_index(drop=True)


def match_published(settings: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """The published rows compared with exactly one reproduced setting (see compare_published)."""
    compared = compare_published(settings, published)
    return compared[compared["match"] == MATCHED].reset_index(drop=True)
