"""``python -m detox_kernels.info``: versions, the available backends of every op, and why the
others are not."""

from __future__ import annotations

import platform
import sys

import torch


def collect() -> dict:
    """The report as a dict: versions, the extension's build, and per op (``ops``) each backend
    in priority order with whether this installation has it and, if not, why; ``backends`` is
    SoCD's entry of ``ops``. Whether a backend takes a particular input (device, dtype, size) is
    decided per call and is not part of this report."""
    import detox_kernels

    from . import _ext
    from .dispatch import OPS

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    ops = {}
    for name, op in OPS.items():
        ops[name] = {}
        for b in sorted(op.backends, key=lambda b: b.priority):
            why = b.unavailable_reason()
            ops[name][b.name] = {"available": why is None, "reason": why}
    return {
        "detox_kernels": detox_kernels.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "triton": triton_version,
        "extension": _ext.build_info(),
        "backends": ops["socd"],
        "ops": ops,
    }


def main() -> None:
    info = collect()
    print(f"detox_kernels {info['detox_kernels']}  python {info['python']}  {info['platform']}")
    print(f"torch {info['torch']} (CUDA {info['torch_cuda']}, GPU available: {info['cuda_available']}"
          + (f", {info['gpu']})" if info["gpu"] else ")"))
    print(f"triton {info['triton'] or 'not installed'}")
    ext = info["extension"]
    if ext["loaded"]:
        print(f"extension detox_kernels._C: built for torch {ext['torch_version']}, CUDA kernels: "
              f"{ext['with_cuda']}{' (' + ext['cuda_archs'] + ')' if ext['with_cuda'] else ''}, OpenMP: {ext['openmp']}")
    else:
        print(f"extension detox_kernels._C: not loaded ({ext['error']})")
    print("backends (priority order):")
    for name, b in info["backends"].items():
        print(f"  {name:<10} {'available' if b['available'] else 'unavailable: ' + b['reason']}")
    for op, backends in info["ops"].items():
        print(f"{op} backends: " + ", ".join(f"{n} {'yes' if b['available'] else 'no'}" for n, b in backends.items()))
    print("The triton backend takes CUDA tensors, and CPU tensors only under TRITON_INTERPRET=1 when forced.")
    print("DETOX_BACKEND=cuda|triton|cpu|reference forces one backend for every op.")


if __name__ == "__main__":
    main()
