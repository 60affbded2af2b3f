"""The package documents itself: no tracked file outside tests/, .ci/ and bench/results/ refers to the
development folder beside the checkout or to the private design notes (socd.md, sasa.md, ...), and
the tests find the development data only through --dev-data / DETOX_DEV_DATA."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import DEV_DATA_ENV, resolve_dev_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTES = "socd|sasa|reversal|cmd|hspd|eval|perf|style|assets"
# The check, except that a note's name right after a '/' is a path inside the repository
# (docs/methods/socd.md, ./sasa.md), not the private note: docs link their pages that way.
PATTERN = (r"\.\./shared|shared/(specs|data)|specs/[a-z]+\.md"
           rf"|(^|[^/[:alnum:]_.-])({NOTES})\.md\b")
PATHSPEC = ["--", ".", ":!bench/results", ":!tests", ":!.ci"]


def _git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)


def _in_git_checkout() -> bool:
    return shutil.which("git") is not None and _git("rev-parse", "--is-inside-work-tree").stdout.strip() == "true"


def _offending_lines(extra_pathspec=()) -> list[str]:
    # -I: binary files are checked separately (a match would only print "Binary file ... matches")
    r = _git("grep", "-nIE", PATTERN, *PATHSPEC, *extra_pathspec)
    if r.returncode not in (0, 1):  # 1 = no match
        raise RuntimeError(f"git grep failed: {r.stderr}")
    return r.stdout.splitlines()


needs_git = pytest.mark.skipif(not _in_git_checkout(), reason="not in a git checkout")


@needs_git
def test_no_tracked_file_refers_to_the_private_notes_or_the_dev_folder():
    bad = _offending_lines()
    assert not bad, ("these lines refer to ../shared or to design notes users never get; state the fact "
                     "or link to docs/ instead:\n" + "\n".join(bad))


@needs_git
def test_no_shipped_binary_refers_to_the_private_notes_or_the_dev_folder():
    r = _git("grep", "-lE", PATTERN, *PATHSPEC)
    text_hits = {line.split(":", 1)[0] for line in _offending_lines()}
    binary = [p for p in r.stdout.splitlines() if p not in text_hits]
    assert not binary, f"binary files with such references (e.g. metadata paths): {binary}"


@needs_git
def test_the_check_finds_what_it_must(tmp_path):
    """The pattern and the path filter catch a reference (and only outside the exempt folders)."""
    samples = ["see ../shared/specs/socd.md", "data in shared/data/rtp", "as socd.md says", "(perf.md)",
               "`cmd.md` phase 1", "specs/sasa.md section 2", "eval.md"]
    clean = ["docs/methods/socd.md", "[SoCD](./socd.md)", "detox cmd-train", "socd_md", "the shared prefix",
             "methods/sasa.mdx", "bench/results/socd-cuda-h100.md", "my-socd.md"]
    f = tmp_path / "probe.txt"
    f.write_text("\n".join(samples + clean) + "\n")
    r = subprocess.run(["git", "grep", "--no-index", "-nE", PATTERN, f.name], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    hits = [line.split(":", 2)[2] for line in r.stdout.splitlines()]
    assert hits == samples


def test_dev_data_location_comes_from_the_option_or_the_environment(tmp_path):
    missing = str(tmp_path / "nope")
    assert resolve_dev_data(None, {}) == (None, f"no development data: pass --dev-data DIR or set {DEV_DATA_ENV}")
    path, why = resolve_dev_data(None, {DEV_DATA_ENV: missing})
    assert path is None and missing in why and DEV_DATA_ENV in why
    assert resolve_dev_data(None, {DEV_DATA_ENV: str(tmp_path)}) == (str(tmp_path), "")
    # the option wins over the environment
    path, why = resolve_dev_data(missing, {DEV_DATA_ENV: str(tmp_path)})
    assert path is None and "--dev-data" in why
    assert resolve_dev_data(str(tmp_path), {DEV_DATA_ENV: missing}) == (str(tmp_path), "")
