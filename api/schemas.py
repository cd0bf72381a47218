"""The HTTP shapes (pydantic, the only place it is used). They are built from the dataclasses of
``storage.queries`` and document the API in /openapi.json. Times are ISO-8601 UTC; scores are
nats with higher = more anomalous."""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema, field_validator

Label = Literal["true_alarm", "false_alarm"]
NON_FINITE = ("Infinity", "-Infinity", "NaN")


def _number_json(value: float) -> float | str:
    """JSON has no infinity: a non-finite number is served as a string, as the Protocol
    Buffers JSON mapping does ("Infinity", "-Infinity", "NaN"), not as null."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


# A float as served: a JSON number, or one of NON_FINITE (storage accepts infinite scores).
Number = Annotated[
    float,
    PlainSerializer(_number_json, return_type=float | str, when_used="json"),
    WithJsonSchema(
        {"anyOf": [{"type": "number"}, {"type": "string", "enum": list(NON_FINITE)}]},
        mode="serialization",
    ),
]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class FeatureOut(_Out):
    model_config = ConfigDict(from_attributes=True, extra="allow")

    name: str
    actual: Any = Field(None, description="The record's value (null when missing).")
    expected: Any = Field(None, description="The value the model reconstructs for this record.")
    contribution: Number | None = Field(
        None, description="Nats this field adds to the reconstruction score."
    )
    share: Number | None = Field(None, description="Part of the reconstruction score, 0..1.")
    attribution: Number | None = Field(
        None,
        description="Nats of (score - the nearest normal record's score) this field accounts "
        "for; the fields are ordered by it. Absent on records stored before it existed.",
    )


class ChangeOut(_Out):
    name: str
    actual: Any = Field(None, description="The record's value (null when missing).")
    normal: Any = Field(None, description="The nearest normal record's value.")
    delta: Number | None = Field(None, description="normal - actual, for numbers.")
    attribution: Number


class PathPointOut(_Out):
    t: Number = Field(description="Share of the way from the record's code to the cluster mode.")
    p_value: Number = Field(description="The record's p-value with the changes of this step.")
    latent_2d: list[Number]


class NearestNormalOut(_Out):
    model_config = ConfigDict(from_attributes=True, extra="allow")

    reached: bool = Field(description="False: no point of the walk scored normal.")
    score: Number
    p_value: Number
    normal_score: Number
    normal_p_value: Number
    changes: list[ChangeOut] = Field(
        description="The fields that change, largest attribution first; the attributions "
        "add up to score - normal_score."
    )
    density_attribution: Number | None = None
    reconstruction_attribution: Number | None = None
    path: list[PathPointOut] = Field(description="The walk in latent space, step by step.")
    latent_2d: list[Number] = Field(description="The record's own point on the latent map.")


class ExplanationOut(_Out):
    model_config = ConfigDict(from_attributes=True, extra="allow")

    features: list[FeatureOut] = Field(
        default_factory=list, description="The most surprising fields first."
    )
    cluster: int | None = Field(None, description="Nearest reference cluster.")
    cluster_distance: Number | None = Field(
        None, description="Mahalanobis distance to that cluster's centre."
    )
    latent: list[Number] = Field(default_factory=list, description="The record's latent code.")
    latent_2d: list[Number] | None = Field(
        None,
        description="[x, y] on the model's 2-D latent map (GET /api/models: manifest.latent_map).",
    )
    nearest_normal: NearestNormalOut | None = Field(
        None,
        description="The nearest record the model scores normal, found by walking the latent "
        "space (absent on records stored before it existed).",
    )


class ExplainOut(_Out):
    model_version: str
    score: Number
    p_value: Number
    flagged: bool
    explanation: ExplanationOut


class FlaggedSummaryOut(_Out):
    id: int
    topic: str
    partition: int
    offset: int
    kafka_timestamp: int = Field(description="Kafka message timestamp, ms since the epoch.")
    key: str | None = Field(
        validation_alias="key_text",
        description="The Kafka key, readable: as text when it is UTF-8 without NUL bytes, else "
        "as hex digits (binary keys: Java's Long serializer, UUIDs).",
    )
    key_base64: str | None = Field(
        validation_alias="key", description="The Kafka key's exact bytes, base64-encoded."
    )
    record_id: str | None
    event_time: datetime | None
    scored_time: datetime
    model_version: str
    score: Number = Field(description="density + reconstruction, nats.")
    severity: Number = Field(description="0..100, from the combined p-value.")
    p_value: Number = Field(description="Combined calibrated p-value.")
    density: Number = Field(description="Latent negative log-density, nats.")
    density_p_value: Number
    reconstruction: Number = Field(description="Reconstruction error, nats.")
    reconstruction_p_value: Number
    cluster: int
    cluster_distance: Number
    top_feature: str | None
    explanation: ExplanationOut
    label: Label | None = Field(description="The current verdict: the newest feedback, if any.")

    @field_validator("key_base64", mode="before")
    @classmethod
    def _base64(cls, key: bytes | str | None) -> str | None:
        return base64.b64encode(key).decode() if isinstance(key, bytes) else key


class FeedbackOut(_Out):
    id: int
    label: Label
    note: str | None
    created_at: datetime


class FlaggedDetailOut(FlaggedSummaryOut):
    record: dict[str, Any] = Field(description="The original record as consumed.")
    feedback: list[FeedbackOut] = Field(description="Every verdict, newest first.")
    latest_feedback: FeedbackOut | None


class FlaggedPageOut(BaseModel):
    records: list[FlaggedSummaryOut]
    next_cursor: str | None = Field(
        description="Pass as cursor (with the same filters) for the next page; null at the end."
    )
    count: int = Field(description="Records on this page.")


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Label
    note: str | None = Field(None, max_length=2_000, description="Why; free text.")

    @field_validator("note")
    @classmethod
    def _storable(cls, note: str | None) -> str | None:
        if note is not None:
            if "\x00" in note:
                raise ValueError("note contains a NUL character")
            try:
                note.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("note is not valid Unicode (unpaired surrogate)") from None
        return note


_CONSUMED = (
    "Records the consumers consumed (scored) in this range, from their per-minute counts; null "
    "when those counts cannot answer the query (buckets under a minute, time_field=event)."
)
_SHARE = "count / scored: the share of scored records that were flagged and match the filters."


class BucketOut(_Out):
    start: datetime
    count: int = Field(description="Matching flagged records.")
    consumed: int | None = Field(description=_CONSUMED)
    scored: int | None = Field(description=_CONSUMED)
    flagged_share: float | None = Field(description=_SHARE)


class TopicCountOut(_Out):
    topic: str
    count: int = Field(description="Matching flagged records.")
    share_of_flagged: float = Field(description="This topic's part of the counted records.")
    consumed: int | None = Field(description=_CONSUMED)
    scored: int | None = Field(description=_CONSUMED)
    flagged_share: float | None = Field(description=_SHARE)


class StatsOut(_Out):
    bucket_seconds: int
    total: int
    buckets: list[BucketOut] = Field(description="Consecutive buckets, empty ones included.")
    topics: list[TopicCountOut] = Field(
        description="Most flagged first, then topics that were consumed with nothing flagged."
    )


class EvaluationOut(_Out):
    model_version: str | None
    flagged: int
    labelled: int = Field(description="Records with feedback (their newest verdict counts).")
    true_alarms: int
    false_alarms: int
    precision: float | None = Field(description="true_alarms / labelled; null if none labelled.")
    labelled_share: float | None = Field(description="labelled / flagged.")


class ModelOut(_Out):
    version: str
    first_seen: datetime
    last_seen: datetime
    flagged: int = Field(description="Stored flagged records scored by this version.")
    flag_severity: float | None = Field(
        description="Severity at this model's flagging threshold (p-value = "
        "manifest.calibration.fpr): what it flags is at least this severe; null when the "
        "manifest has no false-alarm rate."
    )
    manifest: dict[str, Any] = Field(
        description="The model manifest; latent_map holds the reference clusters in 2-D."
    )


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready", "unavailable"]
    detail: str


class ErrorOut(BaseModel):
    detail: str


class InvalidInputOut(BaseModel):
    loc: list[str | int] = Field(description='Where: e.g. ["query", "limit"], ["body", "note"].')
    msg: str
    type: str
    input: Any = Field(None, description="The value given, if any.")
    ctx: dict[str, Any] | None = None


class ValidationErrorOut(BaseModel):
    """FastAPI's 422 body, declared here because every route can answer it: even one without
    parameters refuses unknown query parameters."""

    detail: list[InvalidInputOut]


class ModelSideOut(_Out):
    version: str
    fpr: float | None = Field(description="The calibrated false-alarm rate of the model.")
    flagged: int
    flag_rate: float | None = Field(description="flagged / scored over the window.")
    labelled: int = Field(description="Of its flagged records, how many users labelled.")
    precision: float | None = Field(description="True alarms / labelled; null if none.")


class ComparisonOut(_Out):
    topic: str
    run: str = Field(
        description="'shadow', or the backfill run compared (then `shadow` is the run's model)."
    )
    start: datetime
    end: datetime
    scored: int = Field(description="Records both models scored in the window.")
    live: ModelSideOut
    shadow: ModelSideOut
    both_flagged: int
    either_flagged: int
    overlap: float | None = Field(description="both_flagged / either_flagged (Jaccard).")
    rank_correlation: float | None = Field(
        description="Spearman correlation of the two models' scores over the records either "
        "flagged; null with fewer than two."
    )
    unlabelled_shadow_only: int = Field(
        description="Records only the shadow model flags: nobody labelled them (users label "
        "live flags), so the shadow precision leaves them out."
    )


class ShadowTopicsOut(_Out):
    start: datetime
    end: datetime
    topics: list[str] = Field(description="Topics with shadow scores in the window, by name.")
