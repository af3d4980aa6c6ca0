"""TRAK Explorer against the reference implementation (``traker`` on PyPI), side by side.

Task: DemoMLP 784-256-10 (203,530 parameters) on the 4,000 demo MNIST training digits, the
first 200 test digits as targets, LDS ground truth from ``explorer.lds_task`` (100 random
halves, one model each). Ten checkpoints are trained with the ground truth's recipe; every
method featurizes the same checkpoints with the same k, and the kernel gets the same relative
ridge term ``lam`` (traker's absolute ``lambda_reg`` is set to ``lam * trace(X^T X) / k`` of
its own features, per checkpoint).

Each featurizing run happens in a fresh subprocess, so its peak memory is its own:
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the run (the resident high-water
mark, including Python, torch and any memory-mapped pages touched), next to the resident size
just before featurizing started (``VmRSS``). Run it with the benchmark venv, which has both
packages and the same torch::

    .venv-bench/bin/python benchmarks/compare_traker.py lds       # the side-by-side LDS table
    .venv-bench/bin/python benchmarks/compare_traker.py timing    # repeated featurize timings
    .venv-bench/bin/python benchmarks/compare_traker.py profile   # where our time goes
    .venv-bench/bin/python benchmarks/compare_traker.py sweep     # k x lam x M, and parameters
    .venv-bench/bin/python benchmarks/compare_traker.py recipe    # test accuracy of the recipe

Results (JSON and a markdown table) go to ``<workdir>/results``; finished runs are reused, so
an interrupted command resumes (delete a result file to redo that run).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explorer.datasets import DemoSplit, load_demo_split, to_tensor
from explorer.lds_task import GroundTruthConfig, demo_ground_truth
from explorer.training import init_model, train_checkpoints
from trak_engine import scores as scoring
from trak_engine.api import Attributor, featurize
from trak_engine.config import TrakConfig
from trak_engine.gradients import per_example_gradients
from trak_engine.lds import LDSResult, lds
from trak_engine.store import FeatureStore

logger = logging.getLogger("compare_traker")

ROOT = Path(__file__).resolve().parents[1]
GT = GroundTruthConfig(model="mlp", epochs=4, lr=0.05, n_subsets=100, alpha=0.5, n_targets=200)
N_CHECKPOINTS = 10
ENSEMBLES = (1, 3, 5, 10)
ENGINE_KINDS = ("gaussian", "khatri_rao", "kronecker")
LAST_LAYER = ("net.3.weight", "net.3.bias")
LAST_LAYER_DIM = 256 * 10 + 10
TARGETS = "targets"

Task = tuple[DemoSplit, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# The task: data, ground truth, checkpoints
# ----------------------------------------------------------------------------------------------


def load_task() -> Task:
    """The split, train (x, y) and target (x, y) tensors."""
    split = load_demo_split()
    x, y = to_tensor(split.train_images), torch.as_tensor(split.train_labels)
    tx = to_tensor(split.test_images[: GT.n_targets])
    ty = torch.as_tensor(split.test_labels[: GT.n_targets])
    return split, x, y, tx, ty


def checkpoint_path(workdir: Path) -> Path:
    return workdir / f"checkpoints-mlp-e{GT.epochs}-lr{GT.lr}-n{N_CHECKPOINTS}.pt"


def load_checkpoints(workdir: Path, task: Task) -> list[dict[str, torch.Tensor]]:
    """Ten MLPs trained like the ground-truth models (seeds 0-9), cached in the workdir."""
    path = checkpoint_path(workdir)
    if path.exists():
        return torch.load(path)
    _, x, y, _, _ = task
    start = time.perf_counter()
    states = train_checkpoints("mlp", x, y, N_CHECKPOINTS, epochs=GT.epochs, seed=0, lr=GT.lr)
    logger.info("trained %d checkpoints in %.0f s", N_CHECKPOINTS, time.perf_counter() - start)
    torch.save(states, path)
    return states


def ground_truth(workdir: Path, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Masks (100, 4000) bool and margins (100, 200), cached and resumable."""

    def report(done: int, total: int) -> None:
        if done % 10 == 0:
            logger.info("ground truth: %d/%d subsets", done, total)

    return demo_ground_truth(workdir, GT, task[0], report)


