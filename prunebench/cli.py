"""`prunebench {prepare,run,list,coverage,check-options,aggregate,figures,report}`: the one entry
point the workflow rules call (as `python -m prunebench`), so any job can be rerun by pasting
its command."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from prunebench import console, doctor, paths, resources
from prunebench.errors import Preempted, PrunebenchError, TrainingDiverged, os_error_text
from prunebench.plan.config import (
    ARCHS,
    DATASETS,
    RunConfig,
    check_arch,
    check_dataset,
    load_config_file,
    parse_overrides,
    resolve,
)


def _name_type(kind: str, check: Callable[[str], object],
               load: Callable[[], object] | None = None) -> Callable[[str], str]:
    """An argparse type running the engine's own check of a `kind` name: every subcommand
    refuses the same value with the same message (listing the allowed names) and exit code.
    `load` runs first, outside the check: its errors are errors of their own (exit 1)."""

    def parse(text: str) -> str:
        if load is not None:
            load()
        try:
            check(text)
        except PrunebenchError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    parse.__name__ = kind
    return parse


def _check_method(name: str) -> None:
    from prunebench.training.registry import get_method

    get_method(name)


def _load_methods() -> None:
    """Import every method (plugins included): one that fails to import is named as such."""
    from prunebench.training.registry import list_methods

    list_methods()


def _check_options_of(name: str) -> None:
    if name != "train":
        try:
            _check_method(name)
        except PrunebenchError as e:
            raise PrunebenchError(f"{e}; or train (the training settings)") from None


DATASET = _name_type("dataset", check_dataset)
ARCH = _name_type("arch", check_arch)
METHOD = _name_type("method", _check_method, load=_load_methods)
OPTIONS_OF = _name_type("method", _check_options_of, load=_load_methods)


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"sparsity {text!r} is not a number in [0, 1) (omit --sparsity for no budget)")
    return value


def _say(line: object) -> None:
    """A command's closing line (what it wrote), silenced by --quiet."""
    if not console.is_quiet():
        print(line)


def _published(args: argparse.Namespace) -> Path:
    return Path(args.published) if args.published else resources.path(resources.PUBLISHED)


