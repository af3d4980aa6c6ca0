"""The Explore page run in-process with AppTest on the small artifact."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from explorer import views
from explorer.artifacts import ExplorerData, load_explorer_data
from explorer.serve import WORKDIR_ENV

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "explorer" / "streamlit_app.py"
TIMEOUT_S = 30
SMALL_MISCLASSIFIED = (1, 8, 14, 25)  # tests/conftest.py


def run_app(workdir: Path, monkeypatch: pytest.MonkeyPatch, **params: str) -> AppTest:
    monkeypatch.setenv(WORKDIR_ENV, str(workdir))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def caption_ids(captions: list[str]) -> list[int]:
    """Training ids from result captions such as '🚩 #17 · +0.5 label 3 (flipped, true 2)'."""
    heads = [c.replace("\u00a0", " ").split(" · ")[0] for c in captions]
    return [int(h.split("#")[1]) for h in heads]


def result_images(at: AppTest) -> tuple[list[str], list[str]]:
    """Captions of the helpful and of the harmful image grids (the target image comes first)."""
    grids = [im for im in at.image if im.captions and not im.captions[0].startswith("test #")]
    assert len(grids) == 2, [im.captions for im in at.image]
    return grids[0].captions, grids[1].captions


def gallery_ids(at: AppTest) -> list[int]:
    (table,) = [df for df in at.dataframe if df.key == "gallery"]
    return table.value["id"].tolist()


@pytest.fixture
def data(small_artifact: Path) -> ExplorerData:
    return load_explorer_data(small_artifact)


def test_page_runs_without_selection(small_artifact: Path, monkeypatch) -> None:
    at = run_app(small_artifact, monkeypatch)
    assert gallery_ids(at) == list(range(30))
    assert any("Pick a test image" in i.value for i in at.info)
    assert not at.error
    assert at.number_input(key="test").value is None


@pytest.mark.parametrize(("test_id", "k"), [(4, None), (25, "5"), (0, "48")])
def test_query_param_selects_target(
    small_artifact: Path, data: ExplorerData, monkeypatch, test_id: int, k: str | None
) -> None:
    params = {"test": str(test_id)} | ({"k": k} if k else {})
    at = run_app(small_artifact, monkeypatch, **params)
    helpful, harmful = data.top_k(test_id, int(k or 12))
    helpful_captions, harmful_captions = result_images(at)
    assert caption_ids(helpful_captions) == helpful.ids[0].tolist()
    assert caption_ids(harmful_captions) == harmful.ids[0].tolist()
    assert any(h.value == f"Test image #{test_id}" for h in at.subheader)
    target = [im for im in at.image if im.captions == [f"test #{test_id}"]]
    assert len(target) == 1
    label = data.test_labels[test_id]
    assert [m.value for m in at.metric][:2] == [str(label), str(data.test_pred[test_id])]
    verdict = "❌ misclassified" if test_id in SMALL_MISCLASSIFIED else "✅ correct"
    assert any(m.value == verdict for m in at.markdown)
    helpful_table, harmful_table = [df.value for df in at.dataframe if df.key != "gallery"]
    assert helpful_table["train id"].tolist() == helpful.ids[0].tolist()
    np.testing.assert_allclose(harmful_table["score"], harmful.scores[0], rtol=1e-6)


def test_flipped_training_labels_are_marked(
    small_artifact: Path, data: ExplorerData, monkeypatch
) -> None:
    # 48 helpful + 48 harmful of 60 training examples cover every flipped one
    at = run_app(small_artifact, monkeypatch, test="3", k="48")
    captions = [c.replace("\u00a0", " ") for grid in result_images(at) for c in grid]
    seen = set()
    for train_id, caption in zip(caption_ids(captions), captions, strict=True):
        if data.flipped[train_id]:
            seen.add(train_id)
            true = data.train_true_labels[train_id]
            assert f"label {data.train_labels[train_id]} (flipped, true {true})" in caption
            assert caption.startswith("🚩")
        else:
            assert "flipped" not in caption
    assert seen == set(np.flatnonzero(data.flipped).tolist())


def test_filters_from_url_reduce_the_gallery(small_artifact: Path, monkeypatch) -> None:
    at = run_app(small_artifact, monkeypatch, true="3")
    assert gallery_ids(at) == [3, 13, 23]
    at = run_app(small_artifact, monkeypatch, outcome="incorrect")
    assert gallery_ids(at) == list(SMALL_MISCLASSIFIED)
    at = run_app(small_artifact, monkeypatch, pred="9", outcome="incorrect")
    assert gallery_ids(at) == [8]


def test_filter_widgets_reduce_the_gallery_and_reset_the_page(
    small_artifact: Path, monkeypatch
) -> None:
    at = run_app(small_artifact, monkeypatch, test="7")
    at.selectbox(key="true").select("7").run()
    assert gallery_ids(at) == [7, 17, 27]
    at.radio(key="outcome").set_value("correct").run()
    assert gallery_ids(at) == [7, 17, 27]
    at.selectbox(key="pred").select("0").run()
    assert not [df for df in at.dataframe if df.key == "gallery"]
    assert any("No test images match" in i.value for i in at.info)
    # the selected target stays when the gallery is empty
    assert any(h.value == "Test image #7" for h in at.subheader)
    assert not at.exception


def test_gallery_pages(small_artifact: Path, monkeypatch) -> None:
    at = run_app(small_artifact, monkeypatch)
    assert at.pagination(key="page").value == 1
    # 30 test images fit on one page; an out-of-range page in the URL is ignored
    at = run_app(small_artifact, monkeypatch, page="9")
    assert gallery_ids(at) == list(range(30))


@pytest.fixture
def paged_artifact(tmp_path: Path, small_artifact_builder) -> Path:
    """120 test images: pages of 48, 48 and 24."""
    return small_artifact_builder(tmp_path / "paged", n_test=120)


def test_pages_and_last_partial_page(paged_artifact: Path, monkeypatch) -> None:
    at = run_app(paged_artifact, monkeypatch, page="2")
    assert gallery_ids(at) == list(range(48, 96))
    at.pagination(key="page").set_value(3).run()
    assert gallery_ids(at) == list(range(96, 120))
    assert any("Showing 97–120 of 120" in c.value for c in at.caption)
    # changing a filter goes back to the first page
    at.radio(key="outcome").set_value("correct").run()
    assert at.pagination(key="page").value == 1
    assert gallery_ids(at)[:3] == [0, 2, 3]


def jump_buttons(at: AppTest) -> list:
    return [b for b in at.button if b.label.startswith("📍 Go to")]


def test_target_off_page_offers_a_jump(paged_artifact: Path, monkeypatch) -> None:
    at = run_app(paged_artifact, monkeypatch, test="100")
    assert gallery_ids(at) == list(range(48))
    (jump,) = jump_buttons(at)
    assert "page 3" in jump.label
    jump.click().run()
    assert at.pagination(key="page").value == 3
    assert 100 in gallery_ids(at)
    assert not jump_buttons(at)
    # not offered when the filters hide the target
    at = run_app(paged_artifact, monkeypatch, test="100", true="1")
    assert not jump_buttons(at)


def test_invalid_test_id_in_url_is_ignored(small_artifact: Path, monkeypatch) -> None:
    at = run_app(small_artifact, monkeypatch, test="999")
    assert at.number_input(key="test").value is None
    assert any("Pick a test image" in i.value for i in at.info)


def test_missing_artifacts_show_how_to_build_them(tmp_path: Path, monkeypatch) -> None:
    at = run_app(tmp_path / "nowhere", monkeypatch, test="3")
    (error,) = at.error
    assert "No TRAK Explorer artifacts" in error.value
    assert "trak-explorer demo" in error.value
    assert not at.dataframe and not at.image


def test_incomplete_artifacts_show_how_to_build_them(small_artifact: Path, monkeypatch) -> None:
    info = json.loads((small_artifact / "explorer.json").read_text())
    (small_artifact / "explorer.json").write_text(json.dumps({**info, "complete": False}))
    at = run_app(small_artifact, monkeypatch)
    assert "trak-explorer demo" in at.error[0].value


def test_unreadable_artifacts_show_an_error(small_artifact: Path, monkeypatch) -> None:
    (small_artifact / "arrays.npz").write_bytes(b"not an npz file")
    at = run_app(small_artifact, monkeypatch)
    (error,) = at.error
    assert "could not be read" in error.value
    assert "trak-explorer demo" in error.value


# --- keyboard navigation (the buttons the J/K/H/L shortcuts press) -------------------------


def selected(at: AppTest) -> int | None:
    return at.number_input(key="test").value


def test_step_buttons_walk_the_filtered_gallery(small_artifact: Path, monkeypatch) -> None:
    at = run_app(small_artifact, monkeypatch, true="3")  # gallery: 3, 13, 23
    assert at.button(key="step_next").proto.shortcut == "j"
    assert at.button(key="step_previous").proto.shortcut == "k"
    at.button(key="step_next").click().run()
    assert selected(at) == 3
    assert at.button(key="step_previous").disabled
    at.button(key="step_next").click().run()
    assert selected(at) == 13
    assert any(h.value == "Test image #13" for h in at.subheader)
    at.button(key="step_next").click().run()
    assert selected(at) == 23 and at.button(key="step_next").disabled
    at.button(key="step_previous").click().run()
    assert selected(at) == 13
    assert not at.exception


def test_step_moves_the_gallery_page_along(paged_artifact: Path, monkeypatch) -> None:
    at = run_app(paged_artifact, monkeypatch, test="47")
    at.button(key="step_next").click().run()
    assert selected(at) == 48
    assert at.pagination(key="page").value == 2
    assert gallery_ids(at) == list(range(48, 96))
    # an id the filters hide steps to its neighbour in the filtered list
    at = run_app(paged_artifact, monkeypatch, test="50", outcome="incorrect")
    at.button(key="step_previous").click().run()
    assert selected(at) == 25


def test_page_buttons_turn_gallery_pages(paged_artifact: Path, monkeypatch) -> None:
    at = run_app(paged_artifact, monkeypatch)
    assert at.button(key="page_next").proto.shortcut == "l"
    at.button(key="page_next").click().run()
    assert at.pagination(key="page").value == 2
    at.button(key="page_next").click().run()
    at.button(key="page_next").click().run()  # already on the last page: stays
    assert at.pagination(key="page").value == 3
    at.button(key="page_previous").click().run()
    assert gallery_ids(at) == list(range(48, 96))
    assert selected(at) is None  # turning pages selects nothing


def test_help_dialog_lists_the_shortcuts(small_artifact: Path, monkeypatch) -> None:
    at = run_app(small_artifact, monkeypatch)
    assert not any("next gallery page" in m.value for m in at.markdown)
    at.button(key="shortcuts_help").click().run()
    (table,) = [m.value for m in at.markdown if "next gallery page" in m.value]
    for key, action in views.SHORTCUTS:
        assert f"| `{key}` | {action} |" in table


# --- CSV export and the training map --------------------------------------------------------


@pytest.fixture
def downloads(monkeypatch) -> list[bytes]:
    """Bytes of every CSV the page hands to Streamlit's media storage."""
    stored: list[bytes] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        if mimetype == "text/csv":
            stored.append(path_or_data)
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return stored


