"""Resumable JSONL files: the one implementation behind every interruptible job that appends records
and continues after a crash (the evaluation harness's generation files, CMD synthesis's
``records.jsonl``, ``detox rewrite``'s part files).

- :class:`JsonlAppender` appends complete lines, one JSON object each (UTF-8, ``ensure_ascii=False``),
  a batch per call, each batch flushed and ``fsync``'d before the call returns: a record that was
  reported written survives a crash.
- :func:`read_records` reads the complete lines back, a line at a time, and repairs the file: an
  incomplete last line (a ``kill -9`` during a write) or a line that does not parse is cut off,
  with everything after it, so the next append starts on a clean line.
- :func:`settings_fingerprint`, :func:`check_settings`, :func:`write_settings`: a job stores the
  settings it was started with (a JSON file) and refuses to resume with other ones
  (:class:`SettingsMismatch`, a ``SystemExit`` naming what differs), since records made with other
  settings would be mixed with the new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Callable, Iterable, Mapping

__all__ = ["JsonlAppender", "SettingsMismatch", "check_settings", "read_records", "settings_fingerprint",
           "write_settings"]


# --------------------------------------------------------------------------------------------------
# appending and reading back


class JsonlAppender:
    """Appends records to ``path`` (created if missing) as JSON lines; every :meth:`append` is one
    write of complete lines, then flush and ``fsync``. Use as a context manager or :meth:`close`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._f = open(self.path, "ab")

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Write ``records`` (one line each) and make them durable; returns how many were written."""
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        if not lines:
            return 0
        self._f.write("".join(lines).encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())
        return len(lines)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | os.PathLike, keep: Callable[[Any], Any] | None = None, *,
                 note: bool = False) -> list:
    """The records of the complete lines of ``path`` (``[]`` when it does not exist), in file order.

    The file is read a line at a time. The first line without its newline (a torn write) or that is
    not JSON, or on which ``keep`` raises ``KeyError`` / ``TypeError`` / ``ValueError``, ends the
    good part: the file is truncated there (and the truncation ``fsync``'d). ``keep(record)`` is
    what is returned per line (default: the record itself), e.g. ``lambda r: r["index"]`` to hold
    only the indices of a large file in memory. ``note``: say on stderr when bytes were cut off.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    out: list = []
    good = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line)
                out.append(rec if keep is None else keep(rec))
            except (ValueError, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                break
            good += len(line)
        size = os.fstat(f.fileno()).st_size
    if good != size:
        with open(path, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
        if note:
            print(f"note: cut a torn tail of {size - good} bytes off {path} (an interrupted write)", file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------------------
# the settings a job was started with


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def settings_fingerprint(settings: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``settings`` as canonical JSON (sorted keys,
    values JSON cannot hold written with ``str``): equal for equal settings, whatever the key order,
    and a tuple fingerprints as the list it is stored as."""
    return hashlib.sha256(_canonical(settings).encode()).hexdigest()[:length]


class SettingsMismatch(SystemExit):
    """A job directory holds records made with other settings; ``differing`` lists the keys
    (``a.b`` for a nested one). A ``SystemExit``: uncaught, it prints its message and exits 1."""

    def __init__(self, message: str, path: str, differing: list[str]) -> None:
        super().__init__(message)
        self.path, self.differing = path, differing


def _short(value: Any, width: int = 60) -> str:
    s = _canonical(value)
    return s if len(s) <= width else s[:width - 3] + "..."


def _differences(old: Any, new: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if settings_fingerprint(old) == settings_fingerprint(new) else [(prefix, old, new)]


def check_settings(path: str | os.PathLike, settings: Mapping[str, Any], keys: Iterable[str] | None = None, *,
                   what: str = "a run with other settings",
                   hint: str = "rerun with the same options to resume") -> bool:
    """Check ``settings`` against the ones stored in the JSON file ``path``.

    Returns ``False`` when nothing is stored there, ``True`` when the stored settings match:
    every key of ``keys`` (default: all keys of both) has the same :func:`settings_fingerprint`.
    Otherwise raises :class:`SettingsMismatch`: ``error: DIR holds WHAT (KEY: STORED before, NOW
    now; ...); HINT``, ``DIR`` being the directory of ``path``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as f:
        stored = json.load(f)
    names = list(keys) if keys is not None else sorted(set(stored) | set(settings))
    diffs = _differences({k: stored.get(k) for k in names}, {k: settings.get(k) for k in names}, "")
    if not diffs:
        return True
    shown = "; ".join(f"{k}: {_short(a)} before, {_short(b)} now" for k, a, b in diffs[:6])
    if len(diffs) > 6:
        shown += f"; and {len(diffs) - 6} more"
    raise SettingsMismatch(f"error: {os.path.dirname(path) or '.'} holds {what} ({shown}); {hint}", path,
                           [k for k, _, _ in diffs])


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file, fsync'd, then renamed): a kill while
    writing leaves the old file or the new one, never a torn one."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False))


def write_settings(path: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Store ``settings`` as JSON at ``path`` atomically (a temporary file, fsync'd, then renamed)."""
    write_json_atomic(path, settings)