def cmd_prepare(args: argparse.Namespace) -> None:
    from prunebench.data.prepared import prepare
    from prunebench.plan.config import TrainConfig
    from prunebench.plan.values import check_setting

    # the training setting's declared range, before anything is read or downloaded
    check_setting(TrainConfig, "val_fraction", args.val_fraction, "--val-fraction")
    path = prepare(args.dataset, args.data_dir, root=args.root, val_fraction=args.val_fraction,
                   url=args.url, checksum=args.checksum, image_size=args.image_size,
                   resize=args.resize)
    _say(path)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run a parsed `run` command describes, resolved as every run is (config.resolve)."""
    file_config = load_config_file(args.configfile) if args.configfile else {}
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
    _say(json.dumps({k: metrics[k] for k in ("test_top1", "sparsity_achieved", "run_dir")}))


def cmd_list(args: argparse.Namespace) -> None:
    from prunebench.training.models import ARCHS, timm_model_names
    from prunebench.training.registry import get_method, list_methods

    if args.options:
        print_options(args.options)
        return
    if args.timm:
        names = timm_model_names(args.timm)
        print("\n".join(names) if names else f"no timm model matches {args.timm!r}")
        return
    print("methods:")
    for name in list_methods():
        cls = get_method(name)
        kind = "budgeted" if cls.budgeted else "no budget"
        print(f"  {name:15s} {kind:10s} {cls.paper}")
    print("archs:    " + ", ".join(ARCHS))
    print("          and any timm model as timm/<name>, e.g. timm/convnext_atto, "
          "timm/vit_tiny_patch16_224,\n          timm/efficientnet_b0, timm/resnet50 "
          "(`list --timm 'convnext*'` lists timm's names)")
    print("datasets: " + ", ".join(DATASETS))


def print_options(method: str) -> None:
    """One method's options (or, for `train`, the training settings): name, type, default and
    the help its dataclass field carries."""
    from prunebench.plan.config import TrainConfig
    from prunebench.plan.values import allowed_text
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
        choices, bounds = f.metadata.get("choices", ()), f.metadata.get("bounds", "")
        allowed = (f" (one of: {', '.join(choices)})" if choices
                   else f" ({allowed_text(bounds)})" if bounds else "")
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

    config = args.configfile or resources.path(resources.DEFAULT_CONFIG)
    rows = coverage(expand(load_config_file(config)), read_published(_published(args)))
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
        _say(f"{folder}: ok")


def cmd_aggregate(args: argparse.Namespace) -> None:
    from prunebench.reporting.aggregate import aggregate

    runs, settings = aggregate(args.runs, args.out)
    counts = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
    _say(f"{Path(args.out) / paths.SUMMARY}: {len(runs)} runs ({counts}); "
         f"{Path(args.out) / paths.SUMMARY_BY_SETTING}: {len(settings)} settings")


def cmd_figures(args: argparse.Namespace) -> None:
    from prunebench.reporting.figures import build_figures

    manifest = build_figures(args.results, _published(args), args.out)
    for note in manifest["skipped"]:
        _say(f"skipped {note['kind']}: {note['reason']}")
    _say(f"{Path(args.out) / paths.MANIFEST}: {len(manifest['figures'])} figures")


def cmd_report(args: argparse.Namespace) -> None:
    from prunebench.reporting.report import build_report

    _say(build_report(args.results, _published(args), args.configfile or None, args.out,
                      pdf=not args.tex_only))


def _add_configfile(p: argparse.ArgumentParser, help: str, default: str = "") -> None:
    """The workflow config flag, named as Snakemake names it (`--configfile`); `--config` is
    kept as a hidden alias for commands written before."""
    p.add_argument("--configfile", default=default, metavar="YAML", help=help)
    p.add_argument("--config", dest="configfile", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)


def _add_published(p: argparse.ArgumentParser) -> None:
    p.add_argument("--published", default="", metavar="CSV", help=(
        "the papers' numbers (default: config/published_results.csv as shipped with "
        "prunebench)"))


def _subcommand(sub: argparse._SubParsersAction, name: str, summary: str, description: str,
                quiet: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=f"{summary}. {description}",
                          parents=[quiet], formatter_class=_HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    prog = "prunebench" if Path(sys.argv[0]).name == "prunebench" else "python -m prunebench"
    codes = "\n".join(f"  {code:3d}  {text}" for code, text in paths.EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=_EpilogFormatter,
        epilog=f"exit codes (every subcommand):\n{codes}")
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="as the subcommand's --quiet")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="print only results asked for and errors: no progress bars, "
                       "per-epoch lines or closing summary (log.txt keeps every line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dataset_help = f"the dataset, one of: {', '.join(DATASETS)}"

    p = _subcommand(sub, "prepare", "download or read a dataset into one checksummed tensor file",
                    "Every run reads the prepared file from --data-dir (the runs' data_dir).",
                    quiet)
    p.add_argument("--dataset", required=True, type=DATASET, metavar="NAME", help=dataset_help)
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
    p.add_argument("--image-size", type=int, default=0, metavar="N", help=(
        "imagefolder: resize every image to NxN (images of any sizes); 0 keeps them as they are "
        "(then all must share one size)"))
    p.add_argument("--resize", default="center_crop", choices=("center_crop", "stretch"),
                   help="with --image-size: center_crop scales the shorter side to N and cuts "
                   "the central square; stretch scales both sides to N")
    p.add_argument("--url", default="", help="download from this mirror instead")
    p.add_argument("--checksum", default="", help="expected checksum of a mirror's archive")
    p.set_defaults(func=cmd_prepare)

    p = _subcommand(sub, "run", "train and prune one configuration into its run folder",
                    "Settings come from the defaults, the dataset/arch recipe, --configfile "
                    "(and its --variant) and key=value overrides, in that order; a finished "
                    "run is skipped, an interrupted one resumes.", quiet)
    p.add_argument("--dataset", required=True, type=DATASET, metavar="NAME", help=dataset_help)
    p.add_argument("--arch", required=True, type=ARCH, metavar="NAME",
                   help=f"the architecture: {', '.join(ARCHS)}, or any timm model as "
                   "timm/<name> (`prunebench list` shows all)")
    p.add_argument("--method", required=True, type=METHOD, metavar="NAME",
                   help="a registered pruning method (`prunebench list` shows them, "
                   "`prunebench list --options NAME` its options)")
    p.add_argument("--sparsity", type=_sparsity, default=None,
                   help="fraction of prunable weights removed, in [0, 1); omit for methods "
                   "without a budget")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (init, data order)")
    p.add_argument("--epochs", type=int, default=None, help="same as epochs=N")
    p.add_argument("--variant", default="", help="a variant of the method: with --configfile, "
                   "its settings come from the grids block naming it; its runs get their own "
                   "folder")
    _add_configfile(p, "YAML with train: and methods.<name>: sections (a workflow config such "
                    "as config/paper.yaml)")
    p.add_argument("--out", default=paths.RUNS_ROOT, help="root of the run folders")
    p.add_argument("--run-dir", default="", help="exact run folder (overrides --out layout)")
    p.add_argument("--print-run-dir", action="store_true", help="print the run folder and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="train options (lr=0.01) or method options (method.smart_rescale=false)")
    p.set_defaults(func=cmd_run)

    p = _subcommand(sub, "coverage", "which grid run reproduces each published row",
                    "Expands the workflow config's grid and prints, for every published row, "
                    "the run folders of the grid that reproduce it or why none does.", quiet)
    _add_configfile(p, "the workflow config (default: config/config.yaml as shipped with "
                    "prunebench)")
    _add_published(p)
    p.set_defaults(func=cmd_coverage)

    p = _subcommand(sub, "check-options", "build each method of the workflow with its options",
                    "The workflow's first job: a value only the method refuses stops the "
                    "workflow before any run starts.", quiet)
    p.add_argument("option_sets", help='JSON: {"gumbel@v": {"method": "gumbel", "options": {...},'
                   ' "budgeted": false}, ...}')
    p.set_defaults(func=cmd_check_options)

    p = _subcommand(sub, "list", "list methods, archs and datasets",
                    "Methods include those other installed packages register through the "
                    "prunebench.methods entry-point group.", quiet)
    p.add_argument("--options", default=None, type=OPTIONS_OF, metavar="METHOD",
                   help="print METHOD's options with their defaults and help instead "
                   "(`train`: the training settings)")
    p.add_argument("--timm", default="", metavar="PATTERN",
                   help="print timm's model names matching PATTERN (e.g. 'vit_*') as archs "
                   "(timm/<name>) instead")
    p.set_defaults(func=cmd_list)

    p = _subcommand(sub, "aggregate", "run folders -> summary.csv and summary_by_setting.csv",
                    "summary.csv has one row per run folder (with its status), "
                    "summary_by_setting.csv the mean, std and n over seeds per setting.", quiet)
    p.add_argument("--runs", default=paths.RUNS_ROOT, help="root of the run folders")
    p.add_argument("--out", default=paths.RESULTS, help="folder for the two CSVs")
    p.set_defaults(func=cmd_aggregate)

    p = _subcommand(sub, "figures", "seaborn figures (PDF + PNG) and manifest.json",
                    "Drawn from the summaries of `prunebench aggregate`, with the published "
                    "numbers overlaid.", quiet)
    p.add_argument("--results", default=paths.RESULTS, help="folder holding summary*.csv")
    _add_published(p)
    p.add_argument("--out", default=paths.FIGURES_DIR, help="folder for the figures")
    p.set_defaults(func=cmd_figures)

    p = _subcommand(sub, "report", "render the LaTeX report and build report.pdf (latexmk)",
                    "From the summaries and figures; every number comes from those files.",
                    quiet)
    p.add_argument("--results", default=paths.RESULTS,
                   help="folder holding summary*.csv, figures/")
    _add_published(p)
    _add_configfile(p, "the workflow config, shown verbatim in the report")
    p.add_argument("--out", default=paths.REPORT_DIR, help="folder for report.tex/.pdf")
    p.add_argument("--tex-only", action="store_true", help="write report.tex, build no PDF")
    p.set_defaults(func=cmd_report)

    doctor.add_arguments(_subcommand(sub, "doctor", doctor.SUMMARY, doctor.DESCRIPTION, quiet))
    return parser


class _EpilogFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The top-level help: defaults shown, the exit-code table kept as written."""


