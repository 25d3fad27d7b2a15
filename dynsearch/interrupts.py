"""Ctrl-C (SIGINT) and SIGTERM during a search: the first asks the search to stop cleanly, a second exits at once.

While ``stop_on_signals()`` is active, a signal only records itself (and says so on
stderr); the search checks ``requested()`` at safe points (after start-up steps, and
through a Ray Tune stopper while trials run), fails the trials that were running so
that resume retries them, and raises ``Interrupted``. Nothing is cut in the middle of
a write. A second signal ends the process at once (``os._exit``), with the processes it
started (Ray's): the study's journal is append-only (a torn last line is repaired on
resume) and trials left RUNNING are failed and retried by the next run.

Ray Tune 2.60 installs its own SIGINT handler in ``tune.run`` (and ``Tuner.fit``
then returns normally) unless ``TUNE_DISABLE_SIGINT_HANDLER=1``; ``ray.init``
installs a SIGTERM handler that calls ``sys.exit(15)`` (PITFALLS.md). The first is
turned off while active; after the second, ``reinstall()`` puts ours back.
Imports nothing of dynsearch.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(Exception):
    """A search stopped by SIGINT / SIGTERM after recording its state; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int, complete: int = 0):
        self.signum, self.complete = int(signum), int(complete)
        super().__init__(f"interrupted: {self.complete} COMPLETE kept; re-run the same command to resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    active = False
    signum: int | None = None
    previous: dict = {}  # the handlers before stop_on_signals, by signal
    tune_handler: str | None = None  # TUNE_DISABLE_SIGINT_HANDLER before stop_on_signals


_state = _State()


def _write(text: str) -> None:
    # os.write, not print: a handler may run while the main thread is inside sys.stderr.write.
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (read from /proc; none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])  # the name may hold spaces
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _handle(signum: int, frame) -> None:
    if _state.signum is not None:
        _write(f"dynsearch: {_NAMES.get(signum, signum)} again: stopping now; "
               "re-run the same command to resume\n")
        # What this process started (Ray's servers, agents and trial workers) ends with it: some of
        # Ray's agents outlive a killed driver for a while. Collected first, then killed.
        for pid in _descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(128 + signum)
    _state.signum = signum
    _write(f"dynsearch: {_NAMES.get(signum, signum)}: stopping the search cleanly (the trials running now "
           "will be retried on resume); press Ctrl-C again to stop at once\n")


def active() -> bool:
    """Whether ``stop_on_signals()`` is active (signals are recorded, not raised)."""
    return _state.active


def record(signum: int) -> None:
    """Record ``signum`` as if its handler had run (a library's own handler caught it first)."""
    if _state.active and _state.signum is None:
        _state.signum = int(signum)


def requested() -> int | None:
    """The signal that asked the search to stop, None when none did."""
    return _state.signum


def check(complete: int = 0) -> None:
    """Raise ``Interrupted`` when a signal asked the search to stop."""
    if _state.signum is not None:
        raise Interrupted(_state.signum, complete)


def reinstall() -> None:
    """Put this module's handlers back (after a library replaced them, e.g. ``ray.init``'s SIGTERM)."""
    if _state.active and threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handle)


def _restore() -> None:
    for signum, handler in _state.previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if _state.tune_handler is None:
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
    else:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = _state.tune_handler


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While active (main thread only; nested uses are one), SIGINT / SIGTERM ask the search to stop."""
    if _state.active or threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _state.tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _state.active, _state.signum = True, None
    try:
        reinstall()
        yield
    finally:
        _restore()
        _state.active, _state.signum = False, None


@contextmanager
def paused() -> Iterator[None]:
    """The signal handling from before ``stop_on_signals`` for a while (for a loop with no stop points:
    Ctrl-C raises KeyboardInterrupt there, Ray Tune's own handler works again)."""
    if not _state.active or threading.current_thread() is not threading.main_thread():
        yield
        return
    _restore()
    _state.active = False
    try:
        yield
    finally:
        _state.active = True
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        reinstall()
