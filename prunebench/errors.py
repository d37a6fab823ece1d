"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class PrunebenchError(Exception):
    """A problem a user can fix: bad config, missing or corrupt data, a failed run."""


class TrainingDiverged(PrunebenchError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class Preempted(Exception):
    """A termination signal arrived; the run saved a checkpoint and must be restarted."""
