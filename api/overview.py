"""Routes that summarise rather than list: counts over time, precision from feedback, and the
model versions (whose manifests carry the reference clusters drawn on the explorer's map)."""

# No `from __future__ import annotations`: FastAPI must evaluate the parameter annotations,
# which use the settings of the enclosing router factory.

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from api.dependencies import SessionDep, invalid
from api.params import NO_NUL, FilterDep
from api.schemas import ErrorOut, EvaluationOut, ModelOut, StatsOut
from api.settings import ApiSettings
from detector.calibration import flag_severity
from storage.evaluation import ModelInfo, evaluate, model_versions
from storage.queries import QueryError
from storage.stats import flagged_stats, parse_bucket

VersionText = Annotated[str, Path(max_length=64, pattern=NO_NUL, description="Model version.")]


def overview_router(settings: ApiSettings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["overview"])

    @router.get(
        "/stats",
        response_model=StatsOut,
        summary="Flagged counts per time bucket and per topic",
    )
    def stats(
        session: SessionDep,
        flt: FilterDep,
        bucket: Annotated[
            str,
            Query(
                max_length=16,
                description="Bucket size: a whole number and s, m, h or d (1m, 15m, 1h, 1d); "
                "buckets are aligned to the epoch (days start at 00:00 UTC). At most "
                f"{settings.max_buckets} buckets per answer.",
            ),
        ] = "1h",
    ) -> StatsOut:
        try:
            seconds = parse_bucket(bucket)
            result = flagged_stats(session, flt, seconds, max_buckets=settings.max_buckets)
        except QueryError as exc:
            raise invalid("query", "bucket", str(exc), bucket) from None
        return StatsOut.model_validate(result)

    @router.get(
        "/evaluate",
        response_model=EvaluationOut,
        summary="Precision of the flags, from user feedback",
    )
    def evaluate_flags(
        session: SessionDep,
        model_version: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=64,
                pattern=NO_NUL,
                description="Only this model's records.",
            ),
        ] = None,
    ) -> EvaluationOut:
        return EvaluationOut.model_validate(evaluate(session, model_version))

    @router.get("/models", response_model=list[ModelOut], summary="Model versions seen")
    def models(session: SessionDep) -> list[ModelOut]:
        return [_model_out(info) for info in model_versions(session)]

    @router.get(
        "/models/{version}",
        response_model=ModelOut,
        summary="One model version and its manifest",
        responses={404: {"model": ErrorOut, "description": "No such model version."}},
    )
    def model(version: VersionText, session: SessionDep) -> ModelOut:
        found = model_versions(session, version)
        if not found:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"model version {version!r} has not written to this database: "
                "GET /api/models lists the versions it knows",
            )
        return _model_out(found[0])

    return router


def _model_out(info: ModelInfo) -> ModelOut:
    calibration = info.manifest.get("calibration")
    fpr = calibration.get("fpr") if isinstance(calibration, dict) else None
    usable = isinstance(fpr, int | float) and not isinstance(fpr, bool) and 0 < fpr < 1
    return ModelOut(
        version=info.version,
        first_seen=info.first_seen,
        last_seen=info.last_seen,
        flagged=info.flagged,
        flag_severity=round(flag_severity(float(fpr)), 3) if usable and fpr else None,
        manifest=dict(info.manifest),
    )
