"""`latentwatch train | score | inspect` through a real subprocess, as other tools call them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.support.detector_data import breast_cancer


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "latentwatch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_user_error(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("latentwatch: error: ")
    assert message in lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Breast-cancer records as CSV: train = half the benign rows; test = the rest + malignant."""
    root = tmp_path_factory.mktemp("cli")
    data = breast_cancer()
    train, test = data.train, np.concatenate([data.held_out, data.anomalous[:40]])

    def write(path: Path, rows: np.ndarray) -> Path:
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["record_id", *data.names, "label"])
            for i in rows:
                w.writerow([f"p{i:04d}", *data.x[i], int(i in data.anomalous)])
        return path

    return {
        "train": write(root / "train.csv", train),
        "test": write(root / "test.csv", test),
        "root": root,
    }


@pytest.fixture(scope="module")
def model(files: dict[str, Path]) -> Path:
    out = files["root"] / "model"
    proc = run(
        "train",
        "--data",
        files["train"],
        "--out",
        out,
        "--exclude",
        "label",
        "--id-column",
        "record_id",
        "--seed",
        "3",
    )
    assert f"saved to {out}" in proc.stdout
    return out


def test_train_score_inspect_end_to_end(files: dict[str, Path], model: Path) -> None:
    """Train on benign records, score held-out benign + malignant: a stated AUROC."""
    out = files["root"] / "scores.csv"
    run("score", "--model", model, "--data", files["test"], "--out", out)
    with files["test"].open() as fh:
        test_rows = list(csv.DictReader(fh))
    with out.open() as fh:
        scored = list(csv.DictReader(fh))
    assert len(scored) == len(test_rows)
    assert [r["record_id"] for r in scored] == [r["record_id"] for r in test_rows]  # input order
    for column in (
        "score",
        "severity",
        "p_value",
        "flagged",
        "density",
        "reconstruction",
        "cluster",
        "top_features",
    ):
        assert column in scored[0]
    labels = np.array([int(r["label"]) for r in test_rows])
    scores = np.array([float(r["score"]) for r in scored])
    assert roc_auc_score(labels, scores) >= 0.95
    flagged = np.array([int(r["flagged"]) for r in scored])
    assert flagged[labels == 1].mean() > flagged[labels == 0].mean()
    assert all(0 <= float(r["severity"]) <= 100 for r in scored)
    assert all(len(r["top_features"].split(";")) == 3 for r in scored)
    # a flagged row names its nearest normal record's changes, its top feature the first
    for r in scored:
        changes = r["nearest_normal"]
        assert bool(changes) == (r["flagged"] == "1")
        if changes:
            first = changes.split("; ")[0]
            assert " -> " in first and first.split(":")[0] == r["top_features"].split(";")[0]

    summary = run("inspect", "--model", model).stdout
    assert "reference clusters" in summary and "mean_radius" in summary
    manifest = json.loads(run("inspect", "--model", model, "--json").stdout)
    assert manifest["schema"]["id_column"] == "record_id"
    assert "label" not in [f["name"] for f in manifest["schema"]["fields"]]


def test_jsonl_with_bad_records_scores_the_good_ones(model: Path, files: dict[str, Path]) -> None:
    with files["test"].open() as fh:
        rows = list(csv.DictReader(fh))[:3]
    good = [{k: (v if k == "record_id" else float(v)) for k, v in r.items()} for r in rows]
    wrong_type = dict(good[1], mean_radius="large")
    path = files["root"] / "mixed.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(good[0]),
                "{broken json",
                json.dumps(wrong_type),
                json.dumps([1, 2]),
                json.dumps(good[2]),
            ]
        )
        + "\n"
    )
    out = files["root"] / "mixed.csv"
    proc = run("score", "--model", model, "--data", path, "--out", out)
    assert "scored 2 of 5 rows" in proc.stdout
    with out.open() as fh:
        scored = list(csv.DictReader(fh))
    assert [bool(r["score"]) for r in scored] == [True, False, False, False, True]
    assert "line 2: not valid JSON" in scored[1]["reason"]
    assert scored[2]["reason"] == "field 'mean_radius': expected a number, got string"
    assert "must be a JSON object" in scored[3]["reason"]


