"""Figures and the LaTeX report from synthetic run folders."""
from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from runfactory import make_run, write_published

from prunebench.cli import main
from prunebench.errors import PrunebenchError
from prunebench.fileio import write_csv
from prunebench.reporting.aggregate import aggregate, load_summary
from prunebench.reporting.figures import (
    accuracy_vs_macs,
    accuracy_vs_sparsity,
    build_figures,
    paper_curves,
)
from prunebench.reporting.papers import PAPERS, PROPOSED
from prunebench.reporting.published import compare_published, load_published
from prunebench.reporting.report import build_report, latex_escape
from prunebench.reporting.statistics import paired_differences
from prunebench.reporting.style import looks, results_looks

REPARAM_90 = (84.0, 86.0)  # seeds 0, 1: mean 85.00, std 1.41; published 85.57
NASTY = r"loss & 100% _nan_ #1 {x} ~ ^ \ $ <>"
CONFIG_TEXT = "# quick grid: 50% & $x$ _y_ \\end{lstlisting}\nseeds: [0, 1]\n"
HAS_LATEXMK = shutil.which("latexmk") is not None


def _grid(runs: Path) -> None:
    for seed in (0, 1):
        make_run(runs, dataset="cifar10", method="reparam", sparsity=0.9, seed=seed,
                 top1=REPARAM_90[seed])
        make_run(runs, dataset="cifar10", method="reparam", sparsity=0.95, seed=seed,
                 top1=80.0 + seed)
        make_run(runs, dataset="cifar10", method="magnitude_ft", sparsity=0.9, seed=seed,
                 top1=88.0 + seed)
        make_run(runs, dataset="cifar10", method="dense", sparsity=None, seed=seed,
                 top1=91.0 + seed)
        make_run(runs, dataset="cifar10", method="gumbel", sparsity=None, seed=seed,
                 top1=79.0 + seed, achieved=0.45 + 0.1 * seed)
        make_run(runs, method="random", sparsity=0.5, seed=seed, top1=95.0 + seed)
    make_run(runs, dataset="cifar10", method="reparam", sparsity=0.97, seed=0, status="failed",
             reason=NASTY)
    make_run(runs, dataset="cifar10", arch="conv2", method="reparam", sparsity=0.9, seed=0,
             status="failed")


