"""The Overview page run in-process with AppTest on the small artifact.

The numbers the page shows are checked against direct computations with plain loops.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from explorer.artifacts import load_explorer_data
from explorer.serve import WORKDIR_ENV

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "explorer" / "streamlit_app.py"
TIMEOUT_S = 30
N_CLASSES = 10


def open_overview(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(WORKDIR_ENV, str(workdir))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.run()
    at.switch_page(str(REPO / "pages" / "overview.py")).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def decode(value: Any) -> np.ndarray:
    """An array of a plotly JSON figure: a list, or a typed array {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        if shape:
            array = array.reshape([int(s) for s in str(shape).split(",")])
        return array
    return np.asarray(value)


def chart(at: AppTest, key: str) -> dict[str, Any]:
    """The first trace of the plotly chart with this key, as JSON."""
    found = [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    assert len(found) == 1, [c.proto.id for c in at.get("plotly_chart")]
    return json.loads(found[0].proto.spec)["data"][0]


def settings_table(at: AppTest) -> dict[str, str]:
    (table,) = [df.value for df in at.dataframe if "setting" in df.value.columns]
    return dict(table.values.tolist())


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_overview_numbers_match_a_direct_computation(small_artifact: Path, monkeypatch) -> None:
    at = open_overview(small_artifact, monkeypatch)
    data = load_explorer_data(small_artifact)
    labels, preds = data.test_labels, data.test_pred
    shown = metrics(at)
    assert shown["Training images"] == "60" and shown["Test images"] == "30"
    assert shown["Classes"] == "10" and shown["Flipped training labels"] == "3"
    correct = sum(int(a == b) for a, b in zip(labels, preds, strict=True))
    assert shown["Test accuracy (ensemble of checkpoints)"] == f"{correct / 30:.1%}" == "86.7%"

    confusion = np.zeros((N_CLASSES, N_CLASSES), dtype=int)
    for a, b in zip(labels, preds, strict=True):
        confusion[a, b] += 1
    np.testing.assert_array_equal(decode(chart(at, "confusion")["text"]), confusion)
    per_class = decode(chart(at, "per_class_accuracy")["y"])
    np.testing.assert_allclose(per_class, confusion.diagonal() / confusion.sum(1))

    # mean score of training label a on test class b, one pair at a time
    scores = np.asarray(data.scores, dtype=np.float64)
    expected = np.zeros((N_CLASSES, N_CLASSES))
    for a in range(N_CLASSES):
        for b in range(N_CLASSES):
            pairs = [
                scores[j, i]
                for j in range(len(labels))
                if labels[j] == b
                for i in range(len(data.train_labels))
                if data.train_labels[i] == a
            ]
            expected[a, b] = sum(pairs) / len(pairs)
    influence = chart(at, "influence")
    np.testing.assert_allclose(decode(influence["customdata"]), expected, rtol=1e-9)
    assert influence["zmid"] == 0 and influence["zmin"] == -influence["zmax"]

    counts = decode(chart(at, "class_counts")["y"])
    np.testing.assert_array_equal(counts, np.bincount(data.train_labels, minlength=N_CLASSES))


def test_overview_without_recorded_build_info(small_artifact: Path, monkeypatch) -> None:
    at = open_overview(small_artifact, monkeypatch)
    assert any("No build timings" in i.value for i in at.info)
    assert set(settings_table(at).values()) == {"not recorded"}
    assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith("-timings")]


def test_overview_shows_build_info(small_artifact: Path, monkeypatch) -> None:
    path = small_artifact / "explorer.json"
    info = json.loads(path.read_text())
    info |= {
        "trak_config": {"proj_dim": 512, "lam": 0.01, "proj_type": "gaussian"},
        "kernel": [{"lam_abs": 1.5}, {"lam_abs": 2.5}],
        "n_params": 1234,
        "timings": {"train_s": [1.0, 2.0], "scores_and_index_s": 0.5, "total_s": 9.0},
    }
    path.write_text(json.dumps(info))
    at = open_overview(small_artifact, monkeypatch)
    settings = settings_table(at)
    assert settings["checkpoints"] == "2" and settings["projection dimension k"] == "512"
    assert settings["λ (absolute, per checkpoint)"] == "1.5, 2.5"
    timings = chart(at, "timings")
    np.testing.assert_allclose(decode(timings["x"]), [3.0, 0.5])
    assert any("Whole build: 9.0 s" in c.value for c in at.caption)
    assert any("Not timed" in c.value and "featurize" in c.value for c in at.caption)


def test_overview_toggle_refits_the_colours(small_artifact: Path, monkeypatch) -> None:
    at = open_overview(small_artifact, monkeypatch)
    fitted = chart(at, "influence")["zmax"]
    at.toggle(key="fit_off_diagonal").set_value(False).run()
    whole = chart(at, "influence")
    assert whole["zmax"] >= fitted
    assert whole["zmax"] == pytest.approx(np.abs(decode(whole["z"])).max())


def test_overview_missing_artifacts(tmp_path: Path, monkeypatch) -> None:
    at = open_overview(tmp_path / "nowhere", monkeypatch)
    assert "No TRAK Explorer artifacts" in at.error[0].value
    assert not at.get("plotly_chart")