def test_missing_columns_are_scored_as_missing_with_a_warning(
    model: Path, files: dict[str, Path]
) -> None:
    """Fields always present in the reference data make a record unusual when absent."""
    with files["test"].open() as fh:
        rows = list(csv.DictReader(fh))[:5]
    kept = ("record_id", "mean_radius", "mean_texture")
    path = files["root"] / "partial.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=kept)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in kept})
    complete, partial = files["root"] / "complete-scores.csv", files["root"] / "partial-scores.csv"
    run("score", "--model", model, "--data", files["test"], "--out", complete)
    proc = run("score", "--model", model, "--data", path, "--out", partial)
    assert "28 feature column(s) absent, scored as missing" in proc.stderr
    with complete.open() as fh:
        full = {r["record_id"]: r for r in csv.DictReader(fh)}
    with partial.open() as fh:
        for r in csv.DictReader(fh):
            # 28 fields never missing in ~140 reference rows: about 28 * log(140) nats more
            assert float(r["score"]) > float(full[r["record_id"]]["score"]) + 100
            assert float(r["p_value"]) < 0.05


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_file", "does not exist"),
        ("empty_file", "is empty"),
        ("header_only", "has no data rows"),
        ("no_usable_columns", "no usable feature columns"),
        ("unsupported_type", "unsupported file type '.xlsx'"),
        ("bad_fpr", "--fpr must be between 0 and 1, got 2.0"),
        ("bad_jsonl", "1 unreadable row(s), first: line 2: not valid JSON"),
        ("unknown_exclude", "column 'nope' named in the options is not in the data"),
        ("damaged_parquet", "is not a readable Parquet file"),
        ("out_not_creatable", "cannot write a model to"),
        ("bad_fpr_type", "Invalid value for '--fpr'"),
        ("missing_option", "Missing option '--out' (see `"),
    ],
)
def test_train_user_errors(tmp_path: Path, case: str, message: str) -> None:
    data = tmp_path / "data.csv"
    extra: list[str] = []
    if case == "empty_file":
        data.write_text("")
    elif case == "header_only":
        data.write_text("a,b\n")
    elif case == "no_usable_columns":
        data.write_text("id\n" + "\n".join(f"u{i}" for i in range(50)) + "\n")
    elif case == "unsupported_type":
        data = tmp_path / "data.xlsx"
        data.write_text("x")
    elif case == "bad_fpr":
        data.write_text("a\n1\n2\n")
        extra = ["--fpr", "2"]
    elif case == "bad_jsonl":
        data = tmp_path / "data.jsonl"
        data.write_text('{"a": 1}\n{oops\n')
    elif case == "unknown_exclude":
        data.write_text("a\n1\n2\n")
        extra = ["--exclude", "nope"]
    elif case == "damaged_parquet":
        data = tmp_path / "data.parquet"
        data.write_bytes(b"PAR1 this is not the rest of a parquet file PAR1")
    elif case == "bad_fpr_type":
        extra = ["--fpr", "abc"]
    out: list[str | Path] = ["--out", tmp_path / "m"]
    if case == "out_not_creatable":  # its parent is a file
        data.write_text("a,b\n" + "".join(f"{i % 7},{i % 5}\n" for i in range(60)))
        (tmp_path / "taken").write_text("a file")
        out = ["--out", tmp_path / "taken" / "m"]
    elif case == "missing_option":
        out = []
    proc = run("train", "--data", data, *out, *extra, ok=False)
    assert_user_error(proc, message)
    if case in ("bad_fpr_type", "missing_option"):
        assert proc.returncode == 2  # click's code for a command line it cannot parse


def test_score_user_errors(tmp_path: Path, model: Path, files: dict[str, Path]) -> None:
    (tmp_path / "not-a-model").mkdir()
    proc = run(
        "score",
        "--model",
        tmp_path / "not-a-model",
        "--data",
        files["test"],
        "--out",
        tmp_path / "o.csv",
        ok=False,
    )
    assert_user_error(proc, "is not a latentwatch model: no manifest.json")

    other = tmp_path / "other.csv"
    other.write_text("colour,size\nred,1\nblue,2\n")
    proc = run("score", "--model", model, "--data", other, "--out", tmp_path / "o.csv", ok=False)
    assert_user_error(proc, "has none of the model's 30 feature columns")
    assert not (tmp_path / "o.csv").exists()

    proc = run("inspect", "--model", tmp_path / "absent", ok=False)
    assert_user_error(proc, "does not exist")


@pytest.mark.parametrize("case", ["folder_not_creatable", "out_is_a_folder"])
def test_score_output_that_cannot_be_written(
    tmp_path: Path, model: Path, files: dict[str, Path], case: str
) -> None:
    if case == "folder_not_creatable":
        (tmp_path / "taken").write_text("a file")
        out = tmp_path / "taken" / "scores" / "o.csv"
    else:
        out = tmp_path
    proc = run("score", "--model", model, "--data", files["test"], "--out", out, ok=False)
    assert_user_error(proc, f"cannot write {out}: ")


def test_usage_errors_are_one_line_and_help_is_untouched(tmp_path: Path) -> None:
    proc = run("score", "--model", tmp_path, ok=False)
    assert_user_error(proc, "Missing option '--data' (see `")
    assert proc.returncode == 2
    proc = run("nosuch", ok=False)
    assert_user_error(proc, "No such command 'nosuch'")
    proc = run("score", "--help")
    assert proc.stderr == ""
    assert "Usage:" in proc.stdout and "--data" in proc.stdout and "--out" in proc.stdout
    proc = run(ok=False)  # no command: the help, as `--help` gives it, and click's code
    assert proc.returncode == 2 and proc.stderr == ""
    assert proc.stdout.strip() == run("--help").stdout.strip()