# ----------------------------------------------------------------------------------------------
# Featurizing runs, one subprocess each
# ----------------------------------------------------------------------------------------------


def rss_mib() -> float:
    """Current resident set size of this process, MiB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """Resident high-water mark of this process, MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_run(spec: dict[str, Any], task: Task, states: list, out: Path) -> dict[str, Any]:
    """Featurize train and targets checkpoint by checkpoint; time each checkpoint."""
    _, x, y, tx, ty = task
    names = tuple(spec["param_names"]) if spec.get("param_names") else None
    config = TrakConfig(proj_dim=spec["k"], proj_type=spec["kind"], param_names=names)
    store_dir = out / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    splits = {"train": (x, y), TARGETS: (tx, ty)}
    model = init_model("mlp", 0)
    times = []
    for m in range(spec["n_checkpoints"]):
        start = time.perf_counter()
        featurize(model, states[: m + 1], splits, config, store_dir, batch_size=spec["batch"])
        times.append(time.perf_counter() - start)
    return {"featurize_s": times, "store": str(store_dir)}


def traker_lambda(traker: Any, model_id: int, lam: float) -> float:
    """traker's absolute lambda_reg equal to our relative lam for this checkpoint's features."""
    traker.saver.load_current_store(model_id)
    grads = np.asarray(traker.saver.current_store["grads"], dtype=np.float64)  # (n, k)
    return float(lam * np.einsum("ij,ij->", grads, grads) / grads.shape[1])


def traker_featurize(traker: Any, data: tuple, batch: int, score: bool) -> None:
    x, y = data
    for lo in range(0, x.shape[0], batch):
        hi = min(x.shape[0], lo + batch)
        step = traker.score if score else traker.featurize
        step(batch=(x[lo:hi], y[lo:hi]), num_samples=hi - lo)


def traker_finalize(traker: Any, m: int, lam: float) -> tuple[float, float]:
    """(Re)compute X (X^T X + lambda I)^-1 of checkpoint m; returns (lambda_reg, seconds)."""
    start = time.perf_counter()
    lambda_reg = traker_lambda(traker, m, lam)
    traker.score_computer.lambda_reg = lambda_reg
    traker.saver.model_ids[m]["is_finalized"] = 0  # traker skips finalized checkpoints
    if not traker.projector.proj_matrix_available:
        # finalize_features frees the projection matrix with a bare `del`, which fails when
        # it is already freed (traker 0.3.2); give it something to delete.
        traker.projector.proj_matrix = torch.empty(0)
    traker.finalize_features(model_ids=[m])
    return lambda_reg, time.perf_counter() - start


def make_traker(spec: dict[str, Any], n_train: int, save_dir: Path) -> Any:
    from trak import TRAKer

    shutil.rmtree(save_dir, ignore_errors=True)
    return TRAKer(
        model=init_model("mlp", 0),
        task="image_classification",
        train_set_size=n_train,
        save_dir=str(save_dir),
        device="cpu",
        proj_dim=spec["k"],
        use_half_precision=spec.get("half", False),
        logging_level=logging.WARNING,
    )


def traker_run(spec: dict[str, Any], task: Task, states: list, out: Path) -> dict[str, Any]:
    """traker on the CPU: BasicProjector (Gaussian), float32, relative lams as above.

    Train features of every checkpoint first, then per checkpoint the kernel (traker needs it
    before it projects targets) and the targets; then, per lam, the kernels again and the
    scores of the first M checkpoints for every M in ``spec["ensembles"]``.
    """
    _, x, y, tx, ty = task
    traker = make_traker(spec, x.shape[0], out / "traker")
    n_ckpts, lams = spec["n_checkpoints"], spec["lams"]
    train_s, target_s = [], []
    for m in range(n_ckpts):
        start = time.perf_counter()
        traker.load_checkpoint(states[m], model_id=m)
        traker_featurize(traker, (x, y), spec["batch"], score=False)
        train_s.append(time.perf_counter() - start)
    for m in range(n_ckpts):
        traker_finalize(traker, m, lams[0])
        start = time.perf_counter()
        traker.start_scoring_checkpoint(TARGETS, states[m], model_id=m, num_targets=tx.shape[0])
        traker_featurize(traker, (tx, ty), spec["batch"], score=True)
        target_s.append(time.perf_counter() - start)
    result: dict[str, Any] = {"train_s": train_s, "target_s": target_s}
    result["featurize_s"] = [a + b for a, b in zip(train_s, target_s, strict=True)]
    for lam in lams:
        finals = [traker_finalize(traker, m, lam) for m in range(n_ckpts)]
        result[f"lambda_reg_{lam}"] = [f[0] for f in finals]
        for n in spec.get("ensembles", ()):
            start = time.perf_counter()
            scores = np.array(traker.finalize_scores(TARGETS, model_ids=list(range(n)))).T
            elapsed = time.perf_counter() - start + sum(f[1] for f in finals[:n])
            result[f"score_s_{lam}_{n}"] = elapsed
            np.save(out / f"scores_{lam}_{n}.npy", scores.astype(np.float32))  # (targets, train)
    return result


