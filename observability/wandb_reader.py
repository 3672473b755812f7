"""Read the history rows of an offline W&B run (`run-<id>.wandb`) without network or wandb's CLI.

The file is a "W&B" header followed by LevelDB log-format blocks holding protobuf `Record`s.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

_BLOCK = 32 * 1024
_HEADER = 7  # crc32c (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(data: bytes) -> Iterator[bytes]:
    # W&B's own header: "W&B" + 2-byte magic + 1-byte version, inside the first block.
    pos, pending = 7, b""
    while pos + _HEADER <= len(data):
        block_left = _BLOCK - (pos % _BLOCK)
        if block_left < _HEADER:  # zero padding at the end of a block
            pos += block_left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        payload = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""
        else:  # a zero/partial record at the tail of a file still being written
            break


def _items(run_file: Path, record_type: str) -> list[dict]:
    from wandb.proto import wandb_internal_pb2

    found = []
    for raw in _records(run_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(raw)
        except Exception:
            continue
        if record.WhichOneof("record_type") == record_type:
            items = record.history.item if record_type == "history" else record.summary.update
            found.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items})
    return found


def history_rows(run_file: Path) -> list[dict]:
    """Every `run.log(...)` row in the file, as dicts of key -> value."""
    return _items(run_file, "history")


def summary(run_file: Path) -> dict:
    """The run summary as last written (later updates override earlier ones)."""
    merged: dict = {}
    for update in _items(run_file, "summary"):
        merged.update(update)
    return merged


def offline_run_files(wandb_dir: Path) -> list[Path]:
    """`.wandb` files of the offline runs under a W&B dir (the `dir` given to wandb.init)."""
    return sorted((wandb_dir / "wandb").glob("offline-run-*/run-*.wandb"))
