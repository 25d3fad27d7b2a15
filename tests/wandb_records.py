"""Read offline W&B run files (``run-<id>.wandb``) back with wandb's own protobuf records.

wandb 0.31 ships no Python reader (PITFALLS.md): the file is a 7-byte header
(``:W&B``, a 2-byte magic, a version byte) followed by LevelDB log-format
records in 32 KiB blocks, each record a ``wandb_internal_pb2.Record``.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any, Iterator

from wandb.proto import wandb_internal_pb2

BLOCK_BYTES = 32 * 1024
HEADER_BYTES = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (header {data[:7]!r})")
    pos, pending = HEADER_BYTES, None
    while pos + HEADER_BYTES <= len(data):
        left_in_block = BLOCK_BYTES - pos % BLOCK_BYTES
        if left_in_block < HEADER_BYTES:  # the block's tail is padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER_BYTES])
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += left_in_block
            continue
        chunk = data[pos + HEADER_BYTES : pos + HEADER_BYTES + length]
        if len(chunk) != length:
            raise ValueError(f"{path}: truncated record at byte {pos}")
        pos += HEADER_BYTES + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE and pending is not None:
            pending += chunk
        elif kind == LAST and pending is not None:
            yield pending + chunk
            pending = None
        else:
            raise ValueError(f"{path}: unexpected record type {kind} at byte {pos}")


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_run(path: Path) -> dict[str, Any]:
    """``run`` (id, project, group, name, job_type), ``config``, ``history`` rows, ``summary``, ``exit_code``."""
    out: dict[str, Any] = {"run": {}, "config": {}, "history": [], "summary": {}, "exit_code": None}
    for raw in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out["run"] = {"id": run.run_id, "project": run.project, "group": run.run_group,
                          "name": run.display_name, "job_type": run.job_type}
            out["config"].update({item.key: json.loads(item.value_json) for item in run.config.update})
        elif kind == "config":
            out["config"].update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            out["history"].append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            out["summary"].update({_key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def read_finished_run(path: Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """``read_run`` once the run's exit record is on disk.

    ``run.finish()`` returns before wandb-core's writer has flushed the file
    (it writes when the stream closes, a moment later), so wait for it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            run = read_run(path)
        except ValueError:  # a record still being written
            run = None
        if (run is not None and run["exit_code"] is not None) or time.monotonic() > deadline:
            return run if run is not None else read_run(path)
        time.sleep(0.1)


def offline_runs(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every offline W&B run under ``run_dir/wandb``: (its folder, its records read back)."""
    return [(path.parent, read_finished_run(path))
            for path in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))]
