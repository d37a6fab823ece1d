"""Run folders -> `summary.csv` (one tidy row per run) and `summary_by_setting.csv` (over seeds).

Every folder under the runs root that holds a config.json, metrics.json or failed.json becomes one
row with a `status`: `ok` (finished), `failed` (failed.json, with its reason), `incomplete`
(started, not finished), `stale` (metrics.json or failed.json written under a different config
than the folder's config.json), `duplicate` (another folder holds the same setting and seed) or
`invalid` (unreadable files). Only `ok` rows are averaged; the others stay visible and counted.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from prunebench import paths
from prunebench.errors import PrunebenchError
from prunebench.fileio import write_text

SUMMARY = "summary.csv"
SUMMARY_BY_SETTING = "summary_by_setting.csv"

STATUSES = ("ok", "failed", "incomplete", "stale", "duplicate", "invalid")
# A setting: one cell of the grid, averaged over seeds. `variant` names a grids block's settings
# of a method (RunConfig.variant; "" = the method's own settings, and for runs that predate it).
SETTING_KEYS = ["dataset", "arch", "method", "sparsity_target", "variant"]
RUN_KEYS = [*SETTING_KEYS, "seed"]
# Engine metric names -> CSV names with the unit in the name (STYLE.md); the rest keep theirs.
RENAME = {
    "test_top1": "test_top1_pct",
    "test_top5": "test_top5_pct",
    "val_top1": "val_top1_pct",
    "test_loss": "test_loss_nats",
}
# Engine fields the summary leaves out: `sparsity` repeats `sparsity_target`, `selection`
# repeats `train_selection`, `run_dir` is where the run was written (replaced by where it is now).
DROP = ("sparsity", "selection", "run_dir")
LEADING = [
    *RUN_KEYS, "status", "reason", "run_id",
    "test_top1_pct", "test_top5_pct", "val_top1_pct", "test_loss_nats",
    "sparsity_achieved", "density_achieved", "budgeted", "num_prunable", "kept_prunable",
    "params_total", "params_nonzero", "macs_dense", "macs_effective",
    "num_layers_collapsed", "layers_collapsed", "epoch_selected", "epochs_run",
    "train_seconds", "wall_seconds",
]
TRAILING = [
    "paper", "frozen_weights", "device", "device_name", "hostname", "num_threads",
    "python_version", "torch_version", "timm_version", "prunebench_version", "git_commit",
    "data_origin", "data_source", "data_source_sha256", "data_dir", "data_root",
    "config_digest", "run_dir",
]
# Metrics averaged per setting (mean, std with ddof=1, over the `ok` seeds).
AVERAGED = [
    "test_top1_pct", "test_top5_pct", "val_top1_pct", "sparsity_achieved", "density_achieved",
    "params_nonzero", "macs_dense", "macs_effective", "num_layers_collapsed", "train_seconds",
]
# Where the data came from ("official" download or a "local" copy), carried into the settings.
PROVENANCE = ["data_origin", "data_source"]


def config_digest(config: dict[str, Any]) -> str:
    """The digest `RunConfig.digest()` gives for this saved config dict."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def find_run_dirs(runs_root: Path) -> list[Path]:
    """Every folder below `runs_root` holding a run's config, metrics or failure record.
    Hidden folders are skipped: a process killed inside an atomic write leaves its temp folder
    (`.config.json.*.tmp/config.json`), which is not a run."""
    markers = {paths.CONFIG, paths.METRICS, paths.FAILED}
    found = []
    for dirpath, dirnames, filenames in os.walk(runs_root):
        if markers & set(filenames):
            found.append(Path(dirpath))
            dirnames.clear()  # a run folder holds no nested runs
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path.name} is unreadable ({e})"
    if not isinstance(data, dict):
        return None, f"{path.name} does not hold a JSON object"
    return data, ""


