"""Tests for explorer.bench and ``trak-explorer bench lds``, at tiny sizes (seconds)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer import bench, cli
from explorer.bench import BenchRow, bench_lds, check_configs, format_table
from explorer.demo import DemoConfig
from explorer.lds_task import GroundTruthConfig
from trak_engine.errors import ConfigMismatchError
from trak_engine.lds import LDSResult

TINY_DEMO = DemoConfig(n_train=24, n_test=8, epochs=1, lr=0.05)
TINY_TRUTH = GroundTruthConfig(epochs=1, lr=0.05, n_subsets=4, n_targets=5)
GRID = {"proj_dims": (8, 32), "lams": (0.0, 0.1), "checkpoints": (1, 2)}


def run_tiny(workdir: Path, **overrides: object) -> list[BenchRow]:
    options = {"demo_config": TINY_DEMO, "truth_config": TINY_TRUTH, "n_bootstrap": 50}
    return bench_lds(workdir, **{**options, **GRID, "unprojected": True, **overrides})


@pytest.fixture(scope="module")
def tiny_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[BenchRow]]:
    workdir = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices; threads only contend on a busy machine
    try:
        return workdir, run_tiny(workdir)
    finally:
        torch.set_num_threads(threads)


def test_rows_cover_the_grid_in_order(tiny_rows: tuple[Path, list[BenchRow]]) -> None:
    _, rows = tiny_rows
    got = [(r.method, r.proj_dim, r.lam, r.n_checkpoints) for r in rows]
    projected = [
        row
        for k in (8, 32)
        for m in (1, 2)
        for row in [("trak", k, 0.0, m), ("trak", k, 0.1, m), ("no kernel", k, None, m)]
    ]
    unprojected = [
        row
        for m in (1, 2)
        for row in [
            ("unprojected", None, 0.0, m),
            ("unprojected", None, 0.1, m),
            ("grad dot", None, None, m),
            ("loss-grad dot", None, None, m),
        ]
    ]
    assert got == projected + unprojected + [("random", None, None, 0)]


def test_kernel_refused_when_k_exceeds_n_train(tiny_rows: tuple[Path, list[BenchRow]]) -> None:
    _, rows = tiny_rows
    refused = [r for r in rows if r.result is None]
    # lam = 0 at k = 32 > n_train = 24 is refused by the engine; nothing else is.
    assert [(r.method, r.proj_dim, r.lam) for r in refused] == [("trak", 32, 0.0)] * 2
    assert all("rank at most n = 24 < k = 32" in r.note for r in refused)
    assert "refused" in format_table(refused)


def test_results_are_valid_lds(tiny_rows: tuple[Path, list[BenchRow]]) -> None:
    _, rows = tiny_rows
    for row in rows:
        if row.result is None:
            continue
        assert isinstance(row.result, LDSResult)
        assert row.result.n_subsets == TINY_TRUTH.n_subsets
        assert row.result.n_targets == TINY_TRUTH.n_targets
        assert -1.0 <= row.result.ci_low <= row.result.mean <= row.result.ci_high <= 1.0
        if row.lam is not None:
            assert row.rcond is not None and 0 < row.rcond <= 1


def test_rerun_reuses_everything(
    tiny_rows: tuple[Path, list[BenchRow]], monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir, rows = tiny_rows

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun must not train")

    monkeypatch.setattr("explorer.demo.train_classifier", no_training)
    monkeypatch.setattr("explorer.lds_task.train_classifier", no_training)
    again = run_tiny(workdir)
    for a, b in zip(rows, again, strict=True):
        assert a.featurize_s == b.featurize_s  # measured once, read back
        if a.result is not None and b.result is not None:
            assert a.result.mean == b.result.mean


def test_workdir_of_other_training_is_refused(tiny_rows: tuple[Path, list[BenchRow]]) -> None:
    workdir, _ = tiny_rows
    other = dataclasses.replace(TINY_DEMO, train_seed=7)
    with pytest.raises(ConfigMismatchError, match="train_seed: stored 0, now 7"):
        run_tiny(workdir, demo_config=other)


@pytest.mark.parametrize(
    ("truth", "match"),
    [
        (dataclasses.replace(TINY_TRUTH, epochs=2), r"GroundTruthConfig.epochs = 2 but "),
        (dataclasses.replace(TINY_TRUTH, n_targets=9), r"at most n_test = 8 .*got 9"),
    ],
)
def test_check_configs(truth: GroundTruthConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_configs(TINY_DEMO, truth)


def test_checkpoint_counts_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"checkpoints must be counts >= 1, got \[0\]"):
        run_tiny(tmp_path, checkpoints=(0,))


def test_cli_passes_the_grid_and_prints_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []
    result = LDSResult(0.25, 0.2, 0.3, np.zeros(3), 0, 3, 4, 0.95)

    def fake(workdir: Path, **kwargs: object) -> list[BenchRow]:
        calls.append((workdir, kwargs))
        return [BenchRow("trak", 512, 0.01, 3, result, 1e-3, 12.0, 0.5)]

    monkeypatch.setattr(bench, "bench_lds", fake)
    argv = ["bench", "lds", "--workdir", str(tmp_path), "--subsets", "7", "--targets", "9"]
    argv += ["--proj-dim", "256", "512", "--lam", "0", "1e-2", "--checkpoints", "1", "3"]
    assert cli.main([*argv, "--quiet"]) == 0
    ((workdir, kwargs),) = calls
    assert workdir == tmp_path
    assert kwargs["truth_config"] == GroundTruthConfig(n_subsets=7, n_targets=9)
    assert (kwargs["proj_dims"], kwargs["lams"], kwargs["checkpoints"]) == (
        [256, 512],
        [0.0, 0.01],
        [1, 3],
    )
    out = capsys.readouterr().out
    assert "| trak | 512 | 0.01 | 3 | 0.250 [0.200, 0.300] | 1.0e-03 | 12 | 0.5 |" in out
