"""Paired statistics of reporting/statistics.py on small in-memory tables: the Student-t
interval against tabulated quantiles, which baseline a proposed setting is measured against,
pairing by seed, and each verdict at its boundary."""
from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from prunebench.reporting.statistics import (
    HOLDS,
    NO_BASELINE,
    REVERSED,
    TOO_FEW,
    UNRESOLVED,
    best_baseline,
    paired_differences,
    t_interval,
)

# Two-sided 95 % Student-t quantiles t(0.975, df), from a printed table.
T_975 = {1: 12.7062047, 2: 4.30265273, 3: 3.18244631}
# Two-sided 90 %: t(0.95, df).
T_95 = {2: 2.91998558}


def _interval(d: list[float], t: float) -> tuple[float, float, float]:
    half = t * statistics.stdev(d) / math.sqrt(len(d))
    return statistics.mean(d), statistics.mean(d) - half, statistics.mean(d) + half


@pytest.mark.parametrize("d", [[1.0, 2.0], [0.5, -1.0, 3.0], [2.0, 2.5, 1.0, 4.0]])
def test_t_interval_is_the_tabulated_student_t_interval(d: list[float]) -> None:
    assert t_interval(d) == pytest.approx(_interval(d, T_975[len(d) - 1]), abs=1e-6)


def test_t_interval_takes_its_level() -> None:
    d = [0.5, -1.0, 3.0]
    assert t_interval(d, level=0.9) == pytest.approx(_interval(d, T_95[2]), abs=1e-6)


def test_t_interval_has_no_bounds_below_two_differences() -> None:
    mean, low, high = t_interval([1.5])
    assert mean == 1.5 and math.isnan(low) and math.isnan(high)
    mean, low, high = t_interval([])
    assert math.isnan(mean) and math.isnan(low) and math.isnan(high)


def _setting(method: str, sparsity: float | None, top1: float, variant: str = "",
             achieved: float | None = None, n: int = 3, dataset: str = "cifar10",
             arch: str = "conv4") -> dict[str, object]:
    return {"dataset": dataset, "arch": arch, "method": method, "variant": variant,
            "sparsity_target": float("nan") if sparsity is None else sparsity, "n": n,
            "test_top1_pct_mean": top1,
            "sparsity_achieved_mean": sparsity if achieved is None else achieved}


def _runs(method: str, sparsity: float | None, top1: dict[int, float], variant: str = "",
          status: str = "ok") -> list[dict[str, object]]:
    return [{"dataset": "cifar10", "arch": "conv4", "method": method, "variant": variant,
             "sparsity_target": float("nan") if sparsity is None else sparsity, "seed": seed,
             "status": status, "test_top1_pct": value} for seed, value in top1.items()]


def test_the_best_baseline_is_the_best_other_pruned_method_at_the_same_budget() -> None:
    done = pd.DataFrame([
        _setting("reparam", 0.9, 80.0),
        _setting("gumbel", 0.9, 99.0),  # proposed: never a baseline
        _setting("magnitude", 0.9, 70.0),
        _setting("snip", 0.9, 75.0),
        _setting("snip", 0.5, 95.0),  # another budget
        _setting("dense", None, 98.0, achieved=0.0),  # not pruned
        _setting("random", 0.9, 77.0, dataset="cifar100"),  # another dataset
        _setting("random", 0.9, 76.0, arch="conv2"),  # another arch
    ])
    mine = done.iloc[0]
    best = best_baseline(mine, done, {"reparam", "gumbel"})
    assert (best["method"], best["sparsity_target"]) == ("snip", 0.9)


