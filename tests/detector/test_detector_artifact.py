"""Model directory: bit-identical round trip, determinism, and clear errors for bad directories."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from detector import artifact
from detector.calibration import p_values
from detector.detector import Detector, DetectorConfig
from detector.errors import ArtifactError
from tests.support.detector_data import FAST, Split


@pytest.fixture(scope="module")
def saved(numeric_detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m"
    artifact.save(numeric_detector, path)
    return path


def test_round_trip_gives_bit_identical_scores(
    numeric_detector: Detector, saved: Path, cancer: Split
) -> None:
    loaded, manifest = artifact.load(saved)
    columns = cancer.columns(cancer.test)
    before = numeric_detector.score_columns(columns, len(cancer.test))
    after = loaded.score_columns(columns, len(cancer.test))
    for name in (
        "score",
        "p_value",
        "severity",
        "density",
        "reconstruction",
        "cluster",
        "cluster_distance",
        "contributions",
        "latent",
        "flagged",
    ):
        assert np.array_equal(getattr(before, name), getattr(after, name)), name
    assert loaded.version == manifest["version"] == numeric_detector.version
    assert loaded.schema == numeric_detector.schema


def test_manifest_describes_the_model(saved: Path, numeric_detector: Detector) -> None:
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format"] == "latentwatch-model"
    assert manifest["format_version"] == artifact.FORMAT_VERSION
    assert len(manifest["version"]) == 12
    assert manifest["created_at"].endswith("Z")
    assert manifest["calibration"]["fpr"] == 0.01
    assert manifest["calibration"]["threshold"] == numeric_detector.calibrations.threshold
    assert manifest["training"]["data_fingerprint"] == numeric_detector.report.data_fingerprint
    assert manifest["mixture"]["n_components"] == numeric_detector.mixture.n_components
    assert {f["name"] for f in manifest["schema"]["fields"]} == set(numeric_detector.schema.names)
    assert set(manifest["files"]) == {"weights.safetensors", "arrays.safetensors"}


def test_a_format_1_model_keeps_its_exponential_tail(
    saved: Path, tmp_path: Path, cancer: Split
) -> None:
    # Models saved before the predictive tail had no tail_points: they load, and score with the
    # plain exponential tail their threshold was computed with.
    model = _copy(saved, tmp_path)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["format_version"] = 1
    for name in ("density", "reconstruction", "score"):
        assert manifest["calibration"][name].pop("tail_points") >= 4
    (model / "manifest.json").write_text(json.dumps(manifest))

    old, _ = artifact.load(model)
    new, _ = artifact.load(saved)
    cal = old.calibrations.score
    assert cal.tail_points is None
    far = np.array([cal.tail_start + 5 * cal.tail_scale])
    assert p_values(cal, far)[0] == pytest.approx(cal.tail_p * np.exp(-5.0), rel=1e-12)
    assert p_values(new.calibrations.score, far)[0] > p_values(cal, far)[0]  # heavier tail
    columns = cancer.columns(cancer.test)
    scored = old.score_columns(columns, len(cancer.test))
    assert np.array_equal(scored.flagged, scored.score > old.calibrations.threshold)


def test_no_pickle_in_the_directory(saved: Path) -> None:
    for path in saved.iterdir():
        head = path.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"PK", f"{path.name} looks like a pickle/zip"


def test_same_data_and_seed_give_the_same_model(cancer: Split, tmp_path: Path) -> None:
    columns = cancer.columns(cancer.train)
    a = Detector.fit(columns, config=FAST)
    b = Detector.fit(columns, config=FAST)
    other_seed = DetectorConfig(training=dataclasses.replace(FAST.training, seed=7))
    c = Detector.fit(columns, config=other_seed)
    va, vb, vc = (artifact.save(d, tmp_path / n) for d, n in ((a, "a"), (b, "b"), (c, "c")))
    assert va == vb
    assert va != vc
    test = cancer.columns(cancer.test)
    assert np.array_equal(
        a.score_columns(test, len(cancer.test)).score, b.score_columns(test, len(cancer.test)).score
    )


def _copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="model directory .*nope does not exist"):
        artifact.load(tmp_path / "nope")


def test_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ArtifactError, match="is not a latentwatch model: no manifest.json"):
        artifact.load(tmp_path)


def test_foreign_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="has no 'format: latentwatch-model'"):
        artifact.load(tmp_path)


def test_damaged_manifest(saved: Path, tmp_path: Path) -> None:
    model = _copy(saved, tmp_path)
    (model / "manifest.json").write_text("{ not json")
    with pytest.raises(ArtifactError, match="manifest.json is damaged: not valid JSON"):
        artifact.load(model)


def test_newer_format(saved: Path, tmp_path: Path) -> None:
    model = _copy(saved, tmp_path)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["format_version"] = artifact.FORMAT_VERSION + 1
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="written by a newer latentwatch"):
        artifact.load(model)


def test_incomplete_directory(saved: Path, tmp_path: Path) -> None:
    model = _copy(saved, tmp_path)
    (model / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="is incomplete: weights.safetensors is missing"):
        artifact.load(model)


def test_damaged_weights(saved: Path, tmp_path: Path) -> None:
    model = _copy(saved, tmp_path)
    data = bytearray((model / "weights.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (model / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.safetensors does not match its checksum"):
        artifact.load(model)


def test_inconsistent_manifest(saved: Path, tmp_path: Path) -> None:
    model = _copy(saved, tmp_path)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["vae"]["latent_dim"] += 1  # the weights no longer fit the architecture
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="is damaged or inconsistent"):
        artifact.load(model)


def test_save_refuses_to_overwrite_foreign_files(
    numeric_detector: Detector, tmp_path: Path
) -> None:
    (tmp_path / "precious.csv").write_text("a,b\n")
    with pytest.raises(ArtifactError, match="refusing to write a model into"):
        artifact.save(numeric_detector, tmp_path)
    assert (tmp_path / "precious.csv").exists()


def test_save_replaces_an_older_model(
    numeric_detector: Detector, saved: Path, tmp_path: Path
) -> None:
    model = _copy(saved, tmp_path)
    version = artifact.save(numeric_detector, model)
    assert artifact.load(model)[0].version == version


FORMAT_2 = Path(__file__).parent / "fixtures" / "format-2"


def test_a_format_2_model_scores_as_the_release_that_saved_it() -> None:
    # fixtures/format-2 was saved, and its expected scores computed, by the code of format 2
    # (mixed records: a category, a boolean, missing values, an unseen category)
    model, manifest = artifact.load(FORMAT_2 / "model")
    assert manifest["format_version"] == 2
    assert model.score_rule == 2
    records = json.loads((FORMAT_2 / "records.json").read_text())
    expected = json.loads((FORMAT_2 / "expected.json").read_text())
    scores = model.score_records(records)
    # Same rule, same weights: equal to float32 rounding. The kernels torch picks differ between
    # CPUs (AVX2 against AVX-512 sum in another order), so the last bits may differ from the
    # machine that saved the fixture; a changed rule moves scores by far more than this.
    for name, values in expected.items():
        actual = np.asarray(getattr(scores, name), dtype=float)
        if name in ("flagged", "cluster"):
            assert actual.tolist() == values, name
        else:
            np.testing.assert_allclose(actual, values, rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_format_2_model_saved_again_keeps_its_score_rule(tmp_path: Path) -> None:
    model, _ = artifact.load(FORMAT_2 / "model")
    artifact.save(model, tmp_path / "again")
    again, manifest = artifact.load(tmp_path / "again")
    assert manifest["format_version"] == artifact.FORMAT_VERSION
    assert again.score_rule == 2
    records = json.loads((FORMAT_2 / "records.json").read_text())
    assert np.array_equal(again.score_records(records).score, model.score_records(records).score)
