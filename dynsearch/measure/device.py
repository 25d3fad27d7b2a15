"""Where and on how many threads work runs: the target device, and torch's thread count.

The one place that pins torch's threads: a trial pins them for its whole
process (``pin_threads``); a measurement that must run as the trial measured
(export, operating points, latency) holds them for its duration (``pinned_threads``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from dynsearch.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda[:N]``; a clear error (exit 2) when it is absent."""
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"latency device {name!r}: no CUDA device on this machine; use device: cpu")
        return torch.device(name)
    raise UserError(f"latency device {name!r}: unknown; use cpu or cuda")


def pin_threads(threads: float | int) -> int:
    """Set torch's intra-op threads for this process to ``threads`` (at least 1); return the count."""
    count = max(1, int(threads))
    torch.set_num_threads(count)
    return count


@contextlib.contextmanager
def pinned_threads(threads: float | int | None) -> Iterator[None]:
    """torch's threads set to ``threads`` inside the block (unchanged when None or 0), restored after."""
    before = torch.get_num_threads()
    if threads:
        pin_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
