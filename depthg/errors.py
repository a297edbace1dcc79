"""User-facing errors.

Every error a user can cause (a bad path, an unknown name, a missing weight file, a dataset that is not prepared)
is raised as a :class:`DepthGError` whose message names the file or parameter and says what to do. The CLI prints
the message without a traceback (``depthg.cli.main``); library callers can catch the subclasses.
"""


class DepthGError(Exception):
    """Base class of every error whose message is meant for the user."""


class ConfigError(DepthGError, ValueError):
    """An unknown preset, key or value in a configuration."""


class DataError(DepthGError):
    """A dataset, image, label, depth or kNN file that is missing, unreadable or inconsistent."""


class WeightsError(DepthGError):
    """Model weights that cannot be found or loaded (offline hub, wrong checkpoint layout)."""


class TrainingError(DepthGError):
    """A training run that cannot go on (non-finite loss, incompatible resume checkpoint)."""


class BusyError(DepthGError):
    """A run folder or stage output that another process holds (its lock file names the holder)."""


class OutputError(DepthGError):
    """A result or record that cannot be written (read-only folder, full disk)."""
