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


# Tests written for the survivors of the mutation round (docs/development.md, Mutation testing):
# scipy.stats' one-sample t test is the oracle of the interval.


def _scipy_interval(d: list[float], level: float = 0.95) -> tuple[float, float, float]:
    from scipy import stats

    ci = stats.ttest_1samp(d, 0.0).confidence_interval(confidence_level=level)
    return statistics.mean(d), float(ci.low), float(ci.high)


def test_t_interval_of_float32_differences_is_computed_in_double_precision() -> None:
    import numpy as np

    d = [np.float32(v) for v in (0.1, 0.7, 2.3, -1.1)]
    expected = _scipy_interval([float(v) for v in d])
    assert t_interval(d) == pytest.approx(expected, rel=1e-12, abs=0)


def test_budgets_equal_to_six_decimals_are_one_budget_and_nearby_budgets_are_not() -> None:
    done = pd.DataFrame([
        _setting("reparam", 0.9, 80.0),
        _setting("snip", 0.8, 99.0),  # rounds to the same integer, another budget
        _setting("magnitude", 0.9000004, 70.0),  # 0.9 to 6 decimals: the same budget
    ])
    best = best_baseline(done.iloc[0], done, {"reparam"})
    assert (best["method"], best["sparsity_target"]) == ("magnitude", 0.9000004)


def test_a_dense_setting_is_never_a_baseline_even_without_a_budget() -> None:
    done = pd.DataFrame([
        _setting("gumbel", None, 60.0, achieved=0.5),
        _setting("dense", None, 98.0, achieved=0.0),
        _setting("supermask", None, 55.0, achieved=0.45),
    ])
    assert best_baseline(done.iloc[0], done, {"gumbel"})["method"] == "supermask"
    assert best_baseline(done.iloc[0], done.iloc[:2], {"gumbel"}) is None


def test_equal_baselines_of_one_method_break_ties_by_variant_name() -> None:
    done = pd.DataFrame([
        _setting("reparam", 0.9, 80.0),
        _setting("snip", 0.9, 75.0, variant="b"),
        _setting("snip", 0.9, 75.0, variant="a"),
        _setting("snip", 0.9, 75.0, variant="c"),
    ])
    assert best_baseline(done.iloc[0], done, {"reparam"})["variant"] == "a"


COLUMNS = ["dataset", "arch", "sparsity_target", "method", "variant", "baseline_method",
           "baseline_variant", "baseline_sparsity_target", "n", "seeds", "mean_difference_pct",
           "ci_low_pct", "ci_high_pct", "level", "verdict"]


def _same(actual: dict[str, object], expected: dict[str, object]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert isinstance(actual[key], float) and math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, abs=1e-9), key


def test_every_column_of_a_row_with_and_without_a_baseline() -> None:
    settings = pd.DataFrame([
        _setting("reparam", 0.9, 80.55, variant="sc", n=2),
        _setting("snip", 0.9, 79.5, variant="sc", n=2),
        _setting("reparam", 0.5, 70.0, n=2, arch="conv2"),  # no baseline on conv2
    ])
    runs = pd.DataFrame(_runs("reparam", 0.9, {0: 80.0, 1: 81.1}, variant="sc")
                        + _runs("snip", 0.9, {0: 79.0, 1: 80.0}, variant="sc"))
    pairs = paired_differences(runs, settings, ["reparam"])
    assert list(pairs.columns) == COLUMNS and list(pairs.index) == [0, 1]
    nan = float("nan")
    _same(pairs.iloc[0].to_dict(), {
        "dataset": "cifar10", "arch": "conv2", "sparsity_target": 0.5, "method": "reparam",
        "variant": "", "baseline_method": "", "baseline_variant": "",
        "baseline_sparsity_target": nan, "n": 0, "seeds": "", "mean_difference_pct": nan,
        "ci_low_pct": nan, "ci_high_pct": nan, "level": 0.95, "verdict": NO_BASELINE})
    mean, low, high = _scipy_interval([80.0 - 79.0, 81.1 - 80.0])
    assert low > 0  # two seeds are enough for a verdict
    _same(pairs.iloc[1].to_dict(), {
        "dataset": "cifar10", "arch": "conv4", "sparsity_target": 0.9, "method": "reparam",
        "variant": "sc", "baseline_method": "snip", "baseline_variant": "sc",
        "baseline_sparsity_target": 0.9, "n": 2, "seeds": "0;1", "mean_difference_pct": mean,
        "ci_low_pct": low, "ci_high_pct": high, "level": 0.95, "verdict": HOLDS})


def test_no_proposed_setting_gives_an_empty_table_with_every_column() -> None:
    settings = pd.DataFrame([_setting("snip", 0.9, 79.5)])
    runs = pd.DataFrame(_runs("snip", 0.9, {0: 79.0}))
    pairs = paired_differences(runs, settings, ["reparam"])
    assert pairs.empty and list(pairs.columns) == COLUMNS


def test_a_setting_without_finished_runs_has_no_row_and_one_run_is_too_few() -> None:
    settings = pd.DataFrame([
        _setting("reparam", 0.9, 80.0, n=1), _setting("snip", 0.9, 78.5, n=1),
        _setting("reparam", 0.5, float("nan"), n=0), _setting("snip", 0.5, 90.0, n=1),
    ])
    runs = pd.DataFrame(_runs("reparam", 0.9, {3: 80.0}) + _runs("snip", 0.9, {3: 78.5})
                        + _runs("snip", 0.5, {3: 90.0}))
    pairs = paired_differences(runs, settings, ["reparam"])
    assert list(pairs["sparsity_target"]) == [0.9]
    row = pairs.iloc[0]
    assert (row["n"], row["seeds"], row["verdict"]) == (1, "3", TOO_FEW)
    assert row["mean_difference_pct"] == pytest.approx(1.5)
    assert math.isnan(row["ci_low_pct"]) and math.isnan(row["ci_high_pct"])


def test_paired_differences_takes_its_level() -> None:
    mine, theirs = {0: 80.0, 1: 82.0, 2: 81.0}, {0: 79.0, 1: 81.2, 2: 80.1}
    row = _pairs(mine, theirs, level=0.9)
    expected = _scipy_interval([mine[s] - theirs[s] for s in mine], level=0.9)
    assert (row["mean_difference_pct"], row["ci_low_pct"], row["ci_high_pct"]) == pytest.approx(
        expected, abs=1e-9)
    assert row["level"] == 0.9


@pytest.mark.parametrize(("mine", "theirs"), [
    ({0: 80.0, 1: 81.0, 2: 82.0}, {0: 80.0, 1: 81.0, 2: 82.0}),  # the interval is [0, 0]
    ({0: 80.5, 1: 80.0, 2: 80.25}, {0: 80.25, 1: 80.25, 2: 80.25}),  # 0 < high < 1
])
def test_an_interval_that_touches_or_contains_zero_is_not_resolved(
        mine: dict[int, float], theirs: dict[int, float]) -> None:
    row = _pairs(mine, theirs)
    assert row["ci_low_pct"] <= 0 <= row["ci_high_pct"] < 1
    assert row["verdict"] == UNRESOLVED


def test_rows_without_a_budget_come_first() -> None:
    settings = pd.DataFrame([
        _setting("gumbel", 0.5, 80.0, variant="sc"),
        _setting("gumbel", None, 80.0, variant="sc", achieved=0.5),
    ])
    pairs = paired_differences(pd.DataFrame(_runs("gumbel", 0.5, {0: 80.0})), settings,
                               ["gumbel"])
    assert math.isnan(pairs["sparsity_target"][0]) and pairs["sparsity_target"][1] == 0.5
