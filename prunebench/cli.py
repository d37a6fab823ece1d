"""`python -m prunebench {prepare,run,list,aggregate,figures,report}`: the one entry point the
workflow rules call, so any job can be rerun by pasting its command."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from prunebench import __version__, paths
from prunebench.errors import Preempted, PrunebenchError, TrainingDiverged
from prunebench.plan.config import (
    DATASETS,
    RunConfig,
    load_config_file,
    parse_overrides,
    resolve,
)


def _sparsity(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"sparsity {text!r} is not a number in [0, 1) (omit --sparsity for no budget)"
        ) from None


def cmd_prepare(args: argparse.Namespace) -> None:
    from prunebench.data.prepared import prepare

    path = prepare(args.dataset, args.data_dir, root=args.root, val_fraction=args.val_fraction,
                   url=args.url, checksum=args.checksum)
    print(path)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run a parsed `run` command describes, resolved as every run is (config.resolve)."""
    file_config = load_config_file(args.config) if args.config else {}
    overrides = parse_overrides(args.overrides)
    if args.epochs is not None:
        overrides["epochs"] = str(args.epochs)
    return resolve(args.dataset, args.arch, args.method, args.sparsity, args.seed,
                   file_config, overrides, variant=args.variant)


def run_dir_for(args: argparse.Namespace) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    return paths.run_dir(args.out, args.dataset, args.arch, args.method, args.sparsity, args.seed,
                         args.variant)


def cmd_run(args: argparse.Namespace) -> None:
    from prunebench.training.registry import get_method
    from prunebench.training.run import execute

    get_method(args.method)
    cfg = run_config(args)
    run_dir = run_dir_for(args)
    if args.print_run_dir:
        print(run_dir)
        return
    metrics = execute(cfg, run_dir)
    print(json.dumps({k: metrics[k] for k in ("test_top1", "sparsity_achieved", "run_dir")}))


def cmd_list(args: argparse.Namespace) -> None:
    from prunebench.training.models import ARCHS
    from prunebench.training.registry import get_method, list_methods

    if args.options:
        print_options(args.options)
        return
    print("methods:")
    for name in list_methods():
        cls = get_method(name)
        kind = "budgeted" if cls.budgeted else "no budget"
        print(f"  {name:15s} {kind:10s} {cls.paper}")
    print("archs:    " + ", ".join(ARCHS))
    print("datasets: " + ", ".join(DATASETS))


def print_options(method: str) -> None:
    """One method's options (or, for `train`, the training settings): name, type, default and
    the help its dataclass field carries."""
    from prunebench.plan.config import TrainConfig
    from prunebench.training.registry import get_method

    if method == "train":
        print("train (every method; per dataset/arch recipe defaults in prunebench/plan/"
              "config.py recipe()): set with <key>=<value>")
        fields = dataclasses.fields(TrainConfig)
    else:
        cls = get_method(method)
        kind = "budgeted" if cls.budgeted else "no budget"
        print(f"{method} ({kind}; {cls.paper}): set with method.<option>=<value>")
        fields = dataclasses.fields(cls.hparams_cls)
    rows = []
    for f in fields:
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        choices = f.metadata.get("choices", ())
        allowed = f" (one of: {', '.join(choices)})" if choices else ""
        rows.append((f.name, kind, str(default), f.metadata.get("help", "") + allowed))
    if not rows:
        print("  (no options)")
    widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else []
    for row in rows:
        cells = "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
        print(f"  {cells}  {row[3]}".rstrip())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (empty, unset and False defaults say nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == "" \
                or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action) or ""


def cmd_coverage(args: argparse.Namespace) -> None:
    from prunebench.plan.grid import coverage, expand, read_published

    rows = coverage(expand(load_config_file(args.configfile)), read_published(args.published))
    for row, runs, reason in rows:
        name = (f"{row['source']}: {row['dataset']} {row['arch']} {row['method']} "
                f"sparsity={row['sparsity'] or 'none'} variant={row.get('variant') or '-'} "
                f"({row['setting']})")
        seeds = ",".join(str(run.seed) for run in runs)
        target = (f"{Path(runs[0].folder).parent}/seed{{{seeds}}}" if runs
                  else f"not in grid: {reason}")
        print(f"{name}\n    -> {target}")
    covered = sum(bool(runs) for _, runs, _ in rows)
    print(f"{covered} of {len(rows)} published rows covered")


def cmd_check_options(args: argparse.Namespace) -> None:
    from prunebench.training.registry import check_options

    for folder, entry in json.loads(args.option_sets).items():
        where = f"method options of {folder}"
        budgeted = check_options(entry["method"], entry["options"], where)
        if budgeted != entry["budgeted"]:
            raise PrunebenchError(
                f"{where}: the method says budgeted={budgeted}, the workflow's static reading of "
                "its source (plan/catalogue.py) said the opposite; declare the budget with the "
                "class attributes `budgeted` / `budget_option`")
        print(f"{folder}: ok")


def cmd_aggregate(args: argparse.Namespace) -> None:
    from prunebench.reporting.aggregate import aggregate

    runs, settings = aggregate(args.runs, args.out)
    counts = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
    print(f"{Path(args.out) / paths.SUMMARY}: {len(runs)} runs ({counts}); "
          f"{Path(args.out) / paths.SUMMARY_BY_SETTING}: {len(settings)} settings")