def test_csv_holds_the_shown_top_k(
    small_artifact: Path, data: ExplorerData, monkeypatch, downloads: list[bytes]
) -> None:
    at = run_app(small_artifact, monkeypatch, test="8", k="5")
    helpful_captions, harmful_captions = result_images(at)
    (csv,) = downloads
    table = pd.read_csv(io.BytesIO(csv))
    assert list(table.columns) == ["id", "label", "true label", "flipped", "score", "rank", "kind"]
    assert table["id"].tolist() == caption_ids(helpful_captions) + caption_ids(harmful_captions)
    assert table["kind"].tolist() == ["helpful"] * 5 + ["harmful"] * 5
    assert table["rank"].tolist() == [1, 2, 3, 4, 5] * 2
    helpful_table, harmful_table = [df.value for df in at.dataframe if df.key != "gallery"]
    shown = np.concatenate([helpful_table["score"], harmful_table["score"]])
    np.testing.assert_array_equal(table["score"].astype(np.float32), shown)
    ids = table["id"].to_numpy()
    np.testing.assert_array_equal(table["label"], data.train_labels[ids])
    np.testing.assert_array_equal(table["true label"], data.train_true_labels[ids])
    np.testing.assert_array_equal(table["flipped"], data.flipped[ids])
    (button,) = at.get("download_button")
    assert button.proto.url.endswith(".csv")


