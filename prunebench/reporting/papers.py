"""The papers the suite reproduces and how results are named: each paper's citation, proposed
methods and published figures (what the report redraws), and the labels of a method setting and
a budget in every table and figure."""
from __future__ import annotations

from dataclasses import dataclass

from prunebench.paths import budget_text


@dataclass(frozen=True)
class PaperFigure:
    """One published figure or table, redrawn: the rows of `source` in the published-results CSV
    on `datasets` (empty = all of the source's datasets) drawn as `kind`."""

    source: str
    kind: str  # "curves" (accuracy vs pruning rate), "bars" (one bar per setting), "table"
    datasets: tuple[str, ...] = ()


# The papers the suite reproduces (published-results `source` -> citation), their proposed
# methods, and how each showed its results. Which methods, budgets and variants a figure holds
# comes from the published rows of its source, never from here.
PAPERS = {
    "dupont2021_reparam": "Dupont, Sahbi, Michel: Weight Reparametrization for Budget-Aware "
                          "Network Pruning, ICIP 2021",
    "dupont2022_gumbel": "Dupont, Alaoui, Sahbi, Lebois: Extracting Effective Subnetworks with "
                         "Gumbel-Softmax, ICIP 2022",
}
PROPOSED = ("gumbel", "reparam")
PAPER_FIGURES = (
    PaperFigure("dupont2021_reparam", "curves"),
    PaperFigure("dupont2022_gumbel", "bars", ("cifar10",)),
    PaperFigure("dupont2022_gumbel", "table", ("cifar100",)),
)


NO_BUDGET = "no budget"  # how a setting without a budget is labelled in tables and figures


def method_label(method: str, variant: str = "") -> str:
    """`method (variant)` for a variant's runs, `method` for the method's own settings."""
    return f"{method} ({variant})" if variant else method


def budget_label(sparsity: float | None) -> str:
    """A budget in a figure's legend or panel title: `sparsity 0.9` or `no budget`."""
    text = budget_text(sparsity, none="")
    return f"sparsity {text}" if text else NO_BUDGET
