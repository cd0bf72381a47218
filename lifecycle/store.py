"""Where registered model directories live. A store maps a version to a location string
(``file:///...``) that every consumer of the deployment can open; the directory layout,
``<root>/<version>/`` holding the model directory's files as they are, suits an object store
(one prefix per version, the manifest written last) as well as a shared folder."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from detector import artifact
from detector.errors import ArtifactError

SCHEME = "file://"


class DirectoryStore:
    """Model directories under one root folder (a local or shared file system)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def put(self, directory: Path, version: str) -> str:
        """Copy a model directory into the store (unless there already) and return its
        location. The copy is made beside its final place and renamed into it, so a crash
        leaves no half-copied version behind."""
        target = self.root / version
        if not (target / artifact.MANIFEST).exists():
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.root))
            try:
                for name in (artifact.WEIGHTS, artifact.ARRAYS, artifact.MANIFEST):
                    shutil.copy2(directory / name, staging / name)
                if target.exists():  # a copy a crash left without its manifest
                    shutil.rmtree(target)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return SCHEME + str(target)


def local_path(location: str) -> Path:
    """The directory of a stored model, from its location."""
    if not location.startswith(SCHEME):
        raise ArtifactError(
            f"model location {location!r} is not in a directory store (file://...): this "
            "version of latentwatch reads no other store"
        )
    return Path(location.removeprefix(SCHEME))
