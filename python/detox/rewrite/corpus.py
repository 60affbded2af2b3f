"""Streaming corpus readers and writers: JSONL, plain text (one text per line) and Parquet.

Records are numbered by their position among the valid records (``index``, 0-based) and keep
their line (JSONL / text, 1-based) or row (Parquet, 0-based) number for reports. Malformed
lines (invalid JSON, not an object, no text field, a non-string or empty text, a text over
``max_chars``) are reported with their line numbers and skipped, never silently dropped.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Iterator

FORMATS = ("jsonl", "text", "parquet")


@dataclass
class Record:
    index: int
    line: int
    text: str
    raw: object = None   # the parsed JSON object / Parquet row dict (for writing back)


@dataclass
class Malformed:
    lines: list = field(default_factory=list)    # (line, reason)
    read: int = 0

    def add(self, line: int, why: str) -> None:
        self.lines.append((line, why))

    def summary(self, path: str) -> str:
        shown = "; ".join(f"line {n}: {w}" for n, w in self.lines[:5])
        more = f" (and {len(self.lines) - 5} more)" if len(self.lines) > 5 else ""
        return f"{path}: {len(self.lines)} malformed line(s) skipped: {shown}{more}"


def detect_format(path: str, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    low = path.lower()
    if low.endswith(".parquet") or low.endswith(".pq"):
        return "parquet"
    if low.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    return "text"


from ..data import get_field as _get  # noqa: E402


def _set(obj, dotted, value):
    parts = dotted.split(".")
    for part in parts[:-1]:
        obj = obj[part]
    obj[parts[-1]] = value


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("Parquet needs pyarrow: pip install 'detox-kernels[parquet]' (or pip install pyarrow)") from None
    return pq


def count_rows(path: str, fmt: str) -> int:
    """Lines (JSONL / text) or rows (Parquet), without parsing: the progress bar's total."""
    if fmt == "parquet":
        return _pyarrow().ParquetFile(path).metadata.num_rows
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while True:
            buf = f.read(1 << 20)
            if not buf:
                break
            n += buf.count(b"\n")
            last = buf[-1:]
    return n + (last != b"\n")


def iter_records(path: str, fmt: str | None = None, text_field: str = "text", malformed: Malformed | None = None,
                 max_chars: int = 20000) -> Iterator[Record]:
    """Valid records of ``path`` in order; malformed ones go to ``malformed`` (line, reason)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"input not found: {path}")
    fmt = detect_format(path, fmt)
    bad = malformed if malformed is not None else Malformed()
    index = 0

    def check(text, line):
        if not isinstance(text, str):
            return f"no text field {text_field!r}" if text is None else f"field {text_field!r} is not a string"
        if not text.strip():
            return "empty text"
        if len(text) > max_chars:
            return f"text too long ({len(text)} characters > {max_chars})"
        return None

    if fmt == "parquet":
        pq = _pyarrow()
        pf = pq.ParquetFile(path)
        if text_field.split(".")[0] not in pf.schema_arrow.names:
            raise ValueError(f"{path}: no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)})")
        row = 0
        for batch in pf.iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                bad.read += 1
                text = _get(obj, text_field)
                why = check(text, row)
                if why:
                    bad.add(row, why)
                else:
                    yield Record(index, row, text, obj)
                    index += 1
                row += 1
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            raw = line.rstrip("\r\n")
            if not raw.strip():
                continue  # blank lines separate nothing; not records
            bad.read += 1
            if fmt == "text":
                why = check(raw, n)
                if why:
                    bad.add(n, why)
                    continue
                yield Record(index, n, raw, None)
                index += 1
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                bad.add(n, f"invalid JSON: {e.msg}")
                continue
            if not isinstance(obj, dict):
                bad.add(n, "not a JSON object")
                continue
            text = _get(obj, text_field)
            why = check(text, n)
            if why:
                bad.add(n, why)
                continue
            yield Record(index, n, text, obj)
            index += 1


def write_corpus(path_in: str, path_out: str, rewrites: Iterator[tuple[int, str]], *, fmt: str | None = None,
                 text_field: str = "text", max_chars: int = 20000, limit: int | None = None) -> int:
    """Write the input corpus with each text replaced, in the input's format (atomically).

    ``rewrites`` yields ``(index, new_text)`` in increasing index order; records without a rewrite
    (skipped ones) are left out. Returns the number of records written.
    """
    fmt = detect_format(path_in, fmt)
    tmp = path_out + ".tmp"
    it = iter(rewrites)
    nxt = next(it, None)
    written = 0

    def replacements():
        nonlocal nxt
        for rec in iter_records(path_in, fmt, text_field, Malformed(), max_chars):
            if limit is not None and rec.index >= limit:
                break
            while nxt is not None and nxt[0] < rec.index:
                nxt = next(it, None)
            if nxt is not None and nxt[0] == rec.index:
                yield rec, nxt[1]

    if fmt == "parquet":
        pq = _pyarrow()
        import pyarrow as pa

        schema = pq.ParquetFile(path_in).schema_arrow
        writer = pq.ParquetWriter(tmp, schema)
        rows = []
        try:
            for rec, new in replacements():
                obj = dict(rec.raw)
                _set(obj, text_field, new)
                rows.append(obj)
                if len(rows) >= 1024:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    written += len(rows)
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                written += len(rows)
        finally:
            writer.close()
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec, new in replacements():
                if fmt == "text":
                    f.write(new.replace("\n", " ") + "\n")
                else:
                    obj = rec.raw
                    _set(obj, text_field, new)
                    f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                written += 1
    os.replace(tmp, path_out)
    return written


def warn_malformed(bad: Malformed, path: str) -> None:
    if bad.lines:
        print(f"warning: {bad.summary(path)}", file=sys.stderr)