def graddot_run(spec: dict[str, Any], task: Task, states: list, out: Path) -> dict[str, Any]:
    """Dot products of full loss gradients, (Q_x g_x) . (Q_i g_i), one matrix per checkpoint."""
    _, x, y, tx, ty = task
    model = init_model("mlp", 0)
    times = []
    for m in range(spec["n_checkpoints"]):
        start = time.perf_counter()
        model.load_state_dict(states[m])
        g_t, q_t = per_example_gradients(model, tx, ty)  # (n_targets, p), (n_targets,)
        g_t = g_t * q_t[:, None]
        blocks = []
        for lo in range(0, x.shape[0], spec["batch"]):
            hi = lo + spec["batch"]
            g, q = per_example_gradients(model, x[lo:hi], y[lo:hi])  # (batch, p), (batch,)
            blocks.append(g_t @ (g * q[:, None]).T)  # (n_targets, batch)
        np.save(out / f"graddot_{m}.npy", torch.cat(blocks, dim=1).numpy())
        times.append(time.perf_counter() - start)
    return {"featurize_s": times}


RUNNERS: dict[str, Callable[[dict[str, Any], Task, list, Path], dict[str, Any]]] = {
    "engine": engine_run,
    "traker": traker_run,
    "graddot": graddot_run,
}


def child(spec_json: str) -> None:
    """Entry point of a featurizing subprocess: run one spec, write its result JSON."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec.get("threads", 2))
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    task = load_task()
    states = torch.load(spec["checkpoints"])[: spec["n_checkpoints"]]
    baseline = rss_mib()
    result = RUNNERS[spec["method"]](spec, task, states, out)
    result.update(spec=spec, baseline_rss_mib=baseline, peak_rss_mib=peak_rss_mib())
    (out / "result.json").write_text(json.dumps(result, indent=2))


def run_spec(spec: dict[str, Any], python: str = sys.executable) -> dict[str, Any]:
    """Run a spec in a fresh subprocess unless its result already exists; return the result."""
    result_path = Path(spec["out"]) / "result.json"
    if result_path.exists() and json.loads(result_path.read_text())["spec"] == spec:
        return json.loads(result_path.read_text())
    logger.info("running %s", spec["name"])
    cmd = [python, str(Path(__file__).resolve()), "_child", json.dumps(spec)]
    subprocess.run(cmd, check=True)
    return json.loads(result_path.read_text())


# ----------------------------------------------------------------------------------------------
# Scores and LDS
# ----------------------------------------------------------------------------------------------


def engine_scores(store_dir: str, lam: float, n_ckpts: int) -> tuple[np.ndarray, float]:
    """(n_targets, n_train) TRAK scores from the first n_ckpts checkpoints, and seconds taken."""
    start = time.perf_counter()
    attributor = Attributor(FeatureStore.open(store_dir), lam, n_checkpoints=n_ckpts)
    scores = attributor.scores(attributor.target_features(TARGETS))
    return scores, time.perf_counter() - start


def graddot_scores(out: Path, n_ckpts: int) -> np.ndarray:
    return np.mean([np.load(out / f"graddot_{m}.npy") for m in range(n_ckpts)], axis=0)


def paired_interval(a: np.ndarray, b: np.ndarray, n_boot: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of mean(a - b) over targets resampled together (paired)."""
    diff = (a - b)[~np.isnan(a - b)]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, diff.shape[0], size=(n_boot, diff.shape[0]))
    low, high = np.quantile(diff[idx].mean(axis=1), [0.025, 0.975])
    return float(low), float(high)


