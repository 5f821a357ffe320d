"""A dataset read as a stream (batch runs of a million samples), and the digest a run
records of its samples."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exprof.dataset import Sample, load_dataset, parse_sample
from exprof.errors import ExprofError
from exprof.files import max_input_bytes
from exprof.jsonio import dumps
from exprof.strict_json import check_tree, parse_json, strict_decoder


@dataclass(frozen=True)
class DatasetFile:
    """A validated dataset read as a stream (batch runs of a million samples): its size
    and digest from one pass, its samples from another, never all held at once."""

    path: Path
    count: int
    sha256: str

    def __iter__(self) -> Iterator[Sample]:
        """The samples again, from the file. A file changed since the scan is an error,
        raised while the caller still iterates: a run recording the snapshot in one
        transaction then records nothing."""
        digest = hashlib.sha256()
        count = 0
        try:
            for sample in _stream_samples(self.path):
                digest.update(sample_digest_line(sample))
                count += 1
                yield sample
        except Exception:  # noqa: BLE001 - whatever broke, the file is not the one scanned
            count = -1
        if count != self.count or digest.hexdigest() != self.sha256:
            raise ExprofError(f"{self.path}: dataset changed while the run was reading it")


def sample_digest_line(sample: Sample) -> bytes:
    """A sample's share of the dataset digest (RunStarted.dataset_sha256)."""
    return dumps(sample.to_payload()).encode() + b"\n"


def dataset_sha256(samples: Iterable[Sample]) -> str:
    """The dataset digest a run records: its samples' payloads, a JSON line each."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(sample_digest_line(sample))
    return digest.hexdigest()


def scan_dataset(path: str | Path) -> DatasetFile:
    """Validate the dataset in one streaming pass, holding neither its text nor its
    samples: the count, the digest and an 8-byte hash per dialogue_id (for duplicates).
    Whatever the pass finds wrong, load_dataset reads the file again to name it exactly
    as it always has (the error path may hold the file; the good path never does)."""
    import numpy as np  # here: every command imports this module, and most need no numpy

    path = Path(path)
    digest = hashlib.sha256()
    ids = bytearray()
    count = 0
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_input_bytes():
            raise ValueError("not a regular file within the size limit")
        for sample in _stream_samples(path):
            digest.update(sample_digest_line(sample))
            ids += hashlib.blake2b(sample.dialogue_id.encode(), digest_size=8).digest()
            count += 1
        hashes = np.frombuffer(bytes(ids), dtype=np.uint64)
        if count == 0 or len(np.unique(hashes)) != count:
            raise ValueError("empty, or a dialogue_id may repeat")
    except Exception:  # noqa: BLE001 - any failure: load_dataset names it exactly
        samples = load_dataset(path)  # raises the error, named as always
        # Valid after all: two dialogue_ids share a hash (about 1 in 10^7 at a million
        # samples), or the file was fixed meanwhile. Digest what was loaded.
        return DatasetFile(path, len(samples), dataset_sha256(samples))
    return DatasetFile(path, count, digest.hexdigest())


STREAM_READ = 1 << 20


def _stream_samples(path: Path) -> Iterator[Sample]:
    """The samples of a dataset file, parsed and checked one at a time (a JSON array
    element by element, JSON Lines line by line). Raises on anything wrong, without
    naming it well: scan_dataset leaves that to load_dataset."""
    jsonl = path.suffix.lower() == ".jsonl"
    items = _jsonl_items(path) if jsonl else _array_items(path)
    for where, item in items:
        yield parse_sample(item, f"{path}: {where}")


def _text_chunks(path: Path) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    with open(path, "rb") as f:
        first = True
        while data := f.read(STREAM_READ):
            if (first and data[:2] in (b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
                raise ValueError("UTF-16 or binary")
            first = False
            yield decoder.decode(data)
        yield decoder.decode(b"", final=True)


def _jsonl_items(path: Path) -> Iterator[tuple[str, Any]]:
    rest, lineno = "", 0
    for text in _text_chunks(path):
        lines = (rest + text).split("\n")
        rest = lines.pop()
        for line in lines:
            lineno += 1
            if line.strip():
                yield f"line {lineno}", parse_json(line, f"{path}: line {lineno}", one_line=True)
    if rest.strip():
        yield f"line {lineno + 1}", parse_json(rest, f"{path}: line {lineno + 1}", one_line=True)


def _array_items(path: Path) -> Iterator[tuple[str, Any]]:
    """The elements of a JSON array file, decoded one at a time with the strict decoder
    (a duplicate key, NaN or Infinity raises): an element cut by the end of the buffer
    is decoded again once more text has arrived."""
    decoder = strict_decoder()
    chunks = _text_chunks(path)
    buf, pos, index, ended = "", 0, 0, False
    state = "open"  # then "item" (an element or "]" next), "sep" ("," or "]"), "done"

    def more() -> bool:
        nonlocal buf, pos, ended
        if ended:
            return False
        text = next(chunks, None)
        if text is None:
            ended = True
            return False
        buf, pos = buf[pos:] + text, 0
        return True

    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n":
            pos += 1
        if pos == len(buf):
            if more():
                continue
            if state != "done":
                raise ValueError("the array is not closed")
            return
        char = buf[pos]
        if state == "done":
            raise ValueError("text after the array")
        if state == "open":
            if char != "[":
                raise ValueError("not an array")
            pos, state = pos + 1, "first"
        elif char == "]" and state in ("first", "sep"):
            pos, state = pos + 1, "done"
        elif state == "sep":
            if char != ",":
                raise ValueError("expected ','")
            pos, state = pos + 1, "item"
        else:
            try:
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if more():
                    continue
                raise
            if end == len(buf) and not ended and more():
                continue  # a number may go on in the next chunk: decode it whole
            yield f"index {index}", check_tree(item, f"{path}: index {index}")
            index, pos, state = index + 1, end, "sep"
