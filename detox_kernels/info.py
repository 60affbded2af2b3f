"""``python -m detox_kernels.info``: versions, the available backends, and why the others are not."""

from __future__ import annotations

import platform
import sys

import torch


def collect() -> dict:
    import importlib

    from . import _ext

    socd = importlib.import_module("detox_kernels.socd")  # the module (the package attribute is the function)

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    backends = {}
    for b in socd.BACKENDS:
        why = b.unavailable_reason()
        backends[b.name] = {"available": why is None, "reason": why}
    sasa = importlib.import_module("detox_kernels.sasa")
    sasa_backends = {b.name: b.unavailable_reason() is None for b in sasa.BACKENDS}
    return {
        "detox_kernels": __import__("detox_kernels").__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "triton": triton_version,
        "extension": _ext.build_info(),
        "backends": backends,
        "sasa_backends": sasa_backends,
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
    print("sasa_reweight backends: " + ", ".join(f"{n} {'yes' if ok else 'no'}" for n, ok in info["sasa_backends"].items()))
    print("The triton backend takes CUDA tensors, and CPU tensors only under TRITON_INTERPRET=1 when forced.")


if __name__ == "__main__":
    main()
