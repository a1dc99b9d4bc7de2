"""Atomic writes: every artifact qfcal writes goes to a temporary file beside its destination
and is renamed over it only once complete, so a crash never leaves a half-written file that
looks valid. numpy only."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write; renamed over `path` when the
    block succeeds, removed when it fails. It keeps `path`'s suffix, since some writers (Keras,
    matplotlib, numpy) choose their format by it."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        # the bytes reach the disk before the name does, so not even a power cut between the
        # two leaves a file under `path` that is shorter than what was written
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], content: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], doc: Any) -> None:
    """`doc` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
