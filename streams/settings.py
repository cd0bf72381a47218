"""The stream layer's settings, each default stated once: the Kafka clients', the consumer
loop's (with its decode policy) and the watchdog's. latentwatch.settings composes them, and the
CLI and the config file take their defaults from here. Plain dataclasses: importing this module
loads neither torch nor a Kafka client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.messages import DecodePolicy

EXPLAINED_FEATURES = 5  # per flagged record, most surprising first; 0: every field


# read_committed: only the records of committed transactions (transactional producers)
IsolationLevel = Literal["read_uncommitted", "read_committed"]


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    group: str = "latentwatch"
    topics: tuple[str, ...] = ()
    session_timeout_ms: int = 6000
    fetch_max_wait_ms: int = 50
    auto_offset_reset: str = "earliest"
    client_id: str = "latentwatch"
    isolation_level: IsolationLevel = "read_uncommitted"  # read_committed: skip aborted ones
    # kafka-python settings (security_protocol, sasl_*, ssl_*, max_poll_interval_ms ...); each
    # client gets the ones it knows (options_for)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopSettings:
    poll_timeout_s: float = 0.5
    max_records: int = 2000
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    policy: DecodePolicy = field(default_factory=DecodePolicy)
    explained_features: int = EXPLAINED_FEATURES  # per flagged record; 0: every field
    nearest_normal: bool = True  # each flagged record's nearest normal record (counterfactual)
    typed_decoding: bool = True  # the msgspec fast path (streams/typed.py); False: the reference


@dataclass(frozen=True)
class LivenessSettings:
    interval_s: float = 1.0  # how often the watchdog looks (lag, stuck operations, readiness)
    stuck_after_s: float = 10.0  # an operation running longer than this is stuck
    # Lag look-ups give up after this; the watchdog keeps its last answer meanwhile.
    lookup_timeout_s: float = 5.0
