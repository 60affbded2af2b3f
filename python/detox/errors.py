"""User errors and the checks of files and outputs that every command shares.

A :class:`UserError` is a mistake in what the user asked for (a missing or unreadable file, a value
out of range, a model directory that holds no model, mismatched vocabularies, an output that would
be overwritten or that another process is writing). ``detox`` prints it as one line
``error: ...`` and exits with code 2; ``--debug`` (or ``DETOX_DEBUG=1``) shows the traceback.
The checks here run before any model is loaded.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time


class UserError(Exception):
    """A mistake in the user's input; the message says what is wrong and what to do."""


class InputFileError(UserError, OSError):
    """An input file that is missing, a directory, unreadable or not text."""


class MissingFileError(InputFileError, FileNotFoundError):
    """An input file that does not exist."""


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def check_input_file(path: str, what: str = "input file", *, text: bool = True) -> str:
    """``path`` is an existing, readable file (and, with ``text``, UTF-8 text without NUL bytes)."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise MissingFileError(f"{what} not found: {p}")
    if os.path.isdir(p):
        raise InputFileError(f"{what} {p} is a directory: give a file")
    if not os.access(p, os.R_OK):
        raise InputFileError(f"{what} {p} is not readable (permissions)")
    if text:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
        if b"\0" in head:
            raise InputFileError(f"{what} {p} is a binary file, not text (JSONL or one text per line)")
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a character cut at the end of the sample
                raise InputFileError(f"{what} {p} is not UTF-8 text (byte {e.start}): convert it to UTF-8") from None
    return p


def _writable(folder: str) -> bool:
    """A file can be made in ``folder`` (tried, not guessed from permission bits: root passes those)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".detox-probe-"):
            return True
    except OSError:
        return False


def check_output_file(path: str, what: str = "--out", *, overwrite: bool = False, inputs=()) -> str:
    """``path`` can be written: its folder exists and is writable, it is not a directory, it is none
    of ``inputs``, and it does not exist yet unless ``overwrite``."""
    p = os.fspath(path)
    for i in inputs:
        if i and os.path.exists(i) and os.path.exists(p) and os.path.samefile(i, p):
            raise UserError(f"{what} {p} is the input file: write to another file")
    if os.path.isdir(p):
        raise UserError(f"{what} {p} is a directory: give a file name")
    folder = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(folder):
        raise UserError(f"{what} {p}: the folder {folder} does not exist")
    if not _writable(folder) or (os.path.exists(p) and not os.access(p, os.W_OK)):
        raise UserError(f"{what} {p} cannot be written (permissions or a read-only file system)")
    if os.path.exists(p) and not overwrite:
        raise UserError(f"{what} {p} exists: pass --overwrite to replace it, or choose another file")
    return p


def check_output_dir(path: str, what: str = "--out") -> str:
    """``path`` is a writable directory or can be made as one."""
    p = os.fspath(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise UserError(f"{what} {p} is a file: give a directory")
    probe = p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not _writable(probe):
        raise UserError(f"{what} {p} cannot be written (permissions or a read-only file system)")
    return p


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """``with OutputLock(out):`` holds ``<out>.lock`` (or ``<out>/.lock`` for a directory) while a
    command writes ``out``; a second writer is refused with a message naming the first. A lock left
    by a process that no longer runs (killed) is taken over."""

    def __init__(self, out: str, directory: bool = False):
        self.path = os.path.join(out, ".lock") if directory else f"{out}.lock"
        self.out = out
        self.held = False

    def __enter__(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv[:1] + sys.argv[1:])[:300]}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.load(open(self.path))
                except (OSError, ValueError):
                    other = {}
                pid = other.get("pid")
                same_host = other.get("host") == me["host"]
                if isinstance(pid, int) and (not same_host or _alive(pid)) and pid != os.getpid():
                    raise UserError(
                        f"{self.out} is being written by process {pid} on {other.get('host')} since "
                        f"{other.get('since')} ({other.get('command', '?')}): wait for it to finish, or remove "
                        f"{self.path} if that process is gone") from None
                os.unlink(self.path)  # a stale lock of a killed process
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UserError(f"could not take the lock {self.path}")

    def __exit__(self, *exc):
        if self.held:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.held = False
        return False
