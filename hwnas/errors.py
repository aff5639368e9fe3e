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


def excerpt(value: object, limit: int = 80) -> str:
    """A short repr of a value the user gave, for an error message: a long string, a deep
    or long list is cut (with '...'), never printed whole."""
    import reprlib

    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, limit, limit, 40
    for kind in ("tuple", "list", "array", "dict", "set", "frozenset", "deque"):
        setattr(short, f"max{kind}", 4)
    shown = short.repr(value)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."
