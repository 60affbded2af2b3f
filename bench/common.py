"""Helpers shared by the op benchmarks (bench_socd.py, bench_sasa.py, bench_reversal.py): timers,
the GPU's copy bandwidth, the backends to time, the environment record and the results file.

``bench`` is a package: run the benchmarks as modules from the repository root
(``python -m bench.bench_<op>``); they import this file as ``bench.common`` and use the installed
``detox_kernels`` / ``detox`` (``pip install -e .``), nothing from ``sys.path`` edits. This file
needs only torch (triton for the CUDA timers; tokenizers and transformers for ``word_tokenizer``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def time_cpu(fn, repeats, min_time=0.2, max_factor=10):
    """Seconds per call of ``fn`` after one warm-up call: at least ``repeats`` samples and
    ``min_time`` seconds of them, at most ``max_factor * repeats`` samples."""
    fn()  # warm up
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < repeats or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= max_factor * repeats:
            break
    return times


def time_cuda(fn, rep=200):
    """Seconds per call of ``fn`` on the GPU (``triton.testing.do_bench``, ``rep`` ms of samples)."""
    import triton.testing

    return [t * 1e-3 for t in triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="all")]


def measure_copy_bandwidth(rep=200):
    """Bytes per second of a 256 MiB device-to-device copy (read + write): the practical floor."""
    n = 256 * 1024 * 1024 // 4
    a = torch.empty(n, device="cuda")
    b = torch.empty_like(a)
    t = statistics.median(time_cuda(lambda: b.copy_(a), rep=rep))
    return 2 * a.numel() * 4 / t


def git_commit():
    if os.environ.get("DETOX_COMMIT"):  # set by the caller where the checkout's .git is not current
        return os.environ["DETOX_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=HERE).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def op_backends(module, dev, only=None):
    """Names of the backends of an op's module (``detox_kernels.ops.<op>``, its ``BACKENDS``) to time on ``dev``: the built ones except the reference, the CUDA
    and Triton backends on a GPU, the C++ CPU one on a CPU; ``only`` ("cpu,triton") restricts them."""
    names = []
    for b in module.BACKENDS:
        if b.name == "reference" or b.unavailable_reason() is not None:
            continue
        if (dev == "cpu" and b.name in ("cuda", "triton")) or (dev == "cuda" and b.name == "cpu"):
            continue
        names.append(b.name)
    if only:
        names = [n for n in names if n in only.split(",")]
    return names


def env_info(dev, peak=None, **extra):
    """The environment of a run for the results file: device, torch, threads, commit, ``extra``
    and the copy bandwidth ``peak`` (GPU)."""
    return {
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
        **extra,
        "copy_bandwidth_GBps": peak / 1e9 if peak else None,
    }


def save_results(result, op, dev, out=None):
    """Writes ``result`` as JSON to ``out`` (default ``bench/results/<op>-<device>-<host>.json``)."""
    path = out or os.path.join(HERE, "results", f"{op}-{dev}-{platform.node() or 'host'}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"raw results: {path}")
    return path


WORDS = ("the a an of to and is in it you that he she was for on are with as his they be at one have this from "
         "or had by hot word but what some we can out other were all there when up use your how said each which "
         "do their time if will way about many then them write would like so these her long make thing see him "
         "two has look more day could go come did number sound no most people my over know water than call first "
         "who may down side been now find idiot stupid hate kill damn ugly dumb shut fool nice kind good happy").split()


def word_tokenizer():
    """A small word-level tokenizer (``WORDS`` plus ``<pad> <s> </s> <unk>``, left padding) for the
    random-weight models of the decoding benchmarks: their timing does not depend on the text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.padding_side = "left"
    return tok
