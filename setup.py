"""Builds detox_kernels._C against the torch that is already installed.

- C++ CPU kernels: always.
- CUDA kernels: when a CUDA toolkit (nvcc) and a CUDA-enabled torch are both present.
  DETOX_FORCE_CUDA=1 forces them (for building without a visible GPU), DETOX_SKIP_CUDA=1
  skips them. TORCH_CUDA_ARCH_LIST (default "8.0;9.0") and MAX_JOBS are honoured.

pip's build isolation hides the user's site-packages, and installing torch into the isolated
environment would compile against a different torch (or download a multi-GB CUDA build). So
torch is not a build requirement: if it is not importable here, we import the user's torch
from the interpreter's own site-packages, found by asking that interpreter without pip's
isolation variables. `pip install --no-build-isolation .` skips all of this.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _import_user_torch():
    try:
        import torch  # noqa: F401

        return
    except ImportError:
        pass
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    probe = "import json, os, sys, torch; print(json.dumps([os.path.dirname(os.path.dirname(torch.__file__))] + sys.path))"
    try:
        res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        paths = json.loads(res.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(
            "detox-kernels compiles against the torch you already have, but torch is not installed "
            f"for {sys.executable} ({exc}). Install torch first (e.g. `pip install torch`), then "
            "`pip install --no-build-isolation .`"
        ) from exc
    # Append (not prepend): the build environment's setuptools stays first.
    for p in paths:
        if p and os.path.isdir(p) and p not in sys.path:
            sys.path.append(p)
    import torch  # noqa: F401


def _want_cuda(torch_mod) -> tuple[bool, str]:
    if os.environ.get("DETOX_SKIP_CUDA", "0") == "1":
        return False, "DETOX_SKIP_CUDA=1"
    from torch.utils.cpp_extension import CUDA_HOME

    if torch_mod.version.cuda is None:
        return False, "torch has no CUDA (CPU build)"
    if CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    if os.environ.get("DETOX_FORCE_CUDA", "0") == "1":
        return True, "DETOX_FORCE_CUDA=1"
    return True, f"CUDA toolkit at {CUDA_HOME} and torch {torch_mod.__version__}"


def _extensions():
    _import_user_torch()
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    use_cuda, why = _want_cuda(torch)
    print(f"detox-kernels: building against torch {torch.__version__}; CUDA kernels: {use_cuda} ({why})")
    if os.environ.get("DETOX_FORCE_CUDA", "0") == "1" and not use_cuda:
        raise SystemExit(f"DETOX_FORCE_CUDA=1 but the CUDA kernels cannot be built: {why}")

    sources = [os.path.join("csrc", "module.cpp"), os.path.join("csrc", "ops.cpp")]
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = ["-O3", "-std=c++17", f'-DDETOX_TORCH_VERSION="{torch.__version__}"', "-fopenmp"]
    nvcc = []
    ext_cls = CppExtension
    if use_cuda:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        cxx += ["-DDETOX_WITH_CUDA", f'-DDETOX_CUDA_ARCHS="{archs}"']
        nvcc = ["-O3", "-std=c++17", "-DDETOX_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]
        ext_cls = CUDAExtension
    ext = ext_cls(
        name="detox_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if use_cuda else {"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
