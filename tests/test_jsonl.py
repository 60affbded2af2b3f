"""detox.resumable: the resumable-JSONL module behind the harness's generation files, CMD synthesis's
records and the rewrite runner's part files (append with fsync, torn tails repaired, settings
checked before resuming)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from detox import resumable
from detox.resumable import (JsonlAppender, SettingsMismatch, check_settings, read_records, settings_fingerprint,
                             write_settings)

ROWS = [{"index": 0, "text": "plain"}, {"index": 1, "text": "ünïcødé — kept as is"}, {"index": 2, "text": "a\nb"}]


def test_append_writes_complete_utf8_lines_and_reads_them_back(tmp_path):
    p = tmp_path / "r.jsonl"
    assert read_records(p) == [] and not p.exists()  # nothing yet: nothing read, nothing created
    with JsonlAppender(p) as f:
        assert f.append(ROWS[:2]) == 2
        assert f.append(r for r in ROWS[2:]) == 1  # any iterable
        assert f.append([]) == 0
    data = p.read_bytes()
    # the on-disk format the callers have always written: one json.dumps(ensure_ascii=False) per line
    assert data == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS).encode("utf-8")
    assert "ünïcødé".encode() in data
    with JsonlAppender(p) as f:  # appends, never truncates
        f.append([{"index": 3}])
    assert read_records(p) == ROWS + [{"index": 3}]
    assert read_records(p, lambda r: r["index"]) == [0, 1, 2, 3]


def test_every_append_is_flushed_and_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(resumable.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size), real_fsync(fd)))
    p = tmp_path / "r.jsonl"
    f = JsonlAppender(p)
    f.append(ROWS[:1])
    # durable before append returns: the fsync saw the whole line, and another reader sees it now
    assert synced == [p.stat().st_size] and read_records(p) == ROWS[:1]
    f.append(ROWS[1:])
    assert len(synced) == 2 and synced[-1] == p.stat().st_size and read_records(p) == ROWS
    f.close()
    f.close()  # closing twice is harmless


def test_records_survive_a_kill_right_after_append(tmp_path):
    p = tmp_path / "r.jsonl"
    code = ("import os, sys\nfrom detox.resumable import JsonlAppender\n"
            f"f = JsonlAppender({str(p)!r})\nf.append([{{'index': 0}}, {{'index': 1}}])\nos._exit(9)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    assert read_records(p, lambda r: r["index"]) == [0, 1]


def test_torn_tail_is_cut_off_and_appends_continue_cleanly(tmp_path, capsys):
    p = tmp_path / "r.jsonl"
    with JsonlAppender(p) as f:
        f.append(ROWS[:2])
    good = p.stat().st_size
    with open(p, "ab") as f:  # a kill -9 in the middle of a write
        f.write(b'{"index": 2, "text": "tor')
    assert read_records(p) == ROWS[:2]
    assert p.stat().st_size == good  # the file itself is repaired
    assert capsys.readouterr().err == ""  # silent unless asked
    with JsonlAppender(p) as f:
        f.append(ROWS[2:])
    assert read_records(p) == ROWS  # the next line starts on a clean line
    # a torn multi-byte character, and a note when asked
    with open(p, "ab") as f:
        f.write('{"index": 3, "text": "é'.encode()[:-1])
    assert read_records(p, lambda r: r["index"], note=True) == [0, 1, 2]
    assert "cut a torn tail of" in capsys.readouterr().err
    assert p.read_bytes().endswith(b"\n")


@pytest.mark.parametrize("bad", [b"not json\n", b"\n", b'{"index": 2, "te\xff": 1}\n', b'{"no_index": 1}\n',
                                 b"[1, 2]\n"])
def test_a_corrupt_line_ends_the_good_part(tmp_path, bad):
    p = tmp_path / "r.jsonl"
    with JsonlAppender(p) as f:
        f.append(ROWS[:2])
    good = p.stat().st_size
    with open(p, "ab") as f:
        f.write(bad + json.dumps(ROWS[2]).encode() + b"\n")  # nothing after a bad line is trusted
    assert read_records(p, lambda r: r["index"]) == [0, 1]
    assert p.stat().st_size == good


def test_a_corrupt_line_without_keep_is_a_json_error_only(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b'{"a": 1}\n[1, 2]\n"x"\nnope\n{"b": 2}\n')
    assert read_records(p) == [{"a": 1}, [1, 2], "x"]  # any JSON value is a record
    assert p.read_bytes() == b'{"a": 1}\n[1, 2]\n"x"\n'


def test_settings_fingerprint():
    a = {"model": "m", "config": {"top_p": 0.9, "temps": (0.7, 1.0)}, "n": 3}
    b = {"n": 3, "config": {"temps": [0.7, 1.0], "top_p": 0.9}, "model": "m"}
    assert settings_fingerprint(a) == settings_fingerprint(b)  # key order, tuple vs list
    assert len(settings_fingerprint(a)) == 16 and len(settings_fingerprint(a, 10)) == 10
    assert settings_fingerprint(a) != settings_fingerprint({**a, "n": 4})
    assert settings_fingerprint({"p": os.path}) == settings_fingerprint({"p": str(os.path)})  # non-JSON: str()
    assert settings_fingerprint({"x": 1}) == __import__("hashlib").sha256(b'{"x": 1}').hexdigest()[:16]


def test_settings_checked_against_the_stored_ones(tmp_path):
    d = tmp_path / "job"
    d.mkdir()
    path = d / "meta.json"
    meta = {"key": "abc", "input_bytes": 120, "config": {"top_p": 0.9, "seed": 0, "temps": (0.7, 1.0)}, "limit": 5}
    assert check_settings(path, meta) is False  # nothing stored yet
    write_settings(path, meta)
    assert json.loads(path.read_text()) == {**meta, "config": {**meta["config"], "temps": [0.7, 1.0]}}
    assert not (d / "meta.json.tmp").exists()
    assert check_settings(path, meta) is True  # the tuple stored as a list still matches
    assert check_settings(path, {**meta, "limit": 9}, ("key", "input_bytes", "config")) is True  # not compared
    with pytest.raises(SettingsMismatch) as e:
        check_settings(path, {**meta, "key": "xyz", "config": {**meta["config"], "top_p": 0.8}},
                       ("key", "input_bytes", "config"), what="a run with other settings",
                       hint="rerun with the same options to resume")
    msg = str(e.value)
    assert msg.startswith(f"error: {d} holds a run with other settings (")
    assert 'key: "abc" before, "xyz" now' in msg and "config.top_p: 0.9 before, 0.8 now" in msg
    assert msg.endswith("; rerun with the same options to resume")
    assert e.value.differing == ["config.top_p", "key"] and e.value.path == str(path)
    assert isinstance(e.value, SystemExit)  # uncaught: the message and exit status 1, like the CLI's errors
    with pytest.raises(SettingsMismatch, match="missing: null before, 1 now"):
        check_settings(path, {**meta, "missing": 1})
