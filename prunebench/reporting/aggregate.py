"""Run folders -> `summary.csv` (one tidy row per run) and `summary_by_setting.csv` (over seeds).

Every folder under the runs root that holds a config.json, metrics.json or failed.json becomes one
row with a `status`: `ok` (finished), `failed` (failed.json, with its reason), `incomplete`
(started, not finished), `stale` (metrics.json or failed.json written under a different config
than the folder's config.json), `duplicate` (another folder holds the same setting and seed) or
`invalid` (unreadable files). Only `ok` rows are averaged; the others stay visible and counted.
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from prunebench import paths
from prunebench.errors import PrunebenchError
from prunebench.fileio import write_text
from prunebench.paths import SUMMARY, SUMMARY_BY_SETTING

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
# The workflow's record of a run's train_run job (Snakemake `benchmark:`, paths.BENCHMARK in the
# run folder; its last attempt where the job was retried): its column -> the summary's column.
JOB_COLUMNS = {"s": "job_wall_seconds", "max_rss": "job_max_rss_mb", "cpu_time": "job_cpu_seconds"}
# Engine fields the summary leaves out: `sparsity` repeats `sparsity_target`, `selection`
# repeats `train_selection`, `run_dir` is where the run was written (replaced by where it is now).
DROP = ("sparsity", "selection", "run_dir")
LEADING = [
    *RUN_KEYS, "status", "reason", "run_id",
    "test_top1_pct", "test_top5_pct", "val_top1_pct", "test_loss_nats",
    "sparsity_achieved", "density_achieved", "budgeted", "num_prunable", "kept_prunable",
    "params_total", "params_nonzero", "macs_dense", "macs_effective",
    "num_layers_collapsed", "layers_collapsed", "epoch_selected", "epochs_run",
    "train_seconds", "wall_seconds", *JOB_COLUMNS.values(),
]
TRAILING = [
    "paper", "frozen_weights", "device", "device_name", "hostname", "num_threads",
    "python_version", "torch_version", "timm_version", "prunebench_version", "git_commit",
    "git_dirty", "git_diff_sha256",
    "data_origin", "data_source", "data_source_sha256", "data_dir", "data_root",
    "config_digest", "run_dir",
]
# Metrics averaged per setting (mean, std with ddof=1, over the `ok` seeds).
AVERAGED = [
    "test_top1_pct", "test_top5_pct", "val_top1_pct", "sparsity_achieved", "density_achieved",
    "params_nonzero", "macs_dense", "macs_effective", "num_layers_collapsed", "train_seconds",
    "job_wall_seconds", "job_max_rss_mb",
]
# Where the data came from ("official" download or a "local" copy), carried into the settings.
PROVENANCE = ["data_origin", "data_source"]


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


def read_job_benchmark(path: Path) -> dict[str, float]:
    """The job's wall time, peak memory and CPU time from a Snakemake benchmark file (TSV, last
    row); {} when there is none, NaN for a value it could not measure ("NA", "-")."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    if len(lines) < 2:
        return {}
    row = dict(zip(lines[0].split("\t"), lines[-1].split("\t"), strict=False))
    out = {}
    for column, name in JOB_COLUMNS.items():
        try:
            out[name] = float(row.get(column, "nan"))
        except ValueError:
            out[name] = float("nan")
    return out


def read_run(run_dir: Path, runs_root: Path) -> dict[str, Any]:
    """One summary row for one run folder (any status)."""
    rel = run_dir.relative_to(runs_root)
    # The variant and seed of a folder whose config cannot be read come from its path.
    try:
        named: paths.Run | None = paths.Run.parse(rel)
    except ValueError:
        named = None
    row: dict[str, Any] = {"run_id": rel.as_posix(), "run_dir": str(run_dir),
                           "variant": named.variant if named else "", "reason": ""}
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
            row["config_digest"] = paths.config_digest(config)
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
    row.update(read_job_benchmark(run_dir / paths.BENCHMARK))
    if named and row.get("seed") is None:
        row["seed"] = named.seed
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
                              f"(python -m prunebench run ... --out {runs_root})")
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
                                  f"--runs {results / paths.RUNS} --out {results}` first")
        df = pd.read_csv(path, keep_default_na=True)
        need = (RUN_KEYS + ["status", "reason", "run_id", "run_dir"] if name == SUMMARY else
                SETTING_KEYS + ["n", "n_failed", "n_incomplete", "n_excluded"]
                + [f"{c}_{s}" for c in AVERAGED if c not in JOB_COLUMNS.values()
                   for s in ("mean", "std")])
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise PrunebenchError(f"{path} lacks column(s) {', '.join(missing)} (written by an "
                                  "older prunebench?); rerun `python -m prunebench aggregate`")
        for col in ["variant", *PROVENANCE]:
            df[col] = df[col].fillna("").astype(str) if col in df else ""
        frames.append(df)
    return frames[0], frames[1]