PUBLISHED = [
    "dupont2021,reparam,conv4,cifar10,0.90,85.57,no fine-tuning,slides",
    "dupont2021,reparam,conv4,cifar10,0.95,84.59,no fine-tuning,slides",
    "dupont2021,magnitude_ft,conv4,cifar10,0.90,89.50,prune then fine-tune,slides",
    f'dupont2022,gumbel,conv4,cifar10,,80.0,"crop+flip; {NASTY}",poster',
    "ramanujan2020,edgepopup,conv4,cifar10,0.50,86.0,frozen weights,figure",
    "dupont2022,supermask,conv4,cifar10,,64.4,frozen weights,poster",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Aggregated synthetic results with figures, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("results")
    _grid(root / "runs")
    aggregate(root / "runs", root, warn=False)
    write_published(root / "published.csv", PUBLISHED)
    (root / "config.yaml").write_text(CONFIG_TEXT)
    build_figures(root, root / "published.csv", root / "figures")
    return root


def _manifest(results: Path) -> dict:
    return json.loads((results / "figures" / "manifest.json").read_text())


def test_figures_written_with_manifest(results: Path) -> None:
    manifest = _manifest(results)
    kinds = {(f["kind"], f.get("dataset"), f.get("arch")) for f in manifest["figures"]}
    for kind in ("accuracy_vs_sparsity", "training_curves", "layer_density"):
        assert (kind, "cifar10", "conv4") in kinds and (kind, "digits", "conv4") in kinds
    assert ("reproduced_vs_published", None, None) in kinds
    for entry in manifest["figures"]:
        pdf, png = results / "figures" / entry["pdf"], results / "figures" / entry["png"]
        assert pdf.read_bytes()[:4] == b"%PDF"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert entry["caption"]
    skipped = {(s["kind"], s.get("arch")) for s in manifest["skipped"]}
    assert ("accuracy_vs_sparsity", "conv2") in skipped  # only a failed run there
    assert not list((results / "figures").glob(".*.tmp"))


def test_published_points_are_overlaid(results: Path) -> None:
    runs, settings = load_summary(results)
    published = load_published(results / "published.csv")
    styles = results_looks(runs, published)
    fig, caption = accuracy_vs_sparsity(runs, settings, published, "cifar10", "conv4", styles)
    ax = fig.axes[0]
    points = {(round(float(x), 4), round(float(y), 2)) for c in ax.collections
              if isinstance(c, PathCollection) for x, y in c.get_offsets()}
    assert (0.1, 85.57) in points and (0.05, 84.59) in points  # budgeted: at their sparsity
    assert (0.5, 86.0) in points  # a published method we did not run
    assert (0.5, 80.0) in points  # gumbel, no sparsity: at our mean achieved (0.45, 0.55)
    horizontal = [line.get_ydata()[0] for line in ax.lines
                  if len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2]
    assert 64.4 in horizontal  # supermask: no sparsity, not run by us
    assert "published" in caption and "1 failed run(s)" in caption


def test_digits_only_skips_comparison(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The quick grid's shape, end to end through the CLI: no published result matches."""
    make_run(tmp_path / "runs", seed=0, top1=90.0)
    make_run(tmp_path / "runs", method="dense", sparsity=None, seed=0, top1=97.0)
    write_published(tmp_path / "pub.csv", PUBLISHED)
    assert main(["aggregate", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path)]) == 0
    assert main(["figures", "--results", str(tmp_path), "--published", str(tmp_path / "pub.csv"),
                 "--out", str(tmp_path / "figures")]) == 0
    assert "skipped reproduced_vs_published" in capsys.readouterr().out
    manifest = _manifest(tmp_path)
    assert "reproduced_vs_published" not in {f["kind"] for f in manifest["figures"]}
    note = [s for s in manifest["skipped"] if s["kind"] == "reproduced_vs_published"]
    assert note and "no published result matches" in note[0]["reason"]
    assert main(["report", "--results", str(tmp_path), "--published", str(tmp_path / "pub.csv"),
                 "--out", str(tmp_path / "report"), "--tex-only"]) == 0
    text = (tmp_path / "report" / "report.tex").read_text()
    assert "No published result matches a reproduced setting" in text
    assert "No workflow configuration was given" in text
    assert latex_escape("Figure reproduced_vs_published skipped") in text


def test_a_run_without_epochs_of_its_own_has_no_curve(tmp_path: Path, monkeypatch) -> None:
    """magnitude from a shared dense run trains no epoch: its history.csv is empty, and the
    figures draw the other runs' curves without it (the curves drawn are recorded: a magnitude
    panel, e.g. one fed its dense run's history, fails)."""
    from prunebench.reporting import figures

    make_run(tmp_path / "runs", method="dense", sparsity=None, seed=0, top1=97.0)
    empty = make_run(tmp_path / "runs", method="magnitude", sparsity=0.9, seed=0, top1=50.0)
    write_csv(empty / "history.csv", [])  # as the engine writes a run with no epoch
    aggregate(tmp_path / "runs", tmp_path, warn=False)
    write_published(tmp_path / "pub.csv", PUBLISHED)
    drawn: list[pd.DataFrame] = []
    draw = figures.training_curves
    monkeypatch.setattr(figures, "training_curves",
                        lambda history, *a: drawn.append(history) or draw(history, *a))
    manifest = build_figures(tmp_path, tmp_path / "pub.csv", tmp_path / "figures")
    assert "training_curves" in {f["kind"] for f in manifest["figures"]}
    assert len(drawn) == 1 and set(drawn[0]["label"]) == {"dense"}
    dense_epochs = pd.read_csv(tmp_path / "runs" / drawn[0]["run_id"].iloc[0] / "history.csv")
    assert sorted(drawn[0]["epoch"]) == sorted(dense_epochs["epoch"])


def test_no_finished_run_still_reports(tmp_path: Path) -> None:
    """Only failed and unfinished runs: no figure, no mean, every run listed."""
    make_run(tmp_path / "runs", seed=0, status="failed", reason="loss became nan")
    make_run(tmp_path / "runs", seed=1, status="incomplete")
    aggregate(tmp_path / "runs", tmp_path, warn=False)
    write_published(tmp_path / "pub.csv", PUBLISHED)
    manifest = build_figures(tmp_path, tmp_path / "pub.csv", tmp_path / "figures")
    assert manifest["figures"] == [] and len(manifest["skipped"]) == 2
    tex = build_report(tmp_path, tmp_path / "pub.csv", None, tmp_path / "report",
                       pdf=False).read_text()
    assert r"\textit{no result} {\scriptsize(0, 1 failed, 1 unfinished)}" in tex
    assert "loss became nan" in tex and "in progress or interrupted" in tex
    assert "No figures were drawn." in tex


def test_latex_escape() -> None:
    assert latex_escape("a_b & 50% #1 $x$ {y}") == r"a\_b \& 50\% \#1 \$x\$ \{y\}"
    assert latex_escape("~^\\") == r"\textasciitilde{}\textasciicircum{}\textbackslash{}"


def test_report_tex_escapes_and_matches_summary(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    tex = build_report(results, results / "published.csv", results / "config.yaml", out,
                       pdf=False).read_text()
    assert latex_escape(NASTY) in tex and NASTY not in tex
    assert r"magnitude\_ft" in tex and "magnitude_ft" not in tex.replace(r"magnitude\_ft", "")
    mean, std = statistics.mean(REPARAM_90), statistics.stdev(REPARAM_90)
    assert f"{mean:.2f} $\\pm$ {std:.2f} {{\\scriptsize(2)}}" in tex  # results table
    assert f"{mean - 85.57:+.2f}" in tex  # published-vs-reproduced difference
    _, settings = load_summary(results)
    for r in settings[settings["n"] > 1].itertuples():
        assert f"{r.test_top1_pct_mean:.2f} $\\pm$ {r.test_top1_pct_std:.2f}" in tex
    assert r"\textit{no result} {\scriptsize(0, 1 failed)}" in tex
    assert r"\begin{tabular}" in tex and r"\toprule" in tex
    assert (out / "workflow_config_listing.yaml").read_text() == CONFIG_TEXT
    assert (out / "workflow_config.yaml").read_bytes() == CONFIG_TEXT.encode()
    figures = list((out / "figures").glob("*.pdf"))
    assert len(figures) == len(_manifest(results)["figures"])
    assert all(f"figures/{f.name}" in tex for f in figures)


@pytest.mark.skipif(not HAS_LATEXMK, reason="latexmk not installed: apt-get install "
                    "texlive-latex-recommended latexmk")
def test_report_pdf_builds(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    pdf = build_report(results, results / "published.csv", results / "config.yaml", out)
    assert pdf == out / "report.pdf" and pdf.read_bytes()[:4] == b"%PDF"
    assert (out / "report.tex").is_file()


def test_missing_latexmk_is_a_clear_error(results: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.pdf").write_bytes(b"%PDF from an earlier build")
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(PrunebenchError, match="latexmk not found.*apt-get install"):
        build_report(results, results / "published.csv", results / "config.yaml", out)
    assert (out / "report.tex").is_file() and not (out / "report.pdf").exists()
    code = main(["report", "--results", str(results), "--published",
                 str(results / "published.csv"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "latexmk not found" in err


def test_cli_report_names_a_missing_input(results: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    for flag, path in (("--published", tmp_path / "missing.csv"),
                       ("--config", tmp_path / "missing.yaml")):
        args = {"--published": str(results / "published.csv"), flag: str(path)}
        assert main(["report", "--results", str(results), "--out", str(tmp_path / "report"),
                     "--tex-only", *[x for kv in args.items() for x in kv]]) == 1
        assert f"{path} does not exist" in capsys.readouterr().err
    assert main(["figures", "--results", str(tmp_path), "--published",
                 str(results / "published.csv"), "--out", str(tmp_path / "figures")]) == 1
    assert "summary.csv does not exist" in capsys.readouterr().err


def test_old_summary_asks_for_aggregate(results: Path, tmp_path: Path) -> None:
    shutil.copy(results / "summary.csv", tmp_path / "summary.csv")
    settings = pd.read_csv(results / "summary_by_setting.csv").drop(columns=["n_excluded"])
    settings.to_csv(tmp_path / "summary_by_setting.csv", index=False)
    with pytest.raises(PrunebenchError, match="n_excluded.*rerun"):
        load_summary(tmp_path)


# A fabricated reproduction of parts of both papers (numbers made up: they test the plumbing).
# conv4/cifar10 per budget and method: test top-1 of seeds 0, 1, 2.
PAPER_TOP1 = {
    0.9: {"reparam": [85.0, 86.5, 84.0], "magnitude": [50.0, 52.0, 51.0],
          "magnitude_ft": [88.0, 87.0, 88.5], "random": [70.0, 71.0, 72.0]},
    0.95: {"reparam": [80.0, 81.0, 82.0], "magnitude": [20.0, 22.0, 21.0],
           "magnitude_ft": [70.0, 70.5, 71.5]},
}
T_975 = {1: 12.706205, 2: 4.302653, 3: 3.182446}  # Student-t 97.5 % quantiles (printed tables)
PAPER_PUBLISHED = [
    "dupont2021_reparam,reparam,conv4,cifar10,0.90,85.57,no fine-tuning,slides,",
    "dupont2021_reparam,reparam,conv4,cifar10,0.95,84.59,no fine-tuning,slides,",
    "dupont2021_reparam,reparam,conv4,cifar10,0.97,82.60,no fine-tuning,slides,",
    "dupont2021_reparam,magnitude,conv4,cifar10,0.90,54.94,no fine-tuning,slides,",
    "dupont2021_reparam,magnitude,conv4,cifar10,0.95,22.91,no fine-tuning,slides,",
    "dupont2021_reparam,magnitude_ft,conv4,cifar10,0.90,89.50,fine-tune,slides,",
    "dupont2021_reparam,magnitude_ft,conv4,cifar10,0.95,87.38,fine-tune,slides,",
    "dupont2021_reparam,reparam,conv4,tinyimagenet,0.90,39.0,no fine-tuning,slides,",
    "dupont2022_gumbel,gumbel,conv2,cifar10,,77.5,signed-constant; crop+flip; no rescale,poster,"
    "sc-aug",
    "dupont2022_gumbel,gumbel,conv2,cifar10,,77.5,signed-constant; crop+flip; smart rescale,"
    "poster,sc-aug-rescale",
    "dupont2022_gumbel,edgepopup,conv2,cifar10,0.50,71.5,signed-constant; crop+flip,poster,sc-aug",
    "dupont2022_gumbel,gumbel,conv2,cifar10,,68.7,kaiming; no augmentation; no rescale,poster,"
    "kn-noaug",
    "dupont2022_gumbel,supermask,conv2,cifar10,,64.4,kaiming; no augmentation,poster,kn-noaug",
    "dupont2022_gumbel,gumbel,conv2,cifar100,,43.4,signed-constant; smart rescale,table,sc-rescale",
    "dupont2022_gumbel,edgepopup,conv2,cifar100,0.5,40.9,signed-constant,table,",
    "synflow,random,conv4,cifar10,0.90,70.0,random at init,arrays,",
    "other,random,conv4,cifar10,0.90,71.0,random at init,paper,",
]


@pytest.fixture(scope="module")
def papers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fabricated runs of both papers' settings, aggregated, with figures and report.tex."""
    root = tmp_path_factory.mktemp("papers")
    runs = root / "runs"
    for sparsity, methods in PAPER_TOP1.items():
        for method, values in methods.items():
            for seed, top1 in enumerate(values):
                make_run(runs, dataset="cifar10", method=method, sparsity=sparsity, seed=seed,
                         top1=top1)
    for seed in range(3):
        make_run(runs, dataset="cifar10", method="dense", sparsity=None, seed=seed,
                 top1=92.0 + seed)
        for method, variant, top1, sparsity in (("gumbel", "sc-aug", 76.0, None),
                                                ("gumbel", "sc-aug-rescale", 77.0, None),
                                                ("supermask", "kn-noaug", 63.0, None),
                                                ("edgepopup", "sc-aug", 70.0, 0.5)):
            make_run(runs, dataset="cifar10", arch="conv2", method=method, variant=variant,
                     sparsity=sparsity, seed=seed, top1=top1 + seed, achieved=0.5,
                     data_origin="local")
        make_run(runs, dataset="cifar100", arch="conv2", method="gumbel", variant="sc-rescale",
                 sparsity=None, seed=seed, top1=42.0 + seed, achieved=0.5)
    aggregate(runs, root, warn=False)
    write_published(root / "published.csv", PAPER_PUBLISHED, variant=True)
    build_figures(root, root / "published.csv", root / "figures")
    build_report(root, root / "published.csv", None, root / "report", pdf=False)
    return root


def _papers_tex(papers: Path) -> str:
    return (papers / "report" / "report.tex").read_text()


def test_variants_are_separate_labelled_rows(papers: Path) -> None:
    """Each variant is its own row and legend entry (the legend is read from the drawn figure:
    red when accuracy_vs_sparsity labels runs by method alone)."""
    _, settings = load_summary(papers)
    gumbel = settings[(settings["method"] == "gumbel") & (settings["dataset"] == "cifar10")]
    assert sorted(gumbel["variant"]) == ["sc-aug", "sc-aug-rescale"]
    assert gumbel["n"].tolist() == [3, 3]
    tex = _papers_tex(papers)
    table = tex[tex.index(r"\section{Results}"):tex.index(r"\section{Published versus")]
    assert r"\vkey{0072B2}gumbel (sc-aug)$^\dagger$ & 77.00 $\pm$ 1.00" in table  # as drawn
    assert r"gumbel (sc-aug-rescale)$^\dagger$ & 78.00 $\pm$ 1.00" in table
    fig = [f for f in _manifest(papers)["figures"]
           if f["kind"] == "accuracy_vs_sparsity" and f["arch"] == "conv2"
           and f["dataset"] == "cifar10"]
    assert len(fig) == 1
    runs, _ = load_summary(papers)
    published = load_published(papers / "published.csv")
    drawn, _ = accuracy_vs_sparsity(runs, settings, published, "cifar10", "conv2",
                                    results_looks(runs, published))
    legend = [t.get_text() for t in drawn.axes[0].get_legend().get_texts()]
    assert {"gumbel (sc-aug)", "gumbel (sc-aug-rescale)"} <= set(legend)
    assert "gumbel" not in legend  # the variants' runs are not pooled under the bare method


def test_matching_picks_one_published_number_per_setting(papers: Path) -> None:
    _, settings = load_summary(papers)
    compared = compare_published(settings, load_published(papers / "published.csv"))
    matched = compared[compared["match"] == "matched"]
    assert not matched.duplicated(["dataset", "arch", "method", "sparsity", "variant"]).any()
    assert len(matched) == 11
    rescale = matched[(matched["method"] == "gumbel") & (matched["variant"] == "sc-aug-rescale")]
    assert rescale["setting"].item().endswith("smart rescale")
    assert rescale["difference_pct"].item() == pytest.approx(78.0 - 77.5)
    ambiguous = compared[compared["match"] == "ambiguous"]
    assert sorted(ambiguous["source"]) == ["other", "synflow"]
    assert ambiguous["difference_pct"].isna().all()
    missing = compared[compared["match"] == "not reproduced"]
    assert sorted(zip(missing["dataset"], missing["method"], missing["variant"],
                      strict=True)) == [
        ("cifar10", "gumbel", "kn-noaug"), ("cifar10", "reparam", ""),
        ("cifar100", "edgepopup", ""), ("tinyimagenet", "reparam", "")]
    assert (missing["match_reason"] == "no finished runs of that setting").all()


def test_csv_without_variant_column_reads_as_default(results: Path, tmp_path: Path) -> None:
    """The published CSV before its variant column: variant "", and published rows that then
    name one setting twice are listed as ambiguous, not set beside it twice."""
    published = load_published(results / "published.csv")
    assert set(published["variant"]) == {""}
    rows = [*PUBLISHED, "dupont2022,gumbel,conv4,cifar10,,70.0,kaiming; no augmentation,poster"]
    write_published(tmp_path / "pub.csv", rows)
    _, settings = load_summary(results)
    compared = compare_published(settings, load_published(tmp_path / "pub.csv"))
    gumbel = compared[compared["method"] == "gumbel"]
    assert gumbel["match"].tolist() == ["ambiguous", "ambiguous"]
    reparam = compared[(compared["method"] == "reparam") & (compared["sparsity"] == 0.9)]
    assert reparam["match"].item() == "matched"


def test_uncovered_published_rows_are_listed(papers: Path) -> None:
    tex = _papers_tex(papers)
    section = tex[tex.index(r"\subsection{Published results not compared}"):
                  tex.index(r"\section{Does the difference hold")]
    assert "6 of the 17 published rows have no number of ours" in section
    assert section.count("not reproduced: no finished runs of that setting") == 3
    assert r"cifar10 & conv4 & \mkey{D55E00}reparam & 0.97 & dupont2021\_reparam" in section
    assert section.count("ambiguous: 2 published rows") == 2
    assert "no finished run here (published rows in\nparentheses): tinyimagenet / conv4 (1)." \
        in section  # a dataset we did not run: counted, not itemised


def test_paired_interval_matches_hand_computation(papers: Path) -> None:
    runs, settings = load_summary(papers)
    pairs = paired_differences(runs, settings, PROPOSED)
    row = pairs[(pairs["method"] == "reparam") & (pairs["sparsity_target"] == 0.9)].iloc[0]
    assert row["baseline_method"] == "magnitude_ft"  # the best baseline at 0.9
    d = [a - b for a, b in zip(PAPER_TOP1[0.9]["reparam"], PAPER_TOP1[0.9]["magnitude_ft"],
                               strict=True)]
    half = T_975[2] * statistics.stdev(d) / math.sqrt(3)
    assert row["n"] == 3 and row["seeds"] == "0;1;2"
    assert row["mean_difference_pct"] == pytest.approx(statistics.mean(d))
    assert (row["ci_low_pct"], row["ci_high_pct"]) == pytest.approx(
        (statistics.mean(d) - half, statistics.mean(d) + half), abs=1e-4)
    assert row["verdict"] == "not resolved"
    at95 = pairs[(pairs["method"] == "reparam") & (pairs["sparsity_target"] == 0.95)].iloc[0]
    assert at95["verdict"] == "holds" and at95["ci_low_pct"] > 0
    gumbel = pairs[(pairs["dataset"] == "cifar10") & (pairs["method"] == "gumbel")]
    baselines = dict(zip(gumbel["variant"], zip(gumbel["baseline_method"],
                                                gumbel["baseline_sparsity_target"], strict=True),
                         strict=True))
    assert baselines["sc-aug"] == ("edgepopup", 0.5)  # its own variant's baseline, at its budget
    assert baselines["sc-aug-rescale"][0] == "supermask"  # else no budget; dense is not pruned
    alone = pairs[pairs["dataset"] == "cifar100"].iloc[0]
    assert alone["verdict"] == "no pruned baseline" and alone["n"] == 0
    tex = _papers_tex(papers)
    assert (f"[{row['ci_low_pct']:+.2f}, {row['ci_high_pct']:+.2f}] & not resolved"
            in tex)
    assert r"gumbel (sc-aug) & \vkey{88CCEE}edgepopup (sc-aug) at 0.5 & 3 &" in tex


def test_paired_interval_uses_shared_seeds_only(papers: Path) -> None:
    runs, settings = load_summary(papers)
    drop = (runs["method"] == "magnitude_ft") & (runs["seed"] == 2)
    pairs = paired_differences(runs[~drop], settings, PROPOSED)
    row = pairs[(pairs["method"] == "reparam") & (pairs["sparsity_target"] == 0.9)].iloc[0]
    d = [85.0 - 88.0, 86.5 - 87.0]
    assert row["n"] == 2 and row["seeds"] == "0;1"
    assert row["ci_high_pct"] - row["mean_difference_pct"] == pytest.approx(
        T_975[1] * statistics.stdev(d) / math.sqrt(2), abs=1e-4)


def test_paper_sections_render(papers: Path) -> None:
    manifest = _manifest(papers)
    drawn = {(f["kind"], f["source"], f.get("dataset"), f.get("arch"))
             for f in manifest["figures"] if "source" in f}
    assert drawn == {("paper_curves", "dupont2021_reparam", "cifar10", "conv4"),
                     ("paper_bars", "dupont2022_gumbel", "cifar10", None),
                     ("paper_table", "dupont2022_gumbel", "cifar100", None)}
    for entry in manifest["figures"]:
        if entry["kind"].startswith("paper_"):
            assert (papers / "figures" / entry["pdf"]).read_bytes()[:4] == b"%PDF"
            assert (papers / "figures" / entry["png"]).is_file()
    skipped = [s for s in manifest["skipped"] if s["kind"] == "paper_curves"]
    assert [(s["dataset"], s["arch"]) for s in skipped] == [("tinyimagenet", "conv4")]
    assert skipped[0]["reason"].startswith("not reproduced")
    tex = _papers_tex(papers)
    section = tex[tex.index(r"\section{The papers' figures, regenerated}"):
                  tex.index(r"\section{Figures}")]
    for title in PAPERS.values():
        assert latex_escape(title) in section
    assert "figures/paper_dupont2021_reparam_curves_cifar10_conv4.pdf" in section
    assert "figures/paper_dupont2022_gumbel_bars_cifar10.pdf" in section
    assert r"conv2 & \vkey{0072B2}gumbel (sc-rescale) & signed-constant; smart rescale & 43.4 & " \
           r"43.0 $\pm$ 1.0 (3) &" in section
    assert r"conv2 & \mkey{88CCEE}edgepopup & signed-constant & 40.9 & not reproduced &" \
        in section


def test_paper_curves_overlay_published_values(papers: Path) -> None:
    _, settings = load_summary(papers)
    compared = compare_published(settings, load_published(papers / "published.csv"))
    rows = compared[(compared["source"] == "dupont2021_reparam")
                    & (compared["dataset"] == "cifar10")]
    rows = rows.assign(label=rows["method"])
    fig, caption = paper_curves(rows, "paper", "cifar10", "conv4", {})
    lines = {tuple(round(float(y), 2) for y in line.get_ydata()) for line in fig.axes[0].lines}
    assert (85.57, 84.59, 82.6) in lines  # published reparam, all three budgets
    assert (85.17, 81.0) in lines  # ours: means over seeds at 0.9 and 0.95
    assert "1 of the 7 published setting(s) have no finished run" in caption


def test_macs_figure_written(papers: Path) -> None:
    entries = [f for f in _manifest(papers)["figures"] if f["kind"] == "accuracy_vs_macs"]
    assert {(f["dataset"], f["arch"]) for f in entries} == {
        ("cifar10", "conv2"), ("cifar10", "conv4"), ("cifar100", "conv2")}
    for entry in entries:
        assert (papers / "figures" / entry["pdf"]).read_bytes()[:4] == b"%PDF"
    _, settings = load_summary(papers)
    fig, caption = accuracy_vs_macs(settings, "cifar10", "conv4",
                                    looks((m, "") for m in ["dense", *PAPER_TOP1[0.9]]))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    flat = [tuple(line.get_ydata()) for line in ax.lines if len(set(line.get_ydata())) == 1]
    assert (93.0, 93.0) in flat  # the dense runs' mean as the reference line
    assert "unpruned runs" in caption


def test_local_data_is_marked_and_still_matched(papers: Path) -> None:
    tex = _papers_tex(papers)
    assert "local archive cifar10-jpeg.tar.gz" in tex
    section = tex[tex.index(r"\section{Published versus"):
                  tex.index(r"\subsection{Published results not compared}")]
    assert r"gumbel (sc-aug)$^\dagger$ & n.r." in section
    assert r"reparam & 0.9 &" in section  # official download: no mark
    captions = {(f["kind"], f.get("dataset"), f.get("arch")): f["caption"]
                for f in _manifest(papers)["figures"]}
    note = "read the dataset from a local copy (local archive cifar10-jpeg.tar.gz)"
    assert note in captions[("accuracy_vs_sparsity", "cifar10", "conv2")]
    assert note in captions[("paper_bars", "cifar10", None)]
    assert note not in captions[("accuracy_vs_sparsity", "cifar10", "conv4")]


def test_each_comparison_says_how_its_protocol_is_known(papers: Path, tmp_path: Path) -> None:
    """The published CSV's protocol column (established / inferred / unknown) is printed beside
    each compared number; a CSV without it prints a dash. Red when the report drops the column."""
    published = pd.read_csv(papers / "published.csv", keep_default_na=False, dtype=str)
    published["protocol"] = ["inferred" if m == "gumbel" else "unknown"
                             for m in published["method"]]
    published["protocol_reason"] = "because"
    published.to_csv(tmp_path / "published.csv", index=False)
    tex = build_report(papers, tmp_path / "published.csv", None, tmp_path / "report",
                       pdf=False).read_text()
    section = tex[tex.index(r"\section{Published versus"):
                  tex.index(r"\subsection{Published results not compared}")]
    assert ("crop+flip; smart rescale (dupont2022\\_gumbel) & inferred & 77.50 & 78.00 $\\pm$ "
            "1.00 (3) &") in section
    assert " & unknown & 85.57 & " in section
    old = _papers_tex(papers)
    assert " & -- & 85.57 & " in old[old.index(r"\section{Published versus"):]
