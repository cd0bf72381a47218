"""What the API is allowed to do: the optional bearer token and the bounds that keep any one
request cheap (page size, export rows, stats buckets)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ApiSettings:
    token: str | None = None  # when set, every route but /health and the page needs it
    default_page_size: int = 50
    max_page_size: int = 1_000
    export_max_rows: int = 100_000  # rows per CSV/JSONL export; more: narrow the filters
    export_chunk_size: int = 1_000  # rows per database round trip while streaming an export
    max_buckets: int = 10_000  # time buckets per stats answer

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ValueError("ApiSettings.token is empty: pass None to serve without a token")
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise ValueError(
                f"ApiSettings.default_page_size ({self.default_page_size}) must be between 1 "
                f"and max_page_size ({self.max_page_size})"
            )
        for name in ("export_max_rows", "export_chunk_size", "max_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"ApiSettings.{name} must be at least 1")
