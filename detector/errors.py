"""The detector's errors (see common.errors for the base every layer shares)."""

from common.errors import LatentwatchError


class DataError(LatentwatchError):
    """The data cannot be used as given (empty, no usable columns, unreadable file)."""


class ArtifactError(LatentwatchError):
    """A model directory is missing, damaged, incomplete or not a latentwatch model."""


class SchemaMismatchError(LatentwatchError):
    """Data to score does not match the schema the model was trained on."""
