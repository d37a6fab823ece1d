"""Aggregation of run folders into summary.csv and summary_by_setting.csv."""
from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from faultlaunch import (
    FIGURES,
    KILLED,
    SETTINGS,
    Launcher,
    check_finished,
    read_csv,
    run_args,
    temp_folders,
)
from runfactory import make_run

from prunebench import paths
from prunebench.cli import main
from prunebench.errors import PrunebenchError
from prunebench.reporting.aggregate import (
    SUMMARY,
    SUMMARY_BY_SETTING,
    aggregate,
    load_summary,
    summarize_runs,
)

TOP1 = {0: 80.0, 1: 83.0, 2: 86.5}


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """random at 0.5 and 0.9 (3 seeds each), dense (2 seeds), one failed random 0.9 seed 3."""
    runs = tmp_path / "runs"
    for seed, top1 in TOP1.items():
        make_run(runs, sparsity=0.5, seed=seed, top1=top1)
        make_run(runs, sparsity=0.9, seed=seed, top1=top1 - 40)
    for seed in (0, 1):
        make_run(runs, method="dense", sparsity=None, seed=seed, top1=95.0 + seed)
    make_run(runs, sparsity=0.9, seed=3, status="failed")
    return runs


def _setting(settings: pd.DataFrame, method: str, sparsity: float | None) -> pd.Series:
    target = settings["sparsity_target"]
    hit = settings[(settings["method"] == method)
                   & (target.isna() if sparsity is None else target.eq(sparsity))]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_one_tidy_row_per_run(grid: Path, tmp_path: Path) -> None:
    runs, _ = aggregate(grid, tmp_path, warn=False)
    assert len(runs) == 3 + 3 + 2 + 1
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", c) for c in runs.columns), list(runs.columns)
    for col in ("test_top1_pct", "val_top1_pct", "sparsity_achieved", "status", "reason",
                "run_id", "config_digest", "git_commit", "device", "train_lr"):
        assert col in runs.columns
    assert "test_top1" not in runs.columns  # renamed with its unit
    assert runs.duplicated(["method", "sparsity_target", "seed"]).sum() == 0
    row = runs[(runs["method"] == "random") & (runs["sparsity_target"] == 0.5)
               & (runs["seed"] == 2)].iloc[0]
    assert row["status"] == "ok" and row["test_top1_pct"] == TOP1[2]
    assert row["run_id"] == "digits/conv4/random/s0.5/seed2"
    on_disk = pd.read_csv(tmp_path / "summary.csv")
    assert len(on_disk) == len(runs) and list(on_disk.columns) == list(runs.columns)
    assert not list(tmp_path.glob(".*.tmp"))


def test_mean_std_n_over_seeds(grid: Path, tmp_path: Path) -> None:
    _, settings = aggregate(grid, tmp_path, warn=False)
    assert len(settings) == 3
    s = _setting(settings, "random", 0.5)
    assert s["n"] == 3 and s["seeds"] == "0;1;2"
    assert s["test_top1_pct_mean"] == pytest.approx(statistics.mean(TOP1.values()))
    assert s["test_top1_pct_std"] == pytest.approx(statistics.stdev(TOP1.values()))
    dense = _setting(settings, "dense", None)
    assert dense["n"] == 2 and not dense["budgeted"]
    assert dense["test_top1_pct_mean"] == pytest.approx(95.5)
    on_disk = pd.read_csv(tmp_path / "summary_by_setting.csv")
    assert on_disk["test_top1_pct_mean"].tolist() == pytest.approx(
        settings["test_top1_pct_mean"].tolist(), nan_ok=True)