def lds_entry(result: LDSResult) -> dict[str, Any]:
    return {
        "lds": result.mean,
        "ci": [result.ci_low, result.ci_high],
        "per_target": result.per_target.tolist(),
    }


def fmt_lds(entry: dict[str, Any]) -> str:
    low, high = entry["ci"]
    return f"{entry['lds']:.3f} [{low:.3f}, {high:.3f}]"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}"


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------


def base_spec(args: argparse.Namespace, name: str, method: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "method": method,
        "out": str(args.workdir / "runs" / name),
        "checkpoints": str(checkpoint_path(args.workdir)),
        "n_checkpoints": N_CHECKPOINTS,
        "threads": args.threads,
        **fields,
    }


def lds_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    k = args.proj_dim
    specs = [
        base_spec(args, f"engine-{kind}-k{k}", "engine", kind=kind, k=k, batch=args.engine_batch)
        for kind in args.kinds
    ]
    if not args.skip_traker:
        name = f"traker-k{k}-b{args.traker_batch}"
        specs.append(
            base_spec(
                args,
                name,
                "traker",
                k=k,
                lams=args.lams,
                batch=args.traker_batch,
                ensembles=list(ENSEMBLES),
            )
        )
    specs.append(base_spec(args, "graddot", "graddot", batch=256))
    return specs


def method_scores(
    spec: dict[str, Any], result: dict[str, Any], lam: float, n: int
) -> tuple[np.ndarray, float]:
    """Scores of the first n checkpoints for one run, and the scoring seconds."""
    out = Path(spec["out"])
    if spec["method"] == "engine":
        return engine_scores(result["store"], lam, n)
    if spec["method"] == "traker":
        return np.load(out / f"scores_{lam}_{n}.npy"), result[f"score_s_{lam}_{n}"]
    start = time.perf_counter()
    return graddot_scores(out, n), time.perf_counter() - start


def cmd_lds(args: argparse.Namespace) -> None:
    task = load_task()
    masks, margins = ground_truth(args.workdir, task)
    load_checkpoints(args.workdir, task)
    runs = [(spec, run_spec(spec)) for spec in lds_specs(args)]
    every = {}
    for lam in args.lams:
        rows = [
            lds_row(spec, result, lam, n, masks, margins)
            for spec, result in runs
            for n in ENSEMBLES
        ]
        name = f"lds-k{args.proj_dim}-lam{lam}"
        write_results(args.workdir, name, rows, lds_table(rows))
        every[lam] = rows
    summary = lam_summary_table(every)
    (args.workdir / "results" / f"lds-k{args.proj_dim}-summary.md").write_text(summary + "\n")
    print(summary)


def lam_summary_table(every: dict[float, list[dict[str, Any]]]) -> str:
    """LDS per method (rows) and lam (columns), for 1 and for 10 checkpoints."""
    lams = list(every)
    lines = [
        "| method | M | " + " | ".join(f"lam={lam:g}" for lam in lams) + " |",
        "| --- | --- | " + " | ".join("---" for _ in lams) + " |",
    ]
    names = list(dict.fromkeys(r["name"] for r in every[lams[0]]))
    for name in names:
        for n in (1, N_CHECKPOINTS):
            cells = [
                next(
                    f"{r['lds']:.3f}"
                    for r in every[lam]
                    if r["name"] == name and r["n_checkpoints"] == n
                )
                for lam in lams
            ]
            lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lds_row(
    spec: dict[str, Any],
    result: dict[str, Any],
    lam: float,
    n: int,
    masks: np.ndarray,
    margins: np.ndarray,
) -> dict[str, Any]:
    """One table row: LDS of the first n checkpoints of a run at one lam, times and memory."""
    scores, score_s = method_scores(spec, result, lam, n)
    entry = lds_entry(lds(scores, masks, margins))
    entry.update(
        name=spec["name"],
        n_checkpoints=n,
        featurize_s=sum(result["featurize_s"][:n]),
        score_s=score_s,
        peak_rss_mib=result["peak_rss_mib"],
        baseline_rss_mib=result["baseline_rss_mib"],
    )
    logger.info("%s lam=%g M=%d: LDS %s", spec["name"], lam, n, fmt_lds(entry))
    return entry


