"""`latentwatch api`: where its token may come from, what it refuses with one line (a token that
would leave the API open or show in ps, serving beyond loopback without a token), and one real
server from the command line (token from a file, an extra trusted Host name, SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from latentwatch.cli import main
from latentwatch.embedded import free_port

TOKEN = "f3a9c1d7e5b2a8c4d6e0f1a2"


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str | Path
) -> tuple[int, str]:
    """The console entry point in this process, as `latentwatch api ...` runs it."""
    monkeypatch.setattr(sys, "argv", ["latentwatch", "api", *map(str, args)])
    with pytest.raises(SystemExit) as stopped:
        main()
    code = stopped.value.code
    return code if isinstance(code, int) else 1, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--host", "0.0.0.0", "--token", ""], {}, "--token on the command line is visible"),
        (["--token", TOKEN], {}, "visible to every user of this machine (ps)"),
        (["--host", "0.0.0.0"], {"LATENTWATCH_API_TOKEN": ""}, "LATENTWATCH_API_TOKEN: the API "),
        ([], {"LATENTWATCH_API_TOKEN": "   "}, "the API token is empty (an unset variable?)"),
        ([], {"LATENTWATCH_API_TOKEN": "short"}, "has 5 characters, fewer than 16"),
        (["--host", "0.0.0.0"], {}, "refusing to serve on 0.0.0.0 without an API token"),
        (["--host", "::"], {}, "refusing to serve on :: without an API token"),
        (["--token-file", "{empty}"], {}, "the API token is empty"),
        (["--token-file", "{missing}"], {}, "cannot read the API token from --token-file"),
        (["--token-file", "{good}"], {"LATENTWATCH_API_TOKEN": TOKEN}, "give the API token once"),
    ],
)
def test_api_refuses_what_would_leave_it_open_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    words: str,
) -> None:
    files = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "good": tmp_path / "t"}
    files["empty"].write_text("\n")
    files["good"].write_text(TOKEN)
    monkeypatch.delenv("LATENTWATCH_API_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    db = tmp_path / "lw.db"
    argv = [a.format(**files) for a in args]
    code, stderr = run_main(monkeypatch, capsys, "--db", f"sqlite:///{db}", *argv)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latentwatch: error: "), stderr
    assert words in lines[0]
    assert TOKEN not in stderr
    assert not db.exists()  # refused before anything was opened


@pytest.mark.slow
def test_api_serves_with_a_token_from_a_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "latentwatch", "api", "--db", f"sqlite:///{tmp_path / 'a.db'}"),
            *("--port", str(port), "--token-file", str(token_file)),
            *("--trusted-host", "explorer.lan.example"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("LATENTWATCH_")},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the API did not answer within 30 s"
                time.sleep(0.1)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{url}/api/flagged").status_code == 401
        assert httpx.get(f"{url}/api/flagged", headers=bearer).status_code == 200
        named = {**bearer, "Host": "explorer.lan.example"}
        assert httpx.get(f"{url}/api/flagged", headers=named).status_code == 200
        other = {**bearer, "Host": "rebound.example"}
        assert httpx.get(f"{url}/api/flagged", headers=other).status_code == 400
        # what every user of the machine can read: the token is not there
        assert TOKEN.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    assert "Finished server process" in stderr
    assert "Traceback" not in stderr and TOKEN not in stderr