def cmd_figures(args: argparse.Namespace) -> None:
    from prunebench.reporting.figures import build_figures

    manifest = build_figures(args.results, args.published, args.out)
    for note in manifest["skipped"]:
        print(f"skipped {note['kind']}: {note['reason']}")
    print(f"{Path(args.out) / paths.MANIFEST}: {len(manifest['figures'])} figures")


def cmd_report(args: argparse.Namespace) -> None:
    from prunebench.reporting.report import build_report

    print(build_report(args.results, args.published, args.config, args.out,
                       pdf=not args.tex_only))


def build_parser() -> argparse.ArgumentParser:
    prog = "prunebench" if Path(sys.argv[0]).name == "prunebench" else "python -m prunebench"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"prunebench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="download/read a dataset into one checksummed tensor file")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-dir", default=paths.DATA_DIR, help="where the prepared file goes")
    p.add_argument("--root", default="", metavar="PATH", help=(
        "imagefolder: the folder or archive holding train/<class>/* and test/<class>/*. "
        "cifar10, cifar100, tinyimagenet: a LOCAL COPY read instead of the download when PATH is "
        "a folder holding train/ and test/ (at its top or one folder down; tinyimagenet also its "
        "official layout with wnids.txt) or a .tar/.tar.gz/.tgz/.zip of one not named as the "
        "official archive; its class folders and image size must be the dataset's official "
        "ones. Otherwise PATH is the folder where the official archive (e.g. "
        "cifar-10-python.tar.gz) is kept, or that archive's own path: used if its checksum "
        "matches, else downloaded there (default <data-dir>/raw). A folder holding both is "
        "refused as ambiguous."))
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="training images held out for validation, class-stratified")
    p.add_argument("--url", default="", help="download from this mirror instead")
    p.add_argument("--checksum", default="", help="expected checksum of a mirror's archive")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("run", help="train and prune one configuration into its run folder")
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--sparsity", type=_sparsity, default=None,
                   help="fraction of prunable weights removed, in [0, 1); omit for methods "
                   "without a budget")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (init, data order)")
    p.add_argument("--epochs", type=int, default=None, help="same as epochs=N")
    p.add_argument("--variant", default="", help="a variant of the method: with --config, its "
                   "settings come from the grids block naming it; its runs get their own folder")
    p.add_argument("--config", default="", help="YAML with train: and methods.<name>: sections "
                   "(a workflow config such as config/paper.yaml)")
    p.add_argument("--out", default=paths.RUNS_ROOT, help="root of the run folders")
    p.add_argument("--run-dir", default="", help="exact run folder (overrides --out layout)")
    p.add_argument("--print-run-dir", action="store_true", help="print the run folder and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="train options (lr=0.01) or method options (method.smart_rescale=false)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("coverage", help="which grid run reproduces each published row")
    p.add_argument("--configfile", default="config/config.yaml", help="the workflow config")
    p.add_argument("--published", default="config/published_results.csv",
                   help="the papers' numbers")
    p.set_defaults(func=cmd_coverage)

    p = sub.add_parser("check-options", help="build each method of the workflow with its "
                       "options (the workflow's first job: bad values stop it before any run)")
    p.add_argument("option_sets", help='JSON: {"gumbel@v": {"method": "gumbel", "options": {...},'
                   ' "budgeted": false}, ...}')
    p.set_defaults(func=cmd_check_options)

    p = sub.add_parser("list", help="list methods, archs and datasets")
    p.add_argument("--options", default="", metavar="METHOD",
                   help="print METHOD's options with their defaults and help instead "
                   "(`train`: the training settings)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("aggregate", help="run folders -> summary.csv (one row per run) and "
                       "summary_by_setting.csv (mean, std, n over seeds)")
    p.add_argument("--runs", default=paths.RUNS_ROOT, help="root of the run folders")
    p.add_argument("--out", default=paths.RESULTS, help="folder for the two CSVs")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("figures", help="seaborn figures (PDF + PNG) and manifest.json")
    p.add_argument("--results", default=paths.RESULTS, help="folder holding summary*.csv")
    p.add_argument("--published", default="config/published_results.csv",
                   help="the papers' numbers")
    p.add_argument("--out", default=paths.FIGURES_DIR, help="folder for the figures")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("report", help="render the LaTeX report and build report.pdf (latexmk)")
    p.add_argument("--results", default=paths.RESULTS,
                   help="folder holding summary*.csv, figures/")
    p.add_argument("--published", default="config/published_results.csv",
                   help="the papers' numbers")
    p.add_argument("--config", default="", help="the workflow config YAML, shown verbatim")
    p.add_argument("--out", default=paths.REPORT_DIR, help="folder for report.tex/.pdf")
    p.add_argument("--tex-only", action="store_true", help="write report.tex, build no PDF")
    p.set_defaults(func=cmd_report)
    for p in sub.choices.values():
        p.formatter_class = _HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand anywhere after `run`, between or after the flags
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and args.command != "run"):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except TrainingDiverged as e:
        print(f"prunebench: training diverged: {e}", file=sys.stderr)
        return paths.EXIT_DIVERGED
    except Preempted as e:
        print(f"prunebench: preempted: {e}; rerun the same command to resume", file=sys.stderr)
        return paths.EXIT_PREEMPTED
    except PrunebenchError as e:
        print(f"prunebench: error: {e}", file=sys.stderr)
        return paths.EXIT_ERROR
    return paths.EXIT_OK
