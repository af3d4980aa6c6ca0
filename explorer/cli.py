"""trak-explorer: training-data attribution with TRAK, explored in the browser.

``trak-explorer demo [--port N] [--workdir DIR]`` builds the demo artifacts if they are missing
(progress on stderr), then serves the app on 127.0.0.1:N. ``build`` only builds; ``serve``
only serves an existing artifact directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from trak_engine.errors import TrakError

DEFAULT_PORT = 8501


def default_workdir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "trak-explorer" / "demo"


class StageBars:
    """A progress callback ``(stage, done, total)`` drawing one tqdm bar per stage."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.bar: tqdm | None = None
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(
                total=total,
                desc=stage,
                file=sys.stderr,
                disable=self.disable,
                leave=True,
                dynamic_ncols=True,
            )
        if self.bar is not None and done >= self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def build(workdir: Path, quiet: bool = False) -> None:
    from explorer.demo import build_demo

    bars = StageBars(disable=quiet)
    started = time.perf_counter()
    try:
        build_demo(workdir, progress=bars)
    finally:
        bars.close()
    if not quiet:
        took = time.perf_counter() - started
        print(f"demo artifacts ready in {workdir} ({took:.0f} s)", file=sys.stderr)


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise OSError naming the port when another program listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise OSError(
                f"port {port} on {host} is not available ({err.strerror}); pass another --port"
            ) from err


def serve_workdir(workdir: Path, port: int, quiet: bool) -> int:
    from explorer.artifacts import is_complete
    from explorer.serve import serve

    if not is_complete(workdir):
        raise FileNotFoundError(
            f"no complete artifacts in {workdir}; build them with "
            f"`trak-explorer demo --workdir {workdir}`"
        )
    check_port_free(port)
    if not quiet:
        print(f"TRAK Explorer: http://127.0.0.1:{port}  (Ctrl-C stops it)", file=sys.stderr)
    return serve(workdir, port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trak-explorer", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in [
        ("demo", "build the demo artifacts if missing, then serve the app"),
        ("build", "build the demo artifacts only"),
        ("serve", "serve the app on an existing artifact directory"),
    ]:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "--workdir",
            type=Path,
            default=default_workdir(),
            help="artifact directory (default: %(default)s)",
        )
        if name != "build":
            cmd.add_argument(
                "--port",
                type=int,
                default=DEFAULT_PORT,
                help="port on 127.0.0.1 (default: %(default)s)",
            )
        cmd.add_argument("--quiet", action="store_true", help="no progress bars")
    add_bench_parser(sub)
    return p


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """``bench lds``: the LDS benchmark of explorer.bench (see docs/lds-demo.md)."""
    bench = sub.add_parser("bench", help="measure attribution quality")
    kinds = bench.add_subparsers(dest="bench", required=True)
    text = "LDS of TRAK on the demo task over a grid of proj_dim, lam and checkpoints"
    cmd = kinds.add_parser("lds", help=text, description=text)
    cmd.add_argument(
        "--workdir",
        type=Path,
        default=default_workdir().with_name("bench-lds"),
        help="checkpoints, ground truth and features, reused (default: %(default)s)",
    )
    cmd.add_argument("--subsets", type=int, default=100, help="retrained subsets (default: 100)")
    cmd.add_argument("--targets", type=int, default=200, help="test targets (default: 200)")
    cmd.add_argument("--checkpoints", type=int, nargs="+", default=[1, 3, 5], help="default: 1 3 5")
    cmd.add_argument("--proj-dim", type=int, nargs="+", default=[2048], help="default: 2048")
    cmd.add_argument(
        "--proj-type",
        default="khatri_rao",
        help="projection (default: khatri_rao, the demo's; gaussian: dense)",
    )
    cmd.add_argument(
        "--lam",
        type=float,
        nargs="+",
        default=[10.0],
        help="relative ridge (default: 10, the demo's)",
    )
    cmd.add_argument(
        "--unprojected",
        action="store_true",
        help="also unprojected TRAK and gradient inner products (0.5 GB)",
    )
    cmd.add_argument("--quiet", action="store_true", help="no progress bars")


def bench_lds_command(args: argparse.Namespace) -> None:
    from explorer.bench import bench_lds, format_table
    from explorer.demo import DemoConfig
    from explorer.lds_task import GroundTruthConfig

    truth = GroundTruthConfig(n_subsets=args.subsets, n_targets=args.targets)
    bars = StageBars(disable=args.quiet)
    try:
        rows = bench_lds(
            args.workdir,
            demo_config=DemoConfig(proj_type=args.proj_type),
            truth_config=truth,
            proj_dims=args.proj_dim,
            lams=args.lam,
            checkpoints=args.checkpoints,
            unprojected=args.unprojected,
            progress=bars,
        )
    finally:
        bars.close()
    print(format_table(rows))
    for row in rows:
        if row.note:
            print(f"k={row.proj_dim} lam={row.lam:g} ckpts={row.n_checkpoints}: {row.note}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if hasattr(args, "port") and not 0 < args.port < 65536:
        print(f"trak-explorer: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        if args.command == "bench":
            bench_lds_command(args)
        if args.command in ("demo", "build"):
            build(args.workdir, args.quiet)
        if args.command in ("demo", "serve"):
            return serve_workdir(args.workdir, args.port, args.quiet)
    except (TrakError, OSError, ValueError) as err:  # OSError: unwritable or odd workdir
        print(f"trak-explorer: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "trak-explorer: interrupted; finished work is kept and reused next time",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
