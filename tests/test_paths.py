"""The layout module: a run folder parses back into the run that built it, the config digest is
one function, and no results root or exit code is spelled outside prunebench/paths.py."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prunebench import paths
from prunebench.plan.config import resolve

REPO = Path(__file__).resolve().parents[1]

names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,11}", fullmatch=True)
# A budget the grid accepts: in [0, 1) and named exactly by its folder (<= 6 significant digits).
budgets = st.one_of(st.none(), st.floats(0, 1, exclude_max=True).map(
    lambda s: float(paths.budget_text(s))).filter(lambda s: s < 1))


@given(dataset=names, arch=names, method=names, variant=st.one_of(st.just(""), names),
       sparsity=budgets, seed=st.integers(0, 10**6))
def test_a_run_folder_parses_back_into_its_run(dataset: str, arch: str, method: str,
                                               variant: str, sparsity: float | None,
                                               seed: int) -> None:
    run = paths.Run(dataset, arch, method, variant, sparsity, seed)
    assert paths.Run.parse(run.run_id) == run
    assert paths.Run.parse(Path(run.folder).relative_to(paths.RUNS_ROOT)) == run
    built = paths.run_dir("somewhere", dataset, arch, method, sparsity, seed, variant)
    assert built == Path("somewhere") / run.run_id


def test_the_run_folder_layout_is_the_documented_one() -> None:
    """Pinned literally: the README, the rules and users' scripts name these folders."""
    assert paths.Run("cifar10", "conv4", "gumbel", "aslp-sc-aug", None, 2).folder == (
        "results/runs/cifar10/conv4/gumbel@aslp-sc-aug/snone/seed2")
    assert paths.Run("digits", "conv4", "magnitude_ft", "", 0.9684, 0).run_id == (
        "digits/conv4/magnitude_ft/s0.9684/seed0")


@pytest.mark.parametrize("text", [
    "digits/conv4/dense/seed0",  # no budget level
    "digits/conv4/dense/s0.5/seed0/extra",
    "digits/conv4/dense/sx/seed0",
    "digits/conv4/dense/s0.5/seedX",
    "digits/conv4/dense@/s0.5/seed0",  # an empty variant
    "digits/conv4/dense/s0..5/seed0",
])
def test_a_path_outside_the_layout_is_refused_naming_the_layout(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(
            "is not a run folder below the runs root: expected "
            "<dataset>/<arch>/<method>[@<variant>]/s<sparsity|none>/seed<n>")):
        paths.Run.parse(text)


def test_the_digest_of_a_saved_config_is_the_runs_digest() -> None:
    """aggregate recomputes the digest from the config.json a folder saved: the one function
    must give RunConfig.digest() for the dict read back from JSON."""
    cfg = resolve("digits", "conv4", "reparam", 0.9, 3, {}, {"epochs": "2", "method.lam": "5"})
    saved = json.loads(json.dumps({"digest": cfg.digest(), "config": cfg.to_dict()}))
    assert paths.config_digest(saved["config"]) == cfg.digest() == saved["digest"]
    other = resolve("digits", "conv4", "reparam", 0.9, 4, {}, {"epochs": "2", "method.lam": "5"})
    assert other.digest() != cfg.digest()


def _sources() -> list[Path]:
    files = [*REPO.glob("prunebench/**/*.py"), *REPO.glob("benchmarks/*.py")]
    return sorted(f for f in files if f.resolve() != (REPO / "prunebench" / "paths.py"))


# A results root as a string literal: "results/...", or "results" as a default or a path (not
# the word as a key or in prose, nor benchmarks/results, the benchmarks' own folder).
ROOT_LITERAL = re.compile(r"""["']results/|(default=|Path\()["']results["']""")
# An exit code compared, returned or passed to exit as a number instead of paths.EXIT_*.
EXIT_LITERAL = re.compile(r"(\b(rc|returncode|code|status)\s*[!=]=\s*|\breturn\s+|exit\()"
                          r"(3|75)\b")


def test_no_results_root_or_exit_code_is_spelled_outside_the_layout_module() -> None:
    """Mutation that defeats it: write `default="results/runs"` back into cli.py, or
    `rc == 75` into benchmarks/window.py."""
    found = [f"{f.relative_to(REPO)}:{i}: {line.strip()}"
             for f in _sources() for i, line in enumerate(f.read_text().splitlines(), 1)
             if ROOT_LITERAL.search(line) or EXIT_LITERAL.search(line)]
    assert not found, "spell these with prunebench/paths.py:\n" + "\n".join(found)
