"""Figures a reader can decode: one colour per method, the same in every figure, colour-blind
safe, markers for grey print, legends beside the data (prunebench/reporting/style.py)."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import Collection, LineCollection
from matplotlib.colors import to_hex, to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from runfactory import make_run

from prunebench.plan.config import load_config_file
from prunebench.plan.grid import expand
from prunebench.reporting.aggregate import aggregate
from prunebench.reporting.figures import plan_figures
from prunebench.reporting.papers import PROPOSED
from prunebench.reporting.style import CONTROLS, METHOD_COLORS, looks

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "config" / "published_results.csv"

# Machado, Oliveira & Fernandes 2009, severity 1: linear-RGB matrices simulating each
# colour-vision deficiency.
CVD = {
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                     [-0.011820, 0.042940, 0.968881]],
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                   [-0.003882, -0.048116, 1.051998]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                   [0.004733, 0.691367, 0.303900]],
    "normal vision": np.eye(3).tolist(),
}


def _lab(color: str, deficiency: str) -> np.ndarray:
    """CIE L*a*b* (D65) of `color` as seen with `deficiency`."""
    srgb = np.array(to_rgb(color))
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    linear = np.clip(np.array(CVD[deficiency]) @ linear, 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_method_colours_stay_apart_with_every_colour_vision() -> None:
    """Every pair of the suite's methods differs by at least 15 CIELAB units under simulated
    deuteranopia, protanopia and tritanopia (and normal vision), and by marker shape."""
    closest = min((float(np.linalg.norm(_lab(a, k) - _lab(b, k))), k, m, n)
                  for (m, (a, _)), (n, (b, _)) in itertools.combinations(METHOD_COLORS.items(), 2)
                  for k in CVD)
    assert closest[0] >= 15, f"{closest[2]} and {closest[3]} look alike with {closest[1]}"
    markers = [marker for _, marker in METHOD_COLORS.values()]
    assert len(set(markers)) == len(markers) and "*" not in markers  # stars: published values


def test_proposed_stand_out_controls_recede_variants_keep_their_colour() -> None:
    styles = looks([("reparam", ""), ("reparam", "paper-sgd-t"), ("snip", ""), ("dense", ""),
                    ("random", ""), ("gumbel", "b"), ("gumbel", "a"), ("mine", "")])
    assert list(styles)[:4] == ["gumbel (a)", "gumbel (b)", "reparam", "reparam (paper-sgd-t)"]
    assert list(styles)[-2:] == ["dense", "random"]  # legend order: proposed, baselines, controls
    snip = styles["snip"]
    for name in PROPOSED:
        look = next(v for v in styles.values() if v.method == name)
        assert look.linewidth > snip.linewidth and look.markersize > snip.markersize
    for name in CONTROLS:
        look = styles[name]
        assert look.linewidth < snip.linewidth and look.linestyle != "-"
        assert max(to_rgb(look.color)) - min(to_rgb(look.color)) < 0.01  # grey or black
    faithful, own = styles["reparam (paper-sgd-t)"], styles["reparam"]
    assert (faithful.color, faithful.marker) == (own.color, own.marker)
    assert faithful.linestyle != own.linestyle and faithful.fillstyle != own.fillstyle
    assert styles["gumbel (a)"].linestyle != styles["gumbel (b)"].linestyle
    assert styles["mine"].color not in {c for c, _ in METHOD_COLORS.values()}


def _draw_grid(root: Path, config: str, keep: Callable[[Any], bool] = lambda run: True
               ) -> list:
    """The figures of a shipped config's grid (the runs `keep` selects), drawn from synthetic
    runs: made-up accuracies, the real layout, methods, variants and published rows."""
    for i, job in enumerate(j for j in expand(load_config_file(REPO / "config" / config))
                            if keep(j.run)):
        r = job.run
        make_run(root / "runs", dataset=r.dataset, arch=r.arch, method=r.method,
                 variant=r.variant, sparsity=r.sparsity, seed=r.seed, top1=40.0 + i % 50,
                 achieved=0.49 + 0.01 * r.seed if r.sparsity is None and r.method != "dense"
                 else None)
    aggregate(root / "runs", root, warn=False)
    plans, _, _ = plan_figures(root, PUBLISHED)
    drawn = [(plan, plan.draw()[0]) for plan in plans]
    for _, fig in drawn:
        fig.draw_without_rendering()  # lays the legends out
    return drawn


@pytest.fixture(scope="module")
def quick_figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list]:
    """The figures of the quick benchmark (config/config.yaml: every method and the reparam
    variant)."""
    drawn = _draw_grid(tmp_path_factory.mktemp("quick"), "config.yaml")
    yield drawn
    for _, fig in drawn:
        plt.close(fig)


def _colours(artist: object) -> set[str]:
    if isinstance(artist, Line2D):
        return {to_hex(artist.get_color())}
    if isinstance(artist, LineCollection):
        return {to_hex(c[:3]) for c in artist.get_edgecolor()}
    if isinstance(artist, Collection):
        return {to_hex(c[:3]) for c in artist.get_facecolor()}
    if isinstance(artist, Patch):
        return {to_hex(artist.get_facecolor()[:3])}
    return set()


def _is_shade_of(colour: str, base: str) -> bool:
    """`colour` is `base` darkened (mixed with black), as training curves draw budgets."""
    c, b = np.array(to_rgb(colour)), np.array(to_rgb(base))
    if np.allclose(c, b):
        return True
    t = c.sum() / max(b.sum(), 1e-9)
    return bool(0.3 <= t <= 1.0 + 1e-6 and np.allclose(c, b * t, atol=0.01))


def _check_looks(figures: list) -> dict[str, set[str]]:
    """From the drawn artists: in every panel each method has its own colour, every method has
    the same colour in every figure, and every method drawn is in the legend or panel title;
    returns the colours each method was drawn in."""
    seen: dict[str, set[str]] = {}
    for plan, fig in figures:
        legend_texts = {t.get_text() for legend in [*fig.legends, *(
            ax.get_legend() for ax in fig.axes if ax.get_legend())] for t in legend.get_texts()}
        for ax in fig.axes:
            drawn: dict[str, set[str]] = {}
            for artist in ax.get_children():
                label = artist.get_gid()
                if label and _colours(artist):
                    drawn.setdefault(label.split(" (")[0], set()).update(_colours(artist))
                    assert label in legend_texts | {ax.get_title()}, (plan.name, label)
            own = {}  # method -> the colour its artists are drawn in (its budgets: shades of it)
            for method, colours in drawn.items():
                base = METHOD_COLORS[method][0].lower()
                if plan.kind in ("training_curves", "layer_density"):  # budgets: shades
                    assert all(_is_shade_of(c, base) for c in colours), (plan.name, method)
                    assert base in colours, (plan.name, method)  # the lowest budget: as is
                else:
                    assert colours == {base}, (plan.name, method, colours)
                own[method] = base
                seen.setdefault(method, set()).add(base)
            assert len(set(own.values())) == len(own), (plan.name, own)
    assert all(len(colours) == 1 for colours in seen.values())
    return seen


def _check_legends(figures: list) -> None:
    """Every figure has a legend, and no legend overlaps a panel."""
    for plan, fig in figures:
        renderer = fig.canvas.get_renderer()
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        assert legends, plan.name
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                if ax.get_visible():
                    assert not box.overlaps(ax.get_window_extent(renderer)), plan.name


@pytest.mark.slow
def test_quick_figures_one_colour_per_method_everywhere(quick_figures: list) -> None:
    kinds = {plan.kind for plan, _ in quick_figures}
    assert {"accuracy_vs_sparsity", "accuracy_vs_macs", "training_curves",
            "layer_density"} <= kinds
    assert set(_check_looks(quick_figures)) == set(METHOD_COLORS)  # every method is run


def test_quick_figures_legends_do_not_cover_data(quick_figures: list) -> None:
    _check_legends(quick_figures)


@pytest.mark.slow
def test_paper_figures_one_colour_per_method_and_legends_beside(
        tmp_path: Path) -> None:
    """The same on config/paper.yaml's CIFAR-10 conv2 and conv4 runs (seed 0): the published
    stars, the redrawn figures of both papers and their variants."""
    figures = _draw_grid(tmp_path, "paper.yaml", lambda run: run.dataset == "cifar10"
                         and run.arch in ("conv2", "conv4") and run.seed == 0)
    kinds = {plan.kind for plan, _ in figures}
    assert {"reproduced_vs_published", "paper_curves", "paper_bars"} <= kinds
    assert set(_check_looks(figures)) == set(METHOD_COLORS)
    _check_legends(figures)
    for _, fig in figures:
        plt.close(fig)