def _config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Grid axes and train settings from a saved RunConfig dict (for runs without metrics)."""
    row: dict[str, Any] = {k: config.get(k) for k in ("dataset", "arch", "method", "seed",
                                                       "data_dir", "data_root")}
    if config.get("variant"):
        row["variant"] = config["variant"]
    row["sparsity_target"] = config.get("sparsity")
    row.update({f"train_{k}": v for k, v in (config.get("train") or {}).items()})
    row.update({f"hp_{k}": v for k, v in (config.get("method_options") or {}).items()})
    return row


def read_run(run_dir: Path, runs_root: Path) -> dict[str, Any]:
    """One summary row for one run folder (any status)."""
    rel = run_dir.relative_to(runs_root)
    # `<dataset>/<arch>/<method>[@<variant>]/s<sparsity>/seed<seed>`: the variant and seed of a
    # folder whose config cannot be read come from its path
    method_folder = rel.parts[2] if len(rel.parts) > 2 else ""
    row: dict[str, Any] = {"run_id": rel.as_posix(), "run_dir": str(run_dir),
                           "variant": method_folder.partition("@")[2], "reason": ""}
    saved, problem = (_read_json(run_dir / paths.CONFIG) if (run_dir / paths.CONFIG).exists()
                      else (None, ""))
    config_problem = problem
    folder_digest = saved.get("digest") if saved else None
    if saved:
        row.update(_config_fields(saved.get("config") or {}))
    metrics_path, failed_path = run_dir / paths.METRICS, run_dir / paths.FAILED
    if metrics_path.exists():
        metrics, problem = _read_json(metrics_path)
        if metrics is None:
            row.update(status="invalid", reason=problem)
        else:
            for key, value in metrics.items():
                if key not in DROP:
                    row[RENAME.get(key, key)] = value
            row["status"] = "ok"
            if config_problem:
                row["reason"] = f"{config_problem}; config digest not checked"
            if folder_digest and metrics.get("config_digest") != folder_digest:
                row.update(status="stale", reason=(
                    f"metrics.json was written under config {metrics.get('config_digest')} but "
                    f"config.json now holds {folder_digest}: rerun or delete the folder"))
    elif failed_path.exists():
        failed, problem = _read_json(failed_path)
        if failed is None:
            row.update(status="invalid", reason=problem)
        else:
            config = failed.get("config") or {}
            row.update(_config_fields(config))
            row["status"] = "failed"
            row["reason"] = str(failed.get("reason", "no reason recorded"))
            history = failed.get("history") or []
            if history:
                row["epochs_run"] = history[-1].get("epoch")
            row["config_digest"] = config_digest(config)
            if folder_digest and row["config_digest"] != folder_digest:
                row.update(status="stale", reason=(
                    f"failed.json was written under config {row['config_digest']} but "
                    f"config.json now holds {folder_digest}: rerun or delete the folder"))
    elif config_problem:
        row.update(status="invalid", reason=config_problem)
    else:
        row["status"] = "incomplete"
        row["reason"] = ("in progress or interrupted (checkpoint present)"
                         if (run_dir / paths.CHECKPOINT).exists()
                         else "in progress or interrupted (no checkpoint yet)")
        row["config_digest"] = folder_digest
    seed = re.fullmatch(r"seed(\d+)", run_dir.name)
    if seed and row.get("seed") is None:
        row["seed"] = int(seed.group(1))
    return row


def mark_duplicates(rows: list[dict[str, Any]]) -> None:
    """Mark folders holding the same setting and seed: an identical copy is kept once; copies
    with different configs are all set aside, since which one is right cannot be told."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] in ("ok", "failed"):
            groups.setdefault(_run_key(row), []).append(row)
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda r: (r["status"] != "ok", r["run_id"]))
        ids = [r["run_id"] for r in members]
        same = len({(r["status"], r.get("config_digest")) for r in members}) == 1
        for i, row in enumerate(members):
            others = ", ".join(x for x in ids if x != row["run_id"])
            if same and i == 0:
                row["reason"] = f"identical copies ignored: {others}"
            elif same:
                row.update(status="duplicate", reason=f"identical copy of {ids[0]} (kept)")
            else:
                row.update(status="duplicate", reason=(
                    f"same setting and seed as {others} with a different config or outcome; "
                    "none of them is used: delete the wrong folder(s)"))


def _key_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return round(float(v), 6) if isinstance(v, float) else v


def _run_key(row: dict[str, Any]) -> tuple:
    return tuple(_key_value(row.get(k)) for k in RUN_KEYS)


def _order_columns(columns: Iterable[str]) -> list[str]:
    columns = list(columns)
    middle = sorted(c for c in columns if c not in LEADING and c not in TRAILING)
    groups = {"method_": [], "hp_": [], "train_": []}
    rest = []
    for c in middle:
        prefix = next((p for p in groups if c.startswith(p)), None)
        (groups[prefix] if prefix else rest).append(c)
    ordered = [c for c in LEADING if c in columns] + rest
    ordered += groups["method_"] + groups["hp_"] + groups["train_"]
    return ordered + [c for c in TRAILING if c in columns]


