"""What the engine shows on the terminal besides errors: progress bars and per-epoch log lines,
silenced by the CLI's `--quiet` (log.txt in a run folder still gets every line)."""
from __future__ import annotations

import sys

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (True) or show (False) progress bars and informational lines in this process."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def progress_bars() -> bool:
    """Whether to draw progress bars: on a terminal, and not --quiet."""
    return not _quiet and sys.stderr.isatty()
