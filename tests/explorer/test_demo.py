"""The demo build end to end on a tiny configuration: artifacts, reuse, refusal, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.artifacts import load_explorer_data
from explorer.cli import main
from explorer.demo import DemoConfig, build_demo
from trak_engine.errors import ConfigMismatchError

TINY = DemoConfig(n_train=120, n_test=30, n_checkpoints=2, epochs=1, proj_dim=64, lam=0.01)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    stages = []
    info = build_demo(workdir, TINY, progress=lambda s, d, t: stages.append(s))
    return workdir, info, stages


def test_build_writes_consistent_artifacts(built):
    workdir, info, stages = built
    data = load_explorer_data(workdir)
    assert data.scores.shape == (30, 120)
    assert data.flipped.sum() == 6 and (data.train_labels != data.train_true_labels).sum() == 6
    helpful, harmful = data.top_k(3, 5)
    order = np.argsort(-np.asarray(data.scores[3]), kind="stable")[:5]
    np.testing.assert_array_equal(helpful.ids[0], order)
    assert harmful.scores[0, 0] == pytest.approx(float(np.min(data.scores[3])), abs=1e-5)
    assert any(s.startswith("training checkpoint") for s in stages)
    assert any(s.startswith("checkpoint 2/2") for s in stages)
    timings = info["timings"]
    assert len(timings["train_s"]) == 2 and len(timings["featurize_s"]) == 2
    assert timings["total_s"] > 0


def test_second_build_reuses_at_once(built, monkeypatch):
    workdir, info, _ = built
    monkeypatch.setattr("explorer.demo.train_or_load_checkpoints", pytest.fail)
    assert build_demo(workdir, TINY) == load_explorer_data(workdir).info


def test_other_config_is_refused_naming_the_field(built):
    workdir, _, _ = built
    other = DemoConfig(n_train=120, n_test=30, n_checkpoints=2, epochs=1, proj_dim=32, lam=0.01)
    with pytest.raises(ConfigMismatchError, match="proj_dim: stored 64, now 32"):
        build_demo(workdir, other)


def test_cli_reports_a_bad_workdir_without_traceback(built, capsys):
    workdir, _, _ = built
    assert main(["serve", "--workdir", str(workdir / "missing"), "--port", "8999"]) == 2
    assert "no complete artifacts" in capsys.readouterr().err
    assert main(["serve", "--workdir", str(workdir), "--port", "70000"]) == 2
    assert "--port must be in 1..65535, got 70000" in capsys.readouterr().err
    assert main(["build", "--workdir", str(workdir), "--quiet"]) == 2  # default config differs
    err = capsys.readouterr().err
    assert "proj_dim" in err and "Traceback" not in err


def test_damaged_artifact_is_named_and_rebuilt(built, tmp_path):
    import shutil

    from explorer.artifacts import ArtifactError

    workdir = tmp_path / "copy"
    shutil.copytree(built[0], workdir)
    scores = workdir / "scores.npy"
    scores.write_bytes(scores.read_bytes()[:200])
    with pytest.raises(ArtifactError, match=r"scores.npy cannot be read"):
        load_explorer_data(workdir)
    build_demo(workdir, TINY)  # checkpoints and features are reused; scores are rewritten
    assert load_explorer_data(workdir).scores.shape == (30, 120)


def test_cli_names_a_workdir_that_is_a_file_and_a_busy_port(tmp_path, capsys):
    import socket

    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert main(["build", "--workdir", str(afile / "sub"), "--quiet"]) == 2
    assert str(afile) in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        from explorer.cli import check_port_free

        with pytest.raises(OSError, match=f"port {port} on 127.0.0.1 is not available"):
            check_port_free(port)