class _VersionAction(argparse.Action):
    """`--version`: the version from git (asked only when requested, not at every start)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default,
                         help=help or "print the version and where it comes from, and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from prunebench import provenance

        print(provenance.current().line())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return its exit code (paths.EXIT_CODES)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # key=value overrides may stand anywhere after `run`, between or after the flags
        stray = [e for e in extra if e.startswith("-") or "=" not in e]
        if stray or (extra and args.command != "run"):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
        console.set_quiet(args.quiet)
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
    except TrainingDiverged as e:
        print(f"prunebench: training diverged: {e}", file=sys.stderr)
        return paths.EXIT_DIVERGED
    except Preempted as e:
        print(f"prunebench: preempted: {e}; rerun the same command to resume", file=sys.stderr)
        return paths.EXIT_PREEMPTED
    except PrunebenchError as e:
        print(f"prunebench: error: {e}", file=sys.stderr)
        return paths.EXIT_ERROR
    except BrokenPipeError:
        # the reader stopped early (`prunebench list | head`): no traceback, and none again
        # when Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return paths.EXIT_ERROR
    except OSError as e:  # an I/O error outside the suite's own writes (a folder, a lock file)
        where = f"{e.filename}: " if e.filename else ""
        print(f"prunebench: error: {where}{os_error_text(e)}", file=sys.stderr)
        return paths.EXIT_ERROR
    return paths.EXIT_OK