def lds_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | M | LDS [95% CI] | featurize s | score s | peak RSS MiB (before) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    dense = {r["n_checkpoints"]: r for r in rows if r["name"].startswith("engine-gaussian")}
    for r in rows:
        delta = ""
        ref = dense.get(r["n_checkpoints"])
        if ref is not None and r is not ref:
            low, high = paired_interval(np.array(r["per_target"]), np.array(ref["per_target"]))
            delta = f" (vs dense: [{low:+.3f}, {high:+.3f}])"
        lines.append(
            f"| {r['name']} | {r['n_checkpoints']} | {fmt_lds(r)}{delta} | "
            f"{fmt_s(r['featurize_s'])} | {fmt_s(r['score_s'])} | "
            f"{r['peak_rss_mib']:.0f} ({r['baseline_rss_mib']:.0f}) |"
        )
    return "\n".join(lines)


def write_results(workdir: Path, name: str, rows: list[dict[str, Any]], table: str) -> None:
    results = workdir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(rows, indent=1))
    (results / f"{name}.md").write_text(table + "\n")
    print(table)


def timing_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Featurize checkpoint 0 (4,000 train + 200 targets) per method and batch size."""
    k, one = args.proj_dim, {"n_checkpoints": 1}
    specs = [
        base_spec(args, f"engine-gaussian-b{b}", "engine", kind="gaussian", k=k, batch=b, **one)
        for b in (64, 256)
    ]
    specs += [
        base_spec(args, f"engine-{kind}-b64", "engine", kind=kind, k=k, batch=64, **one)
        for kind in ("khatri_rao", "kronecker")
    ]
    if not args.skip_traker:
        specs += [
            base_spec(args, f"traker-b{b}", "traker", k=k, lams=[0.0], batch=b, **one)
            for b in (64, 256, 1024)
        ]
    return specs


def cmd_timing(args: argparse.Namespace) -> None:
    load_checkpoints(args.workdir, load_task())
    rows = []
    for spec in timing_specs(args):
        runs = []
        for r in range(args.repeats):
            rep = dict(
                spec, name=f"{spec['name']}-r{r}", out=f"{spec['out']}-k{args.proj_dim}-r{r}"
            )
            runs.append(run_spec(rep))
        secs = [run["featurize_s"][0] for run in runs]
        rows.append(
            {
                "name": spec["name"],
                "featurize_s": secs,
                "min_s": min(secs),
                "median_s": statistics.median(secs),
                "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
                "baseline_rss_mib": max(run["baseline_rss_mib"] for run in runs),
            }
        )
    write_results(args.workdir, f"timing-k{args.proj_dim}", rows, timing_table(rows))


def timing_table(rows: list[dict[str, Any]]) -> str:
    traker = [r["min_s"] for r in rows if r["name"].startswith("traker")]
    best = min(traker) if traker else float("nan")
    lines = [
        "| run (1 checkpoint, 4,200 examples) | min s | median s | runs | x faster than "
        "traker's fastest | peak RSS MiB (before) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        runs = ", ".join(f"{s:.1f}" for s in r["featurize_s"])
        lines.append(
            f"| {r['name']} | {fmt_s(r['min_s'])} | {fmt_s(r['median_s'])} | {runs} | "
            f"{best / r['min_s']:.1f} | {r['peak_rss_mib']:.0f} ({r['baseline_rss_mib']:.0f}) |"
        )
    return "\n".join(lines)


def timing_wrapper(fn: Callable[..., Any], totals: dict[str, float], key: str) -> Callable:
    """``fn`` that adds its wall time to ``totals[key]``."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    return wrapped


