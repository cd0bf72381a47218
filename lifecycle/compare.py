"""Live versus shadow over a window, or versus a backfill run over its range, from what was
stored (the arithmetic is pure): each model's flag rate against its calibrated false-alarm
rate, the overlap of their flagged records, the rank correlation of their scores, and their
precision over the records users labelled.

The shadow run keeps a row for every record either model flagged (with both scores), and
counts every record it scored; so rates use all scored records, while the overlap, the rank
correlation and the precision are over the flagged records only. Users label live flags (the
explorer shows no others), so a shadow model's precision is over the labelled records it
flags too; the records only it flags are not labelled, and their number is given beside.
A backfill run stores only what it flags: its records are compared with the live flags of the
same records, and the rank correlation is over the records both flagged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from scipy.stats import spearmanr
from sqlalchemy.orm import Session

from storage.comparison import (
    RunRange,
    StoredPair,
    backfill_comparison_rows,
    backfill_range,
    comparison_rows,
)


@dataclass(frozen=True)
class Side:
    version: str
    fpr: float | None  # the calibrated false-alarm rate the model was built for
    flagged: int
    flag_rate: float | None  # flagged / scored
    labelled: int  # of its flagged records, how many users labelled
    precision: float | None  # true alarms / labelled flagged records


@dataclass(frozen=True)
class Comparison:
    scored: int
    live: Side
    shadow: Side
    both_flagged: int
    either_flagged: int
    overlap: float | None  # both / either (Jaccard) of the flagged records
    rank_correlation: float | None  # Spearman, over the records either model flagged
    unlabelled_shadow_only: int  # flagged by the shadow model only: nobody has labelled them


def _precision(labels: Sequence[bool | None]) -> tuple[int, float | None]:
    known = [label for label in labels if label is not None]
    return len(known), (sum(known) / len(known) if known else None)


def compare(
    scored: int,
    counts: tuple[int, int],
    pairs: Sequence[StoredPair],
    versions: tuple[str, str],
    fprs: tuple[float | None, float | None],
) -> Comparison:
    """``scored`` records, of which the live and the shadow model flagged ``counts``;
    ``pairs``: the stored rows of the records either flagged; ``versions`` and ``fprs``: live
    first, then shadow."""
    live_flagged, shadow_flagged = counts
    both = sum(1 for p in pairs if p.flagged and p.live_flagged is True)
    either = sum(1 for p in pairs if p.flagged or p.live_flagged)
    rank = None
    # both scores stored (a backfill run stores no score for what only the live model flags)
    scored_twice = [p for p in pairs if p.live_score is not None and not math.isnan(p.score)]
    if len(scored_twice) > 1:
        a = np.array([p.live_score for p in scored_twice], dtype=np.float64)
        b = np.array([p.score for p in scored_twice], dtype=np.float64)
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            rank = float(spearmanr(a, b).statistic)
    live_labelled, live_precision = _precision([p.label for p in pairs if p.live_flagged])
    shadow_labelled, shadow_precision = _precision([p.label for p in pairs if p.flagged])
    rate = (lambda n: n / scored) if scored else (lambda n: None)
    return Comparison(
        scored=scored,
        live=Side(
            versions[0], fprs[0], live_flagged, rate(live_flagged), live_labelled, live_precision
        ),
        shadow=Side(
            versions[1],
            fprs[1],
            shadow_flagged,
            rate(shadow_flagged),
            shadow_labelled,
            shadow_precision,
        ),
        both_flagged=both,
        either_flagged=either,
        overlap=both / either if either else None,
        rank_correlation=rank,
        unlabelled_shadow_only=sum(
            1 for p in pairs if p.flagged and not p.live_flagged and p.label is None
        ),
    )


def compare_window(
    session: Session,
    topic: str,
    window: tuple[datetime, datetime],
    version: str | None = None,
) -> Comparison | None:
    """The comparison of ``topic``'s shadow run over ``window``; None if it stored nothing."""
    rows = comparison_rows(session, topic, window, version=version)
    if rows.shadow_version is None:
        return None
    return compare(
        rows.scored,
        (rows.live_flagged, rows.flagged),
        rows.pairs,
        (rows.live_version or "", rows.shadow_version),
        rows.fprs,
    )


def compare_run(session: Session, name: str) -> tuple[Comparison, RunRange] | None:
    """A backfill run (``latentwatch rescore --name``) against the live flags of the records
    it re-scored, over its whole range; None if there is no such run."""
    run = backfill_range(session, name)
    if run is None:
        return None
    rows = backfill_comparison_rows(session, run)
    result = compare(
        rows.scored,
        (rows.live_flagged, rows.flagged),
        rows.pairs,
        (rows.live_version or "", run.version),
        rows.fprs,
    )
    return result, run
