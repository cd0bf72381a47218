"""latentwatch: learn what normal records look like, watch a Kafka stream for the ones that are not.

This package is the composition root: the CLI, settings and the embedded demo wire together
``detector`` (the maths), ``streams`` (Kafka), ``storage`` (SQL) and ``api`` (HTTP).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("latentwatch")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
