"""`latentwatch models ...` in-process through the CLI's entry point: the output a user reads
and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cancer_model import Model
from tests.support.cli_run import run


def test_models_commands(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cancer_model: Model,
    loose_model: Model,
    misfit_model: Path,
    damaged_model: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'lw.db'}"
    common = ("--db", db, "--topic", "orders")
    a, b = cancer_model.detector.version, loose_model.detector.version
    store = ("--store", tmp_path / "store")
    for path in (cancer_model.path, loose_model.path, misfit_model):
        code, out, err = run(capsys, "models", "register", path, "--db", db, *store)
        assert code == 0, err
        assert "registered" in out

    assert run(capsys, "models", "promote", a, *common)[:2] == (
        0,
        f"orders: live {a}, shadow none\n",
    )
    assert run(capsys, "models", "shadow", b, *common)[1] == f"orders: live {a}, shadow {b}\n"
    code, out, _ = run(capsys, "models", "list", *common)
    assert code == 0
    roles = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert roles[a] == "live" and roles[b] == "shadow" and len(roles) == 3
    assert run(capsys, "models", "promote", b, *common)[1] == f"orders: live {b}, shadow none\n"
    assert run(capsys, "models", "rollback", *common)[1] == f"orders: live {a}, shadow none\n"
    assert run(capsys, "models", "retire", b, *common)[0] == 0

    refusals = [
        (("models", "promote", "0123456789ab", *common), "'0123456789ab' is not registered"),
        (("models", "retire", a, *common), "is the live model of orders"),
        (("models", "rollback", *common), "no earlier live model"),
        (("models", "register", damaged_model, "--db", db, *store), "cannot be loaded"),
    ]
    misfit = run(capsys, "models", "register", misfit_model, "--db", db, *store)[1].split()[0]
    refusals.append((("models", "promote", misfit, *common), "does not fit the records"))
    for args, message in refusals:
        code, out, err = run(capsys, *args)
        assert code == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("latentwatch: error: "), err
        assert message in lines[0]