def profile_kind(kind: str, k: int, batch: int, task: Task, state: dict, tmp: Path) -> dict:
    """Seconds of one featurize() call (checkpoint 0, train + targets), split by stage.

    The stages are timed inside that one call by wrapping the functions it uses: projector
    construction, per-example gradients (and, inside them, the finiteness checks), the dense
    projection or the structured features; the rest is batching, copies and the store.
    """
    from unittest import mock

    import trak_engine.api as api
    import trak_engine.gradients as gradients
    from trak_engine.projection import Projector
    from trak_engine.structured import StructuredProjector

    _, x, y, tx, ty = task
    totals: dict[str, float] = {}
    patches = [
        mock.patch.object(
            api, "make_projector", timing_wrapper(api.make_projector, totals, "build")
        ),
        mock.patch.object(
            api, "per_example_gradients", timing_wrapper(per_example_gradients, totals, "grad")
        ),
        mock.patch.object(
            gradients, "check_finite", timing_wrapper(gradients.check_finite, totals, "finite")
        ),
        mock.patch.object(Projector, "project", timing_wrapper(Projector.project, totals, "proj")),
        mock.patch.object(
            StructuredProjector,
            "features",
            timing_wrapper(StructuredProjector.features, totals, "proj"),
        ),
    ]
    shutil.rmtree(tmp, ignore_errors=True)
    splits = {"train": (x, y), TARGETS: (tx, ty)}
    start = time.perf_counter()
    for patch in patches:
        patch.start()
    try:
        featurize(
            init_model("mlp", 0),
            [state],
            splits,
            TrakConfig(proj_dim=k, proj_type=kind),
            tmp,
            batch_size=batch,
        )
    finally:
        for patch in patches:
            patch.stop()
    total = time.perf_counter() - start
    parts = {key: totals.get(key, 0.0) for key in ("build", "grad", "finite", "proj")}
    rest = total - parts["build"] - parts["grad"] - parts["proj"]
    return {
        "kind": kind,
        **{f"{key}_s": v for key, v in parts.items()},
        "featurize_s": total,
        "rest_s": rest,
    }


