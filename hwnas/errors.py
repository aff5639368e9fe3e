"""One root exception with a few meaningful children; messages say what to do next."""


class HwnasError(Exception):
    """Root of every error hwnas raises on purpose."""


class ConfigError(HwnasError):
    """A YAML file or an argument is wrong; the message names file, key and what is allowed."""


class DeviceError(HwnasError):
    """The device or its agent cannot be reached or refused a request."""


class MeasurementError(HwnasError):
    """The agent ran the job but it failed (runtime crash, timeout, unsupported provider)."""


class JobInterrupted(MeasurementError):
    """The agent stopped (or restarted) while the job ran: nothing is wrong with the model;
    measure again, on the same device if it is back, else on another of its pool."""


class ExportError(HwnasError):
    """A candidate could not be built, exported or quantized."""


class StorageUnreachable(HwnasError):
    """The study database stayed unreachable longer than a controller waits it out."""


class StorageDamaged(HwnasError):
    """The study's SQLite file is corrupt or not a database: named, and left untouched."""
