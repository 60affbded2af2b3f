"""Helpers shared by the op benchmarks (bench_socd.py, bench_sasa.py, bench_reversal.py): timers,
the GPU's copy bandwidth, the backends to time, the environment record and the results file.

The benchmarks run as scripts (``python bench/bench_<op>.py``, from the repository root or from
bench/); Python puts the script's directory on ``sys.path``, so ``from common import ...`` finds
this file. It needs only torch (and triton for the CUDA timers), not detox_kernels.
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
    """Names of the op's backends to time on ``dev``: the built ones except the reference, the CUDA
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
