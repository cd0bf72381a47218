"""What `latentwatch consume` runs with, composed of each layer's settings; the CLI and the
config file take every default from here (no torch, no Kafka client imported)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lifecycle.settings import REGISTRY_POLL_S
from storage.settings import Timeouts
from streams.settings import KafkaSettings, LivenessSettings, LoopSettings

# SIGTERM ends the process within this many seconds, whatever it is waiting on: gracefully when
# the database answers within its timeouts (ConsumeSettings.db_timeouts), else by force.
SHUTDOWN_TIMEOUT_S = 10.0
# A write waits at most 5 s for a lock and runs at most 10 s; then it is logged and retried.
DB_TIMEOUTS = Timeouts(statement_s=10.0, lock_s=5.0)

# Prometheus's /metrics port of the consumer (the CLI's -1, ConsumeSettings' None: no endpoint)
METRICS_PORT = 9464


@dataclass(frozen=True)
class ConsumeSettings:
    """What `latentwatch consume` runs with: each layer's settings as that layer defines them
    (the Kafka clients', the loop's with its decode policy, the watchdog's), and the wiring's
    own. The CLI and the config file take their defaults from these dataclasses."""

    model: Path | None  # None: the live model of ``registry`` in the model registry
    db: str
    kafka: KafkaSettings
    loop: LoopSettings = field(default_factory=LoopSettings)
    deadletter_topic: str | None = None  # None: <topic>.deadletter
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = METRICS_PORT  # None: no endpoint; 0: any free port
    torch_threads: int = 1  # micro-batches are small: one thread is fastest, and leaves cores free
    db_timeouts: Timeouts = DB_TIMEOUTS
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S
    # give up (StartupTimeoutError) when the database or Kafka still fails this long after
    # start; 0: keep trying
    startup_timeout_s: float = 0.0
    liveness: LivenessSettings = field(default_factory=LivenessSettings)  # the watchdog
    # Follow the model registry's roles of this topic (or group name) instead of --model:
    # start on its live model, switch to a promotion between two batches, score its shadow.
    registry: str | None = None
    registry_poll_s: float = REGISTRY_POLL_S
