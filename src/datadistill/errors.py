"""Exceptions raised by datadistill.

Every message names what was wrong and how to fix it, so the CLI can print it as-is.
"""


class DatadistillError(Exception):
    """Base class of all errors raised on purpose by datadistill."""


class DatasetError(DatadistillError):
    """A dataset file is missing, truncated or not in the expected format."""


class ConfigError(DatadistillError):
    """A configuration key is unknown or a value is out of range."""


class CompatibilityError(DatadistillError):
    """An expert store, model, dataset or distilled set does not fit the others."""


class ArtifactError(DatadistillError):
    """A distilled-set or expert file is missing, corrupt or of an unknown format version."""


class DivergenceError(DatadistillError):
    """The optimisation produced NaN values or a non-positive learned step size."""
