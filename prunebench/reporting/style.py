"""One fixed look per method, shared by every figure and the report's tables.

Colours are colour-blind safe (Okabe-Ito and Paul Tol's muted set: every pair stays apart under
simulated deuteranopia, protanopia and tritanopia, `tests/test_style.py`); each method also has
its own marker shape, so print in grey still tells them apart. The two proposed methods are drawn
strong and thick (drawn first, so thinner lines that coincide stay visible on top), the controls
(dense, random) black and grey, thin and dashed. A variant
(`method@variant`) keeps its method's colour and marker shape and takes its own dashes, marker
fill and bar hatch.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunebench.reporting.papers import PROPOSED, method_label

if TYPE_CHECKING:
    import pandas as pd

CONTROLS = ("dense", "random")

# method -> (colour, marker). Fixed, so a method looks the same in every report ever built.
METHOD_COLORS = {
    "reparam": ("#D55E00", "o"),         # Okabe-Ito vermillion
    "gumbel": ("#0072B2", "s"),          # Okabe-Ito blue
    "magnitude": ("#E69F00", "v"),       # Okabe-Ito orange
    "magnitude_ft": ("#882255", "^"),    # Tol wine
    "magnitude_init": ("#DDCC77", "<"),  # Tol sand
    "snip": ("#009E73", ">"),            # Okabe-Ito bluish green
    "edgepopup": ("#88CCEE", "P"),       # Tol cyan
    "supermask": ("#332288", "X"),       # Tol indigo
    "dense": ("#000000", "h"),
    "random": ("#BBBBBB", "p"),          # Tol grey
}
# Methods the suite does not ship (a user's or a plugin's), in sorted order of their names.
EXTRA_COLORS = ("#CC6677", "#44AA99", "#999933", "#AA4499", "#6699CC", "#661100")
EXTRA_MARKERS = ("d", "8", "H", "*", "1", "2")
# A method's variants, in sorted order of their names: dashes, marker fill, bar hatch. The
# method's own settings (variant "") are solid, filled and plain. Dotted (":") is left for the
# published values drawn beside ours.
VARIANT_DASHES = ("--", "-.", (0, (6, 2, 1, 2, 1, 2)), (0, (8, 3)), (0, (3, 1, 1, 1)))
VARIANT_FILLS = ("none", "left", "bottom", "right", "top")
VARIANT_HATCHES = ("//", "..", "xx", "\\\\", "++")


@dataclass(frozen=True)
class Look:
    """How one method (or one of its variants) is drawn."""

    method: str
    variant: str
    color: str
    marker: str
    linestyle: str | tuple = "-"
    fillstyle: str = "full"
    hatch: str = ""
    linewidth: float = 1.5
    markersize: float = 6.0
    zorder: float = 2.0

    @property
    def label(self) -> str:
        return method_label(self.method, self.variant)

    def line_kwargs(self) -> dict:
        """Keyword arguments for `Axes.plot` / `Axes.errorbar` drawing this method."""
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle,
                "fillstyle": self.fillstyle, "markerfacecoloralt": "white",
                "linewidth": self.linewidth, "markersize": self.markersize,
                "zorder": self.zorder, "gid": self.label}


def role(method: str) -> int:
    """Legend order: proposed methods first, then baselines, then controls."""
    return 0 if method in PROPOSED else 2 if method in CONTROLS else 1


def looks(settings: Iterable[tuple[str, str]]) -> dict[str, Look]:
    """The look of every (method, variant) of a results set, keyed by its label, in legend
    order. Variants are numbered within their method in sorted order of their names, so one
    results set draws a setting the same way in every figure."""
    pairs = sorted(set(settings), key=lambda p: (role(p[0]), p[0], p[1]))
    extra = sorted({m for m, _ in pairs if m not in METHOD_COLORS})
    out: dict[str, Look] = {}
    for method, variant in pairs:
        if method in METHOD_COLORS:
            color, marker = METHOD_COLORS[method]
        else:
            i = extra.index(method)
            color = EXTRA_COLORS[i % len(EXTRA_COLORS)]
            marker = EXTRA_MARKERS[i % len(EXTRA_MARKERS)]
        # Thick lines are drawn first and thin ones over them, so a baseline that coincides
        # with a proposed method stays visible on top of its wider line.
        width, size, z = ((2.4, 7.5, 2.0) if method in PROPOSED
                          else (1.1, 5.0, 3.5) if method in CONTROLS else (1.5, 6.0, 3.0))
        look = Look(method, variant, color, marker, linewidth=width, markersize=size, zorder=z,
                    linestyle=(0, (4, 2)) if method in CONTROLS else "-")
        if variant:
            k = sorted(v for m, v in pairs if m == method and v).index(variant)
            look = Look(method, variant, color, marker,
                        linestyle=VARIANT_DASHES[k % len(VARIANT_DASHES)],
                        fillstyle=VARIANT_FILLS[k % len(VARIANT_FILLS)],
                        hatch=VARIANT_HATCHES[k % len(VARIANT_HATCHES)],
                        linewidth=width, markersize=size, zorder=z)
        out[look.label] = look
    return out


def results_looks(runs: pd.DataFrame, published: pd.DataFrame) -> dict[str, Look]:
    """The look of every setting a results set names (its runs and the published rows): every
    figure and table of one report draws a setting the same way."""
    return looks(zip([*runs["method"], *published["method"]],
                     [*runs["variant"], *published["variant"]], strict=True))
