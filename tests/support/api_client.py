"""An in-process HTTP client of an app, as a browser on this machine would address it: the
server answers only to the Host names it trusts (loopback ones by default), and Starlette's
TestClient would otherwise send "testserver"."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

LOCAL = "http://127.0.0.1"


def local_client(app: FastAPI) -> TestClient:
    return TestClient(app, base_url=LOCAL)