def map_traces(at: AppTest) -> list[dict]:
    (chart,) = [c for c in at.get("plotly_chart") if c.proto.id.endswith("-train_map")]
    return json.loads(chart.proto.spec)["data"]


def as_array(value) -> np.ndarray:
    if isinstance(value, dict):  # plotly's typed array
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


def test_map_shows_every_training_image(small_artifact: Path, monkeypatch) -> None:
    at = run_app(small_artifact, monkeypatch)
    coords = np.load(small_artifact / "train_map.npy")
    assert coords.shape == (60, 2)
    traces = map_traces(at)
    assert len(traces) == 10  # one per training label without a target
    ids = np.concatenate([as_array(t["customdata"]) for t in traces])
    assert sorted(ids.tolist()) == list(range(60))
    for trace in traces:
        np.testing.assert_allclose(as_array(trace["x"]), coords[as_array(trace["customdata"]), 0])
    assert any("Draw a lasso" in c.value for c in at.caption)


def test_map_is_coloured_by_the_target(small_artifact: Path, data: ExplorerData, monkeypatch):
    at = run_app(small_artifact, monkeypatch, test="4", k="6")
    base, harmful, helpful = map_traces(at)
    order = as_array(base["customdata"])
    assert sorted(order.tolist()) == list(range(60))
    np.testing.assert_allclose(as_array(base["marker"]["color"]), data.scores[4, order], rtol=1e-6)
    assert base["marker"]["cmid"] == 0
    top_helpful, top_harmful = data.top_k(4, 6)
    assert as_array(helpful["customdata"]).tolist() == top_helpful.ids[0].tolist()
    assert as_array(harmful["customdata"]).tolist() == top_harmful.ids[0].tolist()
    assert any("scores on test #4" in c.value for c in at.caption)
