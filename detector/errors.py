"""Errors a user can act on. Each message names the object at fault and, where there is one,
the remedy; the CLI prints it as one line without a traceback."""


class LatentwatchError(Exception):
    """Base class for errors caused by the user's input or set-up, not by a bug."""


class DataError(LatentwatchError):
    """The data cannot be used as given (empty, no usable columns, unreadable file)."""


class NotFittedError(LatentwatchError):
    """A detector was asked to score before it was fitted or loaded."""


class ArtifactError(LatentwatchError):
    """A model directory is missing, damaged, incomplete or not a latentwatch model."""


class SchemaMismatchError(LatentwatchError):
    """Data to score does not match the schema the model was trained on."""


def os_error_reason(exc: OSError) -> str:
    """What went wrong with a file, for a message that already names the file the user asked
    for: the system's reason and the path it failed on (a parent folder, perhaps)."""
    if exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)