def test_a_bad_cell_in_a_numeric_csv_column_rejects_only_its_row(
    model: Path, files: dict[str, Path]
) -> None:
    with files["test"].open() as fh:
        rows = list(csv.DictReader(fh))[:3]
    rows[1]["mean_radius"] = "abc"
    path = files["root"] / "bad-cell.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = files["root"] / "bad-cell-scores.csv"
    proc = run("score", "--model", model, "--data", path, "--out", out)
    assert "scored 2 of 3 rows" in proc.stdout
    with out.open() as fh:
        scored = list(csv.DictReader(fh))
    assert [bool(r["score"]) for r in scored] == [True, False, True]
    assert [r["reason"] for r in scored] == [
        "",
        "field 'mean_radius': expected a number, got string",
        "",
    ]


def test_scores_keep_the_id_column_when_the_data_lacks_it(
    model: Path, files: dict[str, Path]
) -> None:
    with files["test"].open() as fh:
        rows = list(csv.DictReader(fh))[:4]
    path = files["root"] / "no-ids.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k != "record_id"])
        w.writeheader()
        w.writerows([{k: v for k, v in r.items() if k != "record_id"} for r in rows])
    out = files["root"] / "no-ids-scores.csv"
    proc = run("score", "--model", model, "--data", path, "--out", out)
    assert proc.stderr.strip().splitlines() == [
        f"latentwatch: warning: id column 'record_id' absent from {path}: written empty"
    ]
    with out.open() as fh:
        reader = csv.DictReader(fh)
        scored = list(reader)
    assert reader.fieldnames is not None and reader.fieldnames[0] == "record_id"
    assert [r["record_id"] for r in scored] == [""] * 4
    assert all(r["score"] for r in scored)


def test_csv_text_columns_stay_text_and_mixed_columns_are_not_features(tmp_path: Path) -> None:
    """Training: a column of codes where a few look like numbers ("7") is categorical, codes
    included; a numeric column with a stray string is not silently turned categorical, it is
    left out with its reason. Scoring: the model's categorical fields are read as text, so a
    batch of mostly "7" is not a column of numbers."""
    rng = np.random.RandomState(0)
    train = tmp_path / "train.csv"
    with train.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "region", "level"])
        for i in range(120):
            level = "abc" if i == 50 else str(i % 5 + 1)  # integers 1-5 and one stray string
            w.writerow([rng.normal(), rng.normal(), ("eu", "us", "7")[i % 3], level])
    proc = run("train", "--data", train, "--out", tmp_path / "m", "--seed", "1")
    assert "column 'level' not used: mixed or unsupported value types (float, str)" in proc.stderr
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    fields = {f["name"]: f for f in manifest["schema"]["fields"]}
    assert set(fields) == {"a", "b", "region"}
    assert fields["region"]["kind"] == "categorical"
    assert fields["region"]["categories"] == ["7", "eu", "us"]

    data = tmp_path / "codes.csv"
    data.write_text("a,b,region\n0.1,0.2,7\n-0.3,0.1,7\n0.2,-0.1,eu\n")
    out = tmp_path / "scores.csv"
    proc = run("score", "--model", tmp_path / "m", "--data", data, "--out", out)
    assert "scored 3 of 3 rows" in proc.stdout


def test_parquet_scores_like_csv(files: dict[str, Path], model: Path) -> None:
    """The same records as .parquet (typed columns: float, int, string, with nulls) give the
    same scores as the CSV, in the same order."""
    import pyarrow as pa  # noqa: PLC0415  (the parquet extra, part of dev)
    import pyarrow.parquet as pq  # noqa: PLC0415

    with files["test"].open() as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[object]] = {
        name: [None if r[name] == "" else float(r[name]) for r in rows]
        for name in rows[0]
        if name not in ("record_id", "label")
    }
    columns["mean_radius"][0] = None  # a null in a float column counts as missing, like ""
    columns["record_id"] = [r["record_id"] for r in rows]
    columns["label"] = [int(r["label"]) for r in rows]
    pq.write_table(pa.table(columns), files["root"] / "test.parquet")
    with (files["root"] / "test-null.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{**rows[0], "mean_radius": ""}, *rows[1:]])

    def scores(data: Path) -> list[dict[str, str]]:
        out = files["root"] / f"{data.stem}-scores.csv"
        run("score", "--model", model, "--data", data, "--out", out)
        with out.open() as fh:
            return list(csv.DictReader(fh))

    from_parquet, from_csv = (
        scores(files["root"] / "test.parquet"),
        scores(files["root"] / "test-null.csv"),
    )
    assert [r["record_id"] for r in from_parquet] == [r["record_id"] for r in rows]
    assert [r["score"] for r in from_parquet] == [r["score"] for r in from_csv]
    assert from_parquet[0]["score"] != ""  # the null was imputed, not a rejected row
