"""The database as the consumer's sink for flagged records (adapter over storage/)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from storage.records import FlaggedRecord, ModelVersion
from storage.repository import UnstorableRecordError, write_flagged
from streams.consumer import Unavailable, UnstorableRecord


class SqlSink:
    """Writes each batch in one transaction, with the model version that scored it."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        model_version: str,
        manifest: Mapping[str, Any],
    ) -> None:
        self._sessions = session_factory
        self._model = ModelVersion(model_version, manifest)

    def register_model(self) -> None:
        """Record the model version at start-up, before any record is flagged."""
        self._write([], [self._model])

    def write(self, records: Sequence[FlaggedRecord]) -> int:
        if not records:
            return 0  # most batches: no round trip at all
        return self._write(records, [self._model])

    def _write(self, records: Sequence[FlaggedRecord], models: list[ModelVersion]) -> int:
        try:
            return write_flagged(self._sessions, records, models)
        except UnstorableRecordError as exc:
            if exc.record is None:  # the manifest itself: nothing a retry or a skip can fix
                raise
            raise UnstorableRecord(exc.record, str(exc)) from exc
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable(
                f"database: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from exc
