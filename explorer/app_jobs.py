"""Background jobs of the app: long work off the Streamlit script thread, polled by the page.

A ``Job`` runs one function on a daemon thread; the function receives ``progress(done, total)``
and ``cancelled()`` and returns a result. The page keeps only the job's key, reads ``snapshot``
from a fragment that reruns every second, and offers ``cancel``. One ``JobRegistry`` is shared
by all sessions of a server (``app_state.jobs``); keys name the session, so one user never sees
or cancels another's job.

Nothing here imports Streamlit, so the jobs are tested without a server.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from explorer.artifacts import ExplorerData
from explorer.counterfactual import CounterfactualCancelled, run_counterfactual

logger = logging.getLogger(__name__)

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"
STATES = (RUNNING, DONE, CANCELLED, FAILED)

Work = Callable[[Callable[[int, int], None], Callable[[], bool]], Any]
"""``work(progress, cancelled) -> result``: report progress, poll ``cancelled()`` and stop."""


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent view of a job at one moment.

    Attributes:
        state: one of ``STATES``.
        done, total: progress in the job's own units (0 and 0 before the first report).
        seconds: wall time so far, or until the job ended.
        result: the work's return value once ``state == "done"``, else None.
        error: the failure's message once ``state == "failed"``, else "".
        params: what the job was started with (shown by the page).
    """

    state: str
    done: int
    total: int
    seconds: float
    result: Any
    error: str
    params: dict[str, Any]

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]; 0 before the first report."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    @property
    def finished(self) -> bool:
        return self.state != RUNNING


class Job:
    """One unit of work on a daemon thread. Start it with ``JobRegistry.start``."""

    def __init__(self, work: Work, params: dict[str, Any] | None = None) -> None:
        self._work = work
        self.params = dict(params or {})
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._state, self._done, self._total = RUNNING, 0, 0
        self._result: Any = None
        self._error = ""
        self._start = time.perf_counter()
        self._end: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="explorer-job")

    def start(self) -> Job:
        self._thread.start()
        return self

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            self._done, self._total = int(done), int(total)

    def _run(self) -> None:
        try:
            result = self._work(self._progress, self._cancel.is_set)
        except CounterfactualCancelled:
            self._finish(CANCELLED)
        except Exception as exc:  # shown on the page as a failed run, and logged in full
            logger.exception("background job %s failed", self.params)
            self._finish(FAILED, error=f"{type(exc).__name__}: {exc}")
        else:
            self._finish(CANCELLED if self._cancel.is_set() else DONE, result=result)

    def _finish(self, state: str, result: Any = None, error: str = "") -> None:
        with self._lock:
            self._state, self._result, self._error = state, result, error
            self._end = time.perf_counter()

    def cancel(self) -> None:
        """Ask the work to stop; it ends as ``cancelled`` at its next ``cancelled()`` poll."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        """Block until the job ends (or ``timeout`` seconds pass); return its snapshot."""
        self._thread.join(timeout)
        return self.snapshot()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            end = self._end if self._end is not None else time.perf_counter()
            return JobSnapshot(
                state=self._state,
                done=self._done,
                total=self._total,
                seconds=end - self._start,
                result=self._result,
                error=self._error,
                params=dict(self.params),
            )


class JobRegistry:
    """Jobs by key, shared by the sessions of one server; thread-safe."""

    def __init__(self) -> None:
        self._jobs: dict[Hashable, Job] = {}
        self._lock = threading.Lock()

    def start(self, key: Hashable, work: Work, params: dict[str, Any] | None = None) -> Job:
        """Start ``work`` under ``key``, replacing a finished job with that key.

        Raises:
            RuntimeError: a job with this key is still running (cancel it first).
        """
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and not old.snapshot().finished:
                raise RuntimeError(f"a job is already running under {key!r}; cancel it first")
            job = Job(work, params)
            self._jobs[key] = job
        return job.start()

    def get(self, key: Hashable) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def running(self, prefix: tuple[Any, ...]) -> list[Hashable]:
        """Keys of running jobs whose key is a tuple starting with ``prefix``."""
        with self._lock:
            items = list(self._jobs.items())
        return [
            key
            for key, job in items
            if isinstance(key, tuple)
            and key[: len(prefix)] == prefix
            and not job.snapshot().finished
        ]


def counterfactual_work(
    workdir: str | os.PathLike[str],
    data: ExplorerData,
    test_ids: Sequence[int],
    k: int,
    n_seeds: int,
    same_label: bool,
) -> Work:
    """``run_counterfactual`` as a job: returns a ``CounterfactualResult``."""

    def work(progress: Callable[[int, int], None], cancelled: Callable[[], bool]) -> Any:
        return run_counterfactual(
            workdir,
            list(test_ids),
            k,
            n_seeds=n_seeds,
            same_label=same_label,
            data=data,
            progress=progress,
            cancel=cancelled,
        )

    return work
