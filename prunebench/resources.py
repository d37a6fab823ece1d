"""Files the engine ships and reads at run time, found inside the installed package (never through
the current folder): the report template, the papers' published numbers, the workflow configs and
their schema. In the repository they stay in the top-level config/ and report/ folders, which
prunebench/config and prunebench/report link to (installed as package data)."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from prunebench.errors import PrunebenchError

PUBLISHED = "config/published_results.csv"  # the papers' numbers
DEFAULT_CONFIG = "config/config.yaml"  # the quick workflow config
CONFIG_SCHEMA = "config/schema.yaml"  # every key of a workflow config, documented
TEMPLATES = "report/templates"  # the LaTeX (jinja2) report template


def path(name: str) -> Path:
    """The file or folder `name` (one of the constants above) of the installed package."""
    found = files("prunebench").joinpath(*name.split("/"))
    if not isinstance(found, Path):
        raise PrunebenchError(f"prunebench is imported from an archive ({found}); its data file "
                              f"{name} must be a file: install the package as files (pip "
                              "install)")
    if not found.exists():
        raise PrunebenchError(f"{found} is missing from the prunebench package: the "
                              "installation is incomplete (reinstall it)")
    return found