def summarize_runs(runs_root: str | Path) -> pd.DataFrame:
    """One row per run folder under `runs_root` (see the module docstring for `status`)."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise PrunebenchError(f"runs folder {runs_root} does not exist; train some runs first "
                              "(python -m prunebench run ... --out {runs_root})")
    dirs = find_run_dirs(runs_root)
    if not dirs:
        raise PrunebenchError(f"no run folders (config.json, metrics.json or failed.json) under "
                              f"{runs_root}")
    rows = [read_run(d, runs_root) for d in dirs]
    mark_duplicates(rows)
    df = pd.DataFrame(rows)
    df = df[_order_columns(df.columns)]
    df["sparsity_target"] = pd.to_numeric(df["sparsity_target"], errors="coerce")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    df["variant"] = df["variant"].fillna("")
    return df.sort_values(RUN_KEYS + ["run_id"], na_position="first",
                          kind="stable").reset_index(drop=True)


def summarize_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and n over the `ok` seeds of each setting, plus counts of the runs
    that were not averaged (failed, incomplete, stale/duplicate/invalid = excluded)."""
    runs = runs.copy()
    for col in AVERAGED:
        if col not in runs:
            runs[col] = float("nan")
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    out = []
    for key, group in runs.groupby(SETTING_KEYS, dropna=False, sort=True):
        ok = group[group["status"] == "ok"]
        row: dict[str, Any] = dict(zip(SETTING_KEYS, key, strict=True))
        row["n"] = len(ok)
        row["n_failed"] = int((group["status"] == "failed").sum())
        row["n_incomplete"] = int((group["status"] == "incomplete").sum())
        row["n_excluded"] = int(group["status"].isin(["stale", "duplicate", "invalid"]).sum())
        row["seeds"] = ";".join(str(s) for s in sorted(ok["seed"].dropna().astype(int)))
        row["budgeted"] = not pd.isna(row["sparsity_target"])
        for col in PROVENANCE:
            row[col] = _joined(ok[col]) if col in ok else ""
        for col in AVERAGED:
            values = ok[col].dropna()
            row[f"{col}_mean"] = values.mean() if len(values) else float("nan")
            row[f"{col}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def _joined(values: pd.Series) -> str:
    """The distinct non-empty values of a column, sorted, joined by " / "."""
    return " / ".join(sorted({str(v) for v in values.dropna() if str(v) != ""}))


def aggregate(runs_root: str | Path, out_dir: str | Path, warn: bool = True
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write `summary.csv` and `summary_by_setting.csv` into `out_dir` (atomically)."""
    runs = summarize_runs(runs_root)
    settings = summarize_settings(runs)
    out_dir = Path(out_dir)
    write_text(out_dir / SUMMARY, runs.to_csv(index=False))
    write_text(out_dir / SUMMARY_BY_SETTING, settings.to_csv(index=False))
    if warn:
        for row in runs[runs["status"] != "ok"].itertuples():
            print(f"prunebench aggregate: {row.status}: {row.run_id}: {row.reason}",
                  file=sys.stderr)
        dup_notes = runs[(runs["status"] == "ok") & runs["reason"].fillna("").ne("")]
        for row in dup_notes.itertuples():
            print(f"prunebench aggregate: note: {row.run_id}: {row.reason}", file=sys.stderr)
    return runs, settings


def load_summary(results: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read back `summary.csv` and `summary_by_setting.csv` from a results folder."""
    results = Path(results)
    frames = []
    for name in (SUMMARY, SUMMARY_BY_SETTING):
        path = results / name
        if not path.is_file():
            raise PrunebenchError(f"{path} does not exist; run `python -m prunebench aggregate "
                                  f"--runs {results / 'runs'} --out {results}` first")
        df = pd.read_csv(path, keep_default_na=True)
        need = (RUN_KEYS + ["status", "reason", "run_id", "run_dir"] if name == SUMMARY else
                SETTING_KEYS + ["n", "n_failed", "n_incomplete", "n_excluded"]
                + [f"{c}_{s}" for c in AVERAGED for s in ("mean", "std")])
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise PrunebenchError(f"{path} lacks column(s) {', '.join(missing)} (written by an "
                                  "older prunebench?); rerun `python -m prunebench aggregate`")
        for col in ["variant", *PROVENANCE]:
            df[col] = df[col].fillna("").astype(str) if col in df else ""
        frames.append(df)
    return frames[0], frames[1]


PUBLISHED_COLUMNS = ("source", "method", "arch", "dataset", "sparsity", "accuracy", "setting")
MATCHED, NOT_REPRODUCED, AMBIGUOUS = "matched", "not reproduced", "ambiguous"


def load_published(path: str | Path) -> pd.DataFrame:
    """The published-results CSV, checked for the columns the comparison needs; `variant` (the
    grid variant reproducing a row) and `certainty` read as "" where the CSV lacks them."""
    path = Path(path)
    if not path.is_file():
        raise PrunebenchError(f"published results file {path} does not exist "
                              "(expected columns: " + ", ".join(PUBLISHED_COLUMNS) + ")")
    df = pd.read_csv(path, dtype={"variant": str})
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise PrunebenchError(f"published results file {path} lacks column(s) "
                              f"{', '.join(missing)}; expected {', '.join(PUBLISHED_COLUMNS)}")
    df["sparsity"] = pd.to_numeric(df["sparsity"], errors="coerce")
    df["accuracy"] = pd.to_numeric(df["accuracy"], errors="coerce")
    for col in ("variant", "certainty"):
        if col not in df:
            df[col] = ""
    for col in ("source", "method", "arch", "dataset", "setting", "variant", "certainty"):
        df[col] = df[col].fillna("").astype(str).str.strip()
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
            "published_top1_pct", "match", "match_reason", "ours_top1_pct_mean",
            "ours_top1_pct_std", "n", "n_failed", "ours_sparsity_achieved_mean",
            "difference_pct", *PROVENANCE, "published_row"]
    return merged[cols].sort_values(["dataset", "arch", "method", "sparsity", "variant",
                                     "source"], na_position="first",
                                    kind="stable").reset_index(drop=True)


def match_published(settings: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """The published rows compared with exactly one reproduced setting (see compare_published)."""
    compared = compare_published(settings, published)
    return compared[compared["match"] == MATCHED].reset_index(drop=True)


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
