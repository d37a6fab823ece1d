"""The one exception type the CLI turns into a one-line message and a non-zero exit, and the
words for an I/O error's cause."""
from __future__ import annotations

import errno
import os


class PrunebenchError(Exception):
    """A problem a user can fix: bad config, missing or corrupt data, a failed run."""


class TrainingDiverged(PrunebenchError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class Preempted(Exception):
    """A termination signal arrived; the run saved a checkpoint and must be restarted."""


def os_error_text(e: BaseException) -> str:
    """An I/O error's cause in words with its errno name, e.g. `No space left on device
    (ENOSPC)`: what a person needs, where a raw exception says neither."""
    if isinstance(e, OSError) and e.errno in errno.errorcode:
        return f"{e.strerror or os.strerror(e.errno)} ({errno.errorcode[e.errno]})"
    return " ".join(str(e).split()) or type(e).__name__
