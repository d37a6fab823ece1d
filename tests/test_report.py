"""Figures and the LaTeX report from synthetic run folders."""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from runfactory import make_run, write_published

from prunebench.aggregate import aggregate, load_published, load_summary
from prunebench.cli import main
from prunebench.errors import PrunebenchError
from prunebench.figures import accuracy_vs_sparsity, build_figures
from prunebench.report import build_report, latex_escape

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
    palette = {m: (0.1, 0.2, 0.3) for m in set(runs["method"]) | set(published["method"])}
    fig, caption = accuracy_vs_sparsity(runs, settings, published, "cifar10", "conv4", palette)
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
