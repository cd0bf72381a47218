"""The base of the errors a user can act on. Each message names the object at fault and, where
there is one, the remedy; the CLI prints any :class:`LatentwatchError` as one line without a
traceback. Every layer (detector, storage, streams, api) derives its errors from it."""


class LatentwatchError(Exception):
    """Base class for errors caused by the user's input or set-up, not by a bug."""


def os_error_reason(exc: OSError) -> str:
    """What went wrong with a file, for a message that already names the file the user asked
    for: the system's reason and the path it failed on (a parent folder, perhaps)."""
    if exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)