def test_a_baseline_of_the_same_variant_is_preferred_then_ties_break_by_name() -> None:
    done = pd.DataFrame([
        _setting("gumbel", None, 60.0, variant="sc", achieved=0.5),
        _setting("edgepopup", 0.5, 90.0),  # the method's own settings: another recipe
        _setting("edgepopup", 0.5, 50.0, variant="sc"),
        _setting("supermask", 0.5, 50.0, variant="sc"),
        _setting("supermask", None, 40.0, variant="other", achieved=0.4),
    ])
    best = best_baseline(done.iloc[0], done, {"gumbel"})
    assert (best["method"], best["variant"], best["sparsity_target"]) == ("edgepopup", "sc", 0.5)
    # Without its variant's baselines: only settings without a budget are at its budget.
    others = done[(done["variant"] != "sc") | (done["method"] == "gumbel")]
    best = best_baseline(done.iloc[0], others, {"gumbel"})
    assert (best["method"], best["variant"]) == ("supermask", "other")
    assert best_baseline(done.iloc[0], others.iloc[:2], {"gumbel"}) is None


def test_an_unbudgeted_setting_without_a_variant_has_only_unbudgeted_baselines() -> None:
    done = pd.DataFrame([
        _setting("gumbel", None, 60.0, achieved=0.5),
        _setting("edgepopup", 0.5, 90.0),
        _setting("supermask", None, 55.0, achieved=0.45),
    ])
    assert best_baseline(done.iloc[0], done, {"gumbel"})["method"] == "supermask"


def _pairs(mine: dict[int, float], theirs: dict[int, float], **kw: object) -> pd.Series:
    settings = pd.DataFrame([_setting("reparam", 0.9, statistics.mean(mine.values())),
                             _setting("snip", 0.9, statistics.mean(theirs.values()))])
    runs = pd.DataFrame(_runs("reparam", 0.9, mine) + _runs("snip", 0.9, theirs)
                        + _runs("snip", 0.9, {9: 0.0}, status="failed"))
    pairs = paired_differences(runs, settings, ["reparam"], **kw)
    assert len(pairs) == 1
    return pairs.iloc[0]


def test_differences_are_paired_by_seed_over_the_shared_finished_seeds() -> None:
    row = _pairs({0: 80.0, 1: 82.0, 2: 81.0, 5: 99.0}, {0: 79.0, 1: 81.2, 2: 80.1, 7: 1.0})
    d = [80.0 - 79.0, 82.0 - 81.2, 81.0 - 80.1]
    assert (row["baseline_method"], row["n"], row["seeds"]) == ("snip", 3, "0;1;2")
    mean, low, high = _interval(d, T_975[2])
    assert (row["mean_difference_pct"], row["ci_low_pct"], row["ci_high_pct"]) == pytest.approx(
        (mean, low, high), abs=1e-6)
    assert row["verdict"] == HOLDS and row["level"] == 0.95


@pytest.mark.parametrize(("mine", "theirs", "verdict"), [
    ({0: 80.0, 1: 82.0, 2: 81.0}, {0: 79.0, 1: 81.2, 2: 80.1}, HOLDS),
    ({0: 79.0, 1: 81.2, 2: 80.1}, {0: 80.0, 1: 82.0, 2: 81.0}, REVERSED),
    ({0: 80.0, 1: 79.0, 2: 81.0}, {0: 79.0, 1: 80.0, 2: 81.0}, UNRESOLVED),
    ({0: 80.0, 1: 70.0}, {0: 70.0, 5: 60.0}, TOO_FEW),
])
def test_each_verdict(mine: dict[int, float], theirs: dict[int, float], verdict: str) -> None:
    assert _pairs(mine, theirs)["verdict"] == verdict


def test_a_setting_without_a_pruned_baseline_says_so() -> None:
    settings = pd.DataFrame([_setting("reparam", 0.9, 80.0),
                             _setting("dense", None, 95.0, achieved=0.0)])
    runs = pd.DataFrame(_runs("reparam", 0.9, {0: 80.0, 1: 81.0}))
    row = paired_differences(runs, settings, ["reparam"]).iloc[0]
    assert row["verdict"] == NO_BASELINE and row["n"] == 0 and row["baseline_method"] == ""
    assert math.isnan(row["ci_low_pct"])