def test_failed_run_is_listed_and_not_averaged(grid: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    runs, settings = aggregate(grid, tmp_path)
    failed = runs[runs["status"] == "failed"]
    assert len(failed) == 1
    assert failed.iloc[0]["seed"] == 3 and "nan" in failed.iloc[0]["reason"]
    assert pd.isna(failed.iloc[0]["test_top1_pct"])
    s = _setting(settings, "random", 0.9)
    assert s["n"] == 3 and s["n_failed"] == 1
    assert s["test_top1_pct_mean"] == pytest.approx(statistics.mean(TOP1.values()) - 40)
    assert "failed: digits/conv4/random/s0.9/seed3" in capsys.readouterr().err


def test_setting_with_only_failed_runs_stays_visible(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, seed=0, top1=70.0)
    make_run(runs, sparsity=0.99, seed=0, status="failed")
    make_run(runs, sparsity=0.99, seed=1, status="failed")
    _, settings = aggregate(runs, tmp_path, warn=False)
    s = _setting(settings, "random", 0.99)
    assert s["n"] == 0 and s["n_failed"] == 2 and pd.isna(s["test_top1_pct_mean"])


def test_incomplete_run_is_counted_not_averaged(grid: Path, tmp_path: Path) -> None:
    make_run(grid, sparsity=0.5, seed=7, status="incomplete")
    runs, settings = aggregate(grid, tmp_path, warn=False)
    row = runs[runs["seed"] == 7].iloc[0]
    assert row["status"] == "incomplete" and "checkpoint" in row["reason"]
    s = _setting(settings, "random", 0.5)
    assert s["n"] == 3 and s["n_incomplete"] == 1


def test_identical_copy_is_kept_once(grid: Path, tmp_path: Path) -> None:
    src = grid / "digits/conv4/random/s0.5/seed0"
    shutil.copytree(src, grid / "old" / "seed0")
    runs, settings = aggregate(grid, tmp_path, warn=False)
    dup = runs[runs["status"] == "duplicate"]
    assert dup["run_id"].tolist() == ["old/seed0"]
    assert "digits/conv4/random/s0.5/seed0" in dup.iloc[0]["reason"]
    s = _setting(settings, "random", 0.5)
    assert s["n"] == 3 and s["n_excluded"] == 1
    assert s["test_top1_pct_mean"] == pytest.approx(statistics.mean(TOP1.values()))


def test_conflicting_duplicates_are_all_set_aside(grid: Path, tmp_path: Path) -> None:
    make_run(grid, sparsity=0.5, seed=1, top1=10.0, epochs=7, run_dir=grid / "rerun" / "seed1")
    runs, settings = aggregate(grid, tmp_path, warn=False)
    dup = runs[runs["status"] == "duplicate"].sort_values("run_id")
    assert dup["run_id"].tolist() == ["digits/conv4/random/s0.5/seed1", "rerun/seed1"]
    assert all("none of them is used" in r for r in dup["reason"])
    s = _setting(settings, "random", 0.5)
    assert s["n"] == 2 and s["n_excluded"] == 2 and s["seeds"] == "0;2"
    assert s["test_top1_pct_mean"] == pytest.approx((TOP1[0] + TOP1[2]) / 2)


def test_stale_folder_is_reported_not_mixed_in(grid: Path, tmp_path: Path) -> None:
    folder = grid / "digits/conv4/random/s0.5/seed2"
    saved = json.loads((folder / paths.CONFIG).read_text())
    saved["digest"] = "ffffffffffffffff"
    (folder / paths.CONFIG).write_text(json.dumps(saved))
    runs, settings = aggregate(grid, tmp_path, warn=False)
    row = runs[runs["run_id"] == "digits/conv4/random/s0.5/seed2"].iloc[0]
    assert row["status"] == "stale" and "ffffffffffffffff" in row["reason"]
    s = _setting(settings, "random", 0.5)
    assert s["n"] == 2 and s["n_excluded"] == 1


def test_stale_failure_record(grid: Path, tmp_path: Path) -> None:
    folder = grid / "digits/conv4/random/s0.9/seed3"
    saved = json.loads((folder / paths.CONFIG).read_text())
    saved["digest"] = "0000000000000000"
    (folder / paths.CONFIG).write_text(json.dumps(saved))
    runs, _ = aggregate(grid, tmp_path, warn=False)
    assert runs[runs["seed"] == 3].iloc[0]["status"] == "stale"


def test_unreadable_metrics_is_invalid(grid: Path, tmp_path: Path) -> None:
    (grid / "digits/conv4/random/s0.5/seed0" / paths.METRICS).write_text("{truncated")
    runs, settings = aggregate(grid, tmp_path, warn=False)
    row = runs[runs["run_id"] == "digits/conv4/random/s0.5/seed0"].iloc[0]
    assert row["status"] == "invalid" and "unreadable" in row["reason"]
    assert _setting(settings, "random", 0.5)["n"] == 2


def test_variant_is_its_own_setting(grid: Path, tmp_path: Path) -> None:
    make_run(grid, sparsity=0.5, seed=0, top1=50.0, variant="lr-high", overrides={"lr": "0.1"})
    make_run(grid, sparsity=0.5, seed=1, status="failed", variant="lr-high")
    runs, settings = aggregate(grid, tmp_path, warn=False)
    assert (runs["status"] == "duplicate").sum() == 0
    assert set(runs.loc[runs["variant"] == "lr-high", "run_id"]) == {
        "digits/conv4/random@lr-high/s0.5/seed0", "digits/conv4/random@lr-high/s0.5/seed1"}
    variant = settings[settings["variant"] == "lr-high"]
    assert len(variant) == 1 and variant.iloc[0]["n"] == 1 and variant.iloc[0]["n_failed"] == 1
    assert _setting(settings[settings["variant"] == ""], "random", 0.5)["n"] == 3
    on_disk = pd.read_csv(tmp_path / "summary_by_setting.csv", keep_default_na=False)
    assert sorted(on_disk["variant"].unique()) == ["", "lr-high"]


def test_run_without_variant_key_reads_as_default(grid: Path, tmp_path: Path) -> None:
    """metrics.json and config.json from before variants existed: variant "", same setting."""
    folder = grid / "digits/conv4/random/s0.5/seed0"
    for name in (paths.METRICS, paths.CONFIG):
        data = json.loads((folder / name).read_text())
        data.pop("variant", None)
        (data.get("config") or {}).pop("variant", None)
        (folder / name).write_text(json.dumps(data))
    runs, settings = aggregate(grid, tmp_path, warn=False)
    assert runs.loc[runs["run_id"] == "digits/conv4/random/s0.5/seed0", "status"].item() == "ok"
    assert set(runs["variant"]) == {""}
    assert _setting(settings, "random", 0.5)["n"] == 3


def test_data_provenance_per_setting(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, dataset="cifar10", sparsity=0.9, seed=0, data_origin="local")
    make_run(runs, dataset="cifar10", sparsity=0.9, seed=1, data_origin="local")
    make_run(runs, dataset="cifar10", sparsity=0.5, seed=0)
    table, settings = aggregate(runs, tmp_path, warn=False)
    assert set(table["data_origin"]) == {"local", "official"}
    assert _setting(settings, "random", 0.9)["data_origin"] == "local"
    assert _setting(settings, "random", 0.9)["data_source"] == "local archive cifar10-jpeg.tar.gz"
    assert _setting(settings, "random", 0.5)["data_origin"] == "official"


def test_rerun_includes_new_runs(grid: Path, tmp_path: Path) -> None:
    make_run(grid, sparsity=0.5, seed=3, status="incomplete")
    aggregate(grid, tmp_path, warn=False)
    make_run(grid, sparsity=0.5, seed=3, top1=90.0)  # the run finished
    make_run(grid, sparsity=0.97, seed=0, top1=20.0)  # a new setting
    runs, settings = load_summary(tmp_path)
    assert len(runs) == 10
    aggregate(grid, tmp_path, warn=False)
    runs, settings = load_summary(tmp_path)
    assert len(runs) == 11 and (runs["status"] == "incomplete").sum() == 0
    assert _setting(settings, "random", 0.5)["n"] == 4
    assert _setting(settings, "random", 0.97)["n"] == 1


def test_missing_or_empty_runs_folder(tmp_path: Path) -> None:
    with pytest.raises(PrunebenchError, match="does not exist") as e:
        summarize_runs(tmp_path / "nope")
    assert str(e.value).endswith(f"(python -m prunebench run ... --out {tmp_path / 'nope'})")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunebenchError, match="no run folders"):
        summarize_runs(tmp_path / "empty")


