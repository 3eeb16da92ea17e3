"""What the evals app raises; commands and the admin turn these into messages."""


class EvalsError(Exception):
    """Base of this app's errors."""


class VersionImmutable(EvalsError):
    """A frozen dataset version (or one of its records or its sync row's identity) was changed."""


class DatasetNotFound(EvalsError):
    """No dataset, version or tag by that name."""


class NothingToFreeze(EvalsError):
    """A new version would hold exactly what the latest one holds."""
