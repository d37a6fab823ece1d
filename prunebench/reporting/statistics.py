"""Does a difference hold across seeds: each proposed method minus its best baseline, paired by
seed, with a Student-t confidence interval and a verdict."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd


def _budget_key(value: Any) -> Any:
    return None if pd.isna(value) else round(float(value), 6)


def t_interval(differences: Iterable[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval (low, high) of paired differences;
    NaN bounds with fewer than two differences."""
    from scipy import stats

    d = pd.Series(list(differences), dtype=float)
    if len(d) < 2:
        return (float(d.mean()) if len(d) else float("nan")), float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


HOLDS, REVERSED, UNRESOLVED, TOO_FEW, NO_BASELINE = (
    "holds", "reversed", "not resolved", "fewer than 2 paired seeds", "no pruned baseline")


def best_baseline(setting: pd.Series, done: pd.DataFrame, proposed: set[str]
                  ) -> pd.Series | None:
    """The baseline a proposed setting is measured against: among the other methods' pruned
    settings of its dataset and arch at its budget (for a setting without a budget, also those
    of its own variant at any budget: the 2022 paper sets gumbel beside edge-popup at k = 50 %),
    the one with the highest mean test top-1, preferring the same variant (the same recipe)."""
    same_place = ((done["dataset"] == setting["dataset"]) & (done["arch"] == setting["arch"])
                  & ~done["method"].isin(proposed)
                  & (pd.to_numeric(done["sparsity_achieved_mean"]) > 0))
    budget = _budget_key(setting["sparsity_target"])
    at_budget = done["sparsity_target"].map(lambda v: _budget_key(v) == budget)
    same_variant = done["variant"] == setting["variant"]
    if budget is None and setting["variant"]:
        at_budget = at_budget | same_variant
    candidates = done[same_place & at_budget]
    if (candidates["variant"] == setting["variant"]).any():
        candidates = candidates[candidates["variant"] == setting["variant"]]
    if candidates.empty:
        return None
    return candidates.sort_values(["test_top1_pct_mean", "method", "variant"],
                                  ascending=[False, True, True]).iloc[0]


def paired_differences(runs: pd.DataFrame, settings: pd.DataFrame, proposed: Iterable[str],
                       level: float = 0.95) -> pd.DataFrame:
    """Each proposed method's (and variant's) test top-1 minus its best baseline's
    (`best_baseline`), per dataset, arch and budget, paired by seed, with a Student-t interval.
    `verdict`: `holds` (interval above 0), `reversed` (below 0), `not resolved` (contains 0), or
    why there is no interval."""
    proposed = set(proposed)
    ok = runs[runs["status"] == "ok"]
    done = settings[settings["n"] > 0]
    rows = []
    for _, mine in done[done["method"].isin(proposed)].iterrows():
        row: dict[str, Any] = {"dataset": mine["dataset"], "arch": mine["arch"],
                               "sparsity_target": mine["sparsity_target"],
                               "method": mine["method"], "variant": mine["variant"],
                               "baseline_method": "", "baseline_variant": "",
                               "baseline_sparsity_target": float("nan"), "n": 0, "seeds": "",
                               "mean_difference_pct": float("nan"), "ci_low_pct": float("nan"),
                               "ci_high_pct": float("nan"), "level": level,
                               "verdict": NO_BASELINE}
        best = best_baseline(mine, done, proposed)
        if best is not None:
            a, b = _seed_top1(ok, mine), _seed_top1(ok, best)
            seeds = sorted(set(a.index) & set(b.index))
            mean, low, high = t_interval([a[s] - b[s] for s in seeds], level)
            row.update(baseline_method=best["method"], baseline_variant=best["variant"],
                       baseline_sparsity_target=best["sparsity_target"], n=len(seeds),
                       seeds=";".join(map(str, seeds)), mean_difference_pct=mean,
                       ci_low_pct=low, ci_high_pct=high,
                       verdict=(TOO_FEW if len(seeds) < 2 else HOLDS if low > 0
                                else REVERSED if high < 0 else UNRESOLVED))
        rows.append(row)
    columns = ["dataset", "arch", "sparsity_target", "method", "variant", "baseline_method",
               "baseline_variant", "baseline_sparsity_target", "n", "seeds",
               "mean_difference_pct", "ci_low_pct", "ci_high_pct", "level", "verdict"]
    return pd.DataFrame(rows, columns=columns).sort_values(
        ["dataset", "arch", "sparsity_target", "method", "variant"], na_position="first",
        kind="stable").reset_index(drop=True)


def _seed_top1(ok_runs: pd.DataFrame, setting: pd.Series) -> pd.Series:
    """Test top-1 by seed of one setting's finished runs."""
    budget = _budget_key(setting["sparsity_target"])
    sel = ok_runs[(ok_runs["dataset"] == setting["dataset"]) & (ok_runs["arch"] == setting["arch"])
                  & (ok_runs["method"] == setting["method"])
                  & (ok_runs["variant"] == setting["variant"])
                  & ok_runs["sparsity_target"].map(lambda v: _budget_key(v) == budget)]
    return pd.Series(pd.to_numeric(sel["test_top1_pct"]).to_numpy(),
                     index=sel["seed"].astype(int).to_numpy())