def test_cli_aggregate(grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    assert main(["aggregate", "--runs", str(grid), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "9 runs (8 ok, 1 failed)" in stdout
    assert (out / "summary.csv").is_file() and (out / "summary_by_setting.csv").is_file()
    assert main(["aggregate", "--runs", str(tmp_path / "missing"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunebench: error:") and "\n" not in err


@pytest.mark.slow
def test_real_runs_aggregate(digits_dir: Path, tmp_path: Path) -> None:
    """Folders written by the engine itself: finished and diverged."""
    from prunebench.errors import TrainingDiverged
    from prunebench.plan.config import resolve
    from prunebench.training.run import execute

    runs = tmp_path / "runs"
    common = {"epochs": "1", "data_dir": str(digits_dir), "device": "cpu"}
    for seed in (0, 1):
        cfg = resolve("digits", "conv4", "random", 0.5, seed, overrides=common)
        execute(cfg, paths.run_dir(runs, "digits", "conv4", "random", 0.5, seed))
    cfg = resolve("digits", "conv4", "dense", None, 0, overrides={**common, "lr": "1000"})
    with pytest.raises(TrainingDiverged):
        execute(cfg, paths.run_dir(runs, "digits", "conv4", "dense", None, 0))
    table, settings = aggregate(runs, tmp_path, warn=False)
    assert sorted(table["status"]) == ["failed", "ok", "ok"]
    assert (table["sparsity_achieved"].dropna() == 0.5).all()
    s = _setting(settings, "random", 0.5)
    assert s["n"] == 2 and s["test_top1_pct_mean"] == pytest.approx(
        table.loc[table["status"] == "ok", "test_top1_pct"].mean())
    assert _setting(settings, "dense", None)["n_failed"] == 1


@pytest.mark.slow
def test_aggregation_sees_every_run_and_flags_the_doubtful(
        launcher: Launcher, reference, digits_dir: Path, tmp_path: Path) -> None:
    """Real run folders: finished, interrupted, diverged, killed in its first write; rerun after
    more finish; an identical copy kept once; a conflicting copy and a stale folder reported."""
    runs, log, results = tmp_path / "runs", tmp_path / "run.log", tmp_path / "results"

    def leaf(setting: str) -> Path:
        method, sparsity, _ = SETTINGS[setting]
        return runs / f"digits/conv2/{method}/s{sparsity or 'none'}/seed3"

    def aggregate() -> tuple[dict[str, dict[str, str]], list[dict[str, str]]]:
        assert main(["aggregate", "--runs", str(runs), "--out", str(results)]) == 0
        table = read_csv(results / SUMMARY)
        return {r["run_id"]: r for r in table}, read_csv(results / SUMMARY_BY_SETTING)

    assert launcher.attempt(run_args("dense", digits_dir, out=runs), log) == 0
    kill = [{"at": "step", "n": 50, "action": "kill"}]
    assert launcher.attempt(run_args("random", digits_dir, out=runs), log, kill) == KILLED
    first_write = [{"at": "write", "file": "config.json", "n": 1, "when": "mid",
                    "action": "kill"}]
    assert launcher.attempt(run_args("snip", digits_dir, out=runs), log, first_write) == KILLED
    assert launcher.attempt(run_args("magnitude_ft", digits_dir, out=runs,
                                     extra=("method.ft_lr=1e12",)), log) == 3
    FIGURES["kills"] += 2
    rows, _ = aggregate()
    assert {k: r["status"] for k, r in rows.items()} == {
        "digits/conv2/dense/snone/seed3": "ok",
        "digits/conv2/random/s0.5/seed3": "incomplete",
        "digits/conv2/magnitude_ft/s0.8/seed3": "failed",
    }  # the snip run never wrote its config: no row, and its temp folder is not a run
    assert temp_folders(leaf("snip"))

    for setting in ("random", "snip"):  # both finish; one more run joins
        assert launcher.attempt(run_args(setting, digits_dir, out=runs), log) == 0
        check_finished(leaf(setting), reference(setting))
    assert launcher.attempt(run_args("random", digits_dir, out=runs, seed=4), log) == 0
    rows, settings = aggregate()
    assert sorted(r["status"] for r in rows.values()) == ["failed", "ok", "ok", "ok", "ok"]
    random_row = next(r for r in settings if r["method"] == "random")
    assert (random_row["n"], random_row["seeds"]) == ("2", "3;4")
    finished = sorted(p.parent.relative_to(runs).as_posix() for p in runs.rglob("metrics.json"))
    assert finished == sorted(k for k, r in rows.items() if r["status"] == "ok")

    shutil.copytree(leaf("dense"), runs / "backup" / leaf("dense").relative_to(runs))
    rows, settings = aggregate()
    dense = [r for r in rows.values() if r["method"] == "dense"]
    assert sorted(r["status"] for r in dense) == ["duplicate", "ok"]
    assert next(r for r in settings if r["method"] == "dense")["n"] == "1"

    other = runs / "old" / leaf("dense").relative_to(runs)  # same setting, other config
    shutil.rmtree(runs / "backup")
    assert launcher.attempt(run_args("dense", digits_dir, other, extra=("epochs=1",)), log) == 0
    stale = leaf("snip")
    config = json.loads((stale / "config.json").read_text())
    config["config"]["train"]["lr"] = 0.05  # the folder's config changed after it finished
    config["digest"] = "0" * 16
    (stale / "config.json").write_text(json.dumps(config))
    rows, settings = aggregate()
    status = {k: r["status"] for k, r in rows.items()}
    assert [status[k] for k in sorted(status) if "/dense/" in k] == ["duplicate", "duplicate"]
    assert status[stale.relative_to(runs).as_posix()] == "stale"
    assert not list(runs.rglob(".*.tmp"))
    assert len(rows) == len(list(runs.rglob("config.json")))  # every run folder has its row
    dense_setting = next(r for r in settings if r["method"] == "dense")
    assert (dense_setting["n"], dense_setting["n_excluded"]) == ("0", "2")
    FIGURES["aggregations checked"] += 4