def cmd_profile(args: argparse.Namespace) -> None:
    task = load_task()
    state = load_checkpoints(args.workdir, task)[0]
    torch.set_num_threads(args.threads)
    rows = []
    for r in range(args.repeats):
        for kind in ENGINE_KINDS:
            row = profile_kind(kind, args.proj_dim, 64, task, state, args.workdir / "profile")
            rows.append(dict(row, repeat=r))
            logger.info("profile %s", row)
    lines = [
        "| proj_type | featurize() s | projector build s | per-example gradients s (of which "
        "finiteness checks) | projection s | rest: batching, copies, store s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ENGINE_KINDS:
        best = min((r for r in rows if r["kind"] == kind), key=lambda r: r["featurize_s"])
        grads = f"{best['grad_s']:.2f} ({best['finite_s']:.2f})"
        if kind != "gaussian":
            grads = "none formed"
        lines.append(
            f"| {kind} | {best['featurize_s']:.2f} | {best['build_s']:.2f} | {grads} | "
            f"{best['proj_s']:.2f} | {best['rest_s']:.2f} |"
        )
    write_results(args.workdir, f"profile-k{args.proj_dim}", rows, "\n".join(lines))


def per_checkpoint_terms(
    store: FeatureStore, lam: float, n_ckpts: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per checkpoint: (target features, train directions, Q), computed once for all M."""
    terms = []
    for m in range(n_ckpts):
        feats, q = store.load(m, "train")
        kinv = scoring.kernel_inverse(np.asarray(feats), lam)
        phi = np.asarray(store.load(m, TARGETS)[0])
        terms.append((phi, scoring.train_directions(feats, kinv.inverse), np.asarray(q)))
    return terms


def sweep_lds(store: FeatureStore, lam: float, masks: np.ndarray, margins: np.ndarray) -> dict:
    """LDS for M in ENSEMBLES at one lam, or the error text where the kernel is refused."""
    try:
        terms = per_checkpoint_terms(store, lam, N_CHECKPOINTS)
    except ValueError as err:
        return {n: str(err).split(";")[0] for n in ENSEMBLES}
    out = {}
    for n in ENSEMBLES:
        phis, dirs, qs = zip(*terms[:n], strict=True)
        out[n] = lds_entry(lds(scoring.trak_scores(phis, dirs, qs), masks, margins))
    return out


def cmd_sweep(args: argparse.Namespace) -> None:
    task = load_task()
    masks, margins = ground_truth(args.workdir, task)
    load_checkpoints(args.workdir, task)
    rows = []
    grid = [(args.kind, k, None) for k in args.ks]
    grid += [(args.kind, k, LAST_LAYER) for k in args.last_layer_ks]
    grid += [("none", LAST_LAYER_DIM, LAST_LAYER)]  # exact last-layer gradients, no projection
    for kind, k, names in grid:
        tag = "last" if names else "all"
        spec = base_spec(
            args,
            f"sweep-{kind}-{tag}-k{k}",
            "engine",
            kind=kind,
            k=k,
            batch=64,
            param_names=list(names) if names else None,
        )
        store = FeatureStore.open(run_spec(spec)["store"])
        for lam in args.lams:
            for n, entry in sweep_lds(store, lam, masks, margins).items():
                rows.append(
                    {
                        "params": f"{tag} ({kind})",
                        "k": k,
                        "lam": lam,
                        "n_checkpoints": n,
                        "entry": entry,
                    }
                )
                logger.info(
                    "sweep %s k=%d lam=%g M=%d: %s",
                    tag,
                    k,
                    lam,
                    n,
                    entry if isinstance(entry, str) else fmt_lds(entry),
                )
    write_results(args.workdir, f"sweep-{args.kind}", rows, sweep_table(rows))


def sweep_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| params | k | lam | " + " | ".join(f"M={n}" for n in ENSEMBLES) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in ENSEMBLES) + " |",
    ]
    keys = sorted({(r["params"], r["k"], r["lam"]) for r in rows}, key=lambda t: (t[0], t[1], t[2]))
    for params, k, lam in keys:
        cells = []
        for n in ENSEMBLES:
            entry = next(
                r["entry"]
                for r in rows
                if (r["params"], r["k"], r["lam"], r["n_checkpoints"]) == (params, k, lam, n)
            )
            cells.append("refused (singular)" if isinstance(entry, str) else fmt_lds(entry))
        lines.append(f"| {params} | {k} | {lam:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_recipe(args: argparse.Namespace) -> None:
    """Test accuracy (1,000 demo test digits) of MLPs trained with a few recipes, seeds 0-1."""
    from explorer.training import predict, train_classifier

    split, x, y, _, _ = load_task()
    tx, ty = to_tensor(split.test_images), torch.as_tensor(split.test_labels)
    torch.set_num_threads(args.threads)
    lines = [
        "| epochs | lr | weight decay | test accuracy, seeds 0 and 1 |",
        "| --- | --- | --- | --- |",
    ]
    for epochs, lr, decay in ((4, 0.05, 0.0), (6, 0.05, 0.0), (10, 0.05, 0.0), (6, 0.05, 5e-4)):
        accs = []
        for seed in (0, 1):
            model = init_model("mlp", seed)
            train_classifier(model, x, y, epochs=epochs, lr=lr, seed=seed, weight_decay=decay)
            accs.append(float((predict(model, tx)[0] == ty).float().mean()))
        lines.append(
            f"| {epochs} | {lr} | {decay:g} | " + ", ".join(f"{a:.1%}" for a in accs) + " |"
        )
    (args.workdir / "results").mkdir(parents=True, exist_ok=True)
    (args.workdir / "results" / "recipe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("lds", "timing", "profile", "sweep", "recipe"):
        p = sub.add_parser(name)
        p.add_argument("--workdir", type=Path, default=ROOT / "workdir" / "bench")
        p.add_argument("--proj-dim", type=int, default=1024)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--skip-traker", action="store_true")
    lds_p = sub.choices["lds"]
    lds_p.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.01, 0.1, 1.0, 10.0, 100.0])
    lds_p.add_argument("--kinds", nargs="+", default=list(ENGINE_KINDS), choices=ENGINE_KINDS)
    lds_p.add_argument("--engine-batch", type=int, default=64)
    lds_p.add_argument("--traker-batch", type=int, default=256)
    sweep_p = sub.choices["sweep"]
    sweep_p.add_argument("--kind", default="khatri_rao", choices=ENGINE_KINDS)
    sweep_p.add_argument("--ks", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    sweep_p.add_argument("--last-layer-ks", type=int, nargs="+", default=[256, 1024])
    sweep_p.add_argument(
        "--lams", type=float, nargs="+", default=[0.0, 1e-2, 1e-1, 1.0, 3.0, 10.0, 100.0]
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> None:
    if argv and argv[0] == "_child":
        child(argv[1])
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    commands = {
        "lds": cmd_lds,
        "timing": cmd_timing,
        "profile": cmd_profile,
        "sweep": cmd_sweep,
        "recipe": cmd_recipe,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
