"""SoCD on every available backend against the float64 reference (tests/socd_check.py)."""

from __future__ import annotations

import functools
import itertools
import subprocess
import sys

import pytest
import torch

import detox_kernels
from detox_kernels import socd
from detox_kernels.dispatch import BackendUnavailableError
from detox_kernels.ops import socd as socd_module
from detox_kernels.reference import DIVERGENCES

from backends import available_backends
from socd_check import check_against_reference, make_logits


BACKENDS = available_backends(socd_module)
DEVICE = {"cuda": "cuda", "triton": "cuda" if torch.cuda.is_available() else "cpu", "cpu": "cpu"}
SETTINGS = {
    "paper": dict(k_rounding="ceil", subtract="abs", k_max=None),
    "hspd-code": dict(k_rounding="floor", subtract="signed", k_max="V"),
}
VOCABS = (7, 111, 1271, 32000, 49152, 151936)
BATCHES = (1, 3, 64)


def _interpreted(backend):
    return backend == "triton" and not torch.cuda.is_available()


def _cases():
    for v, b, dtype, div, preset in itertools.product(VOCABS, BATCHES, ("float32", "bfloat16"), DIVERGENCES, SETTINGS):
        yield pytest.param(v, b, dtype, div, preset, id=f"V{v}-B{b}-{dtype}-{div}-{preset}")


@functools.lru_cache(maxsize=2)
def _inputs(v, b, dtype, seed):
    return make_logits(b, v, getattr(torch, dtype), seed)


@pytest.mark.skipif(not BACKENDS, reason="no compiled or Triton backend available")
@pytest.mark.parametrize("v,b,dtype,div,preset", list(_cases()))
def test_socd_matches_reference(v, b, dtype, div, preset):
    seed = hash((v, b)) % 1000
    x, y = _inputs(v, b, dtype, seed)
    s = SETTINGS[preset]
    k_max = v if s["k_max"] == "V" else None
    for backend in BACKENDS:
        dev = DEVICE[backend]
        out, stats = socd(
            x.to(dev), y.to(dev), divergence=div, preset=preset, return_stats=True, backend=backend
        )
        check_against_reference(
            out, stats, x, y, divergence=div, k_min=10, k_max=k_max, k_rounding=s["k_rounding"], subtract=s["subtract"]
        )


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize(
    "k_min,k_max",
    [(0, 0), (0, 1), (1, 1), (10, 3), (0, None), (50, 50), ("V", "V")],
    ids=["zero", "one", "exactly-one", "min-above-max", "min-zero", "fixed-50", "all"],
)
def test_edge_k(backend, k_min, k_max):
    v = 1271
    x, y = make_logits(5, v, torch.float32, seed=3)
    k_min = v if k_min == "V" else k_min
    k_max = v if k_max == "V" else k_max
    dev = DEVICE.get(backend, "cpu")
    out, stats = socd(x.to(dev), y.to(dev), k_min=k_min, k_max=k_max, return_stats=True, backend=backend)
    check_against_reference(out, stats, x, y, divergence="l2", k_min=k_min, k_max=k_max, k_rounding="ceil", subtract="abs")
    if k_max == 0:
        assert torch.equal(out.cpu(), x) and torch.all(stats.k == 0)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_padding_inplace_and_strides(backend, dtype):
    dt = getattr(torch, dtype)
    dev = DEVICE.get(backend, "cpu")
    v, pad = 1000, 24
    x, y = make_logits(4, v, dt, seed=11, pad=pad)
    # rows of a wider buffer: the row stride is not the row length
    wide_x = torch.zeros(4, 2 * (v + pad), dtype=dt)
    wide_x[:, : v + pad] = x
    xs = wide_x[:, : v + pad]
    expect, stats_ref = socd(x, y, vocab_size=v, return_stats=True, backend="reference")
    got, stats = socd(xs.to(dev), y.to(dev), vocab_size=v, return_stats=True, backend=backend)
    check_against_reference(got, stats, x, y, divergence="l2", k_min=10, k_max=None, k_rounding="ceil", subtract="abs", vocab_size=v)
    # in place, into the input itself
    inplace = x.clone().to(dev)
    res = socd(inplace, y.to(dev), vocab_size=v, out=inplace, backend=backend)
    assert res is inplace
    torch.testing.assert_close(inplace.cpu(), got.cpu(), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_non_finite_rows(backend):
    dev = DEVICE.get(backend, "cpu")
    x, y = make_logits(4, 300, torch.float32, seed=5, kinds=("random",))
    x[1, 7] = float("inf")  # +inf: softmax undefined -> row unchanged
    y[2] = float("-inf")  # toxic row entirely -inf -> row unchanged
    out, stats = socd(x.to(dev), y.to(dev), return_stats=True, backend=backend)
    check_against_reference(out, stats, x, y, divergence="l2", k_min=10, k_max=None, k_rounding="ceil", subtract="abs")
    for r in (1, 2):
        assert torch.equal(out[r].cpu(), x[r]) and stats.k[r] == 0 and stats.alpha[r] == 0
        assert not torch.isfinite(stats.divergence[r])
    assert stats.k[0] > 0


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_nan_raises_on_cpu_and_is_reported_otherwise(backend):
    dev = DEVICE.get(backend, "cpu")
    x, y = make_logits(3, 200, torch.float32, seed=9, kinds=("random",))
    y[1, 17] = float("nan")
    if dev == "cpu":
        with pytest.raises(ValueError, match=r"NaN in the logits of row\(s\) \[1\]"):
            socd(x, y, backend=backend)
    out, stats = socd(x.to(dev), y.to(dev), return_stats=True, check_nan=False, backend=backend)
    assert torch.equal(out[1].cpu(), x[1]) and torch.isnan(stats.divergence[1]) and stats.k[1] == 0
    assert stats.k[0] > 0 and stats.k[2] > 0


def test_presets_resolve_to_the_documented_settings():
    x, y = make_logits(3, 500, torch.float32, seed=1)
    a = socd(x, y, preset="hspd-code", backend="reference")
    b = socd(x, y, k_rounding="floor", subtract="signed", k_max=500, backend="reference")
    assert torch.equal(a, b)
    c = socd(x, y, preset="paper", backend="reference")
    d = socd(x, y, backend="reference")
    assert torch.equal(c, d)
    assert not torch.equal(a, c)


def test_bad_arguments_give_clear_errors():
    x, y = make_logits(2, 100, torch.float32, seed=0)
    with pytest.raises(ValueError, match="same shape"):
        socd(x, y[:, :50])
    with pytest.raises(ValueError, match="same shape"):
        socd(x[0], y[0])
    with pytest.raises(ValueError, match="bfloat16"):
        socd(x, y.bfloat16())
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        socd(x.double(), y.double())
    with pytest.raises(ValueError, match="unknown divergence"):
        socd(x, y, divergence="kl")
    with pytest.raises(ValueError, match="unknown preset"):
        socd(x, y, preset="fast")
    with pytest.raises(ValueError, match="vocab_size"):
        socd(x, y, vocab_size=101)
    with pytest.raises(ValueError, match="k_min and k_max"):
        socd(x, y, k_min=-1)
    with pytest.raises(ValueError, match="out must be"):
        socd(x, y, out=torch.empty(2, 99))
    with pytest.raises(ValueError, match="unknown backend"):
        socd(x, y, backend="metal")


def test_forced_backend_errors_list_reasons(monkeypatch):
    x, y = make_logits(2, 100, torch.float32, seed=0)
    with pytest.raises(BackendUnavailableError, match="cuda.*forced"):
        socd(x, y, backend="cuda")
    monkeypatch.setenv("DETOX_BACKEND", "reference")
    out, stats = socd(x, y, return_stats=True)
    ref, ref_stats = socd(x, y, return_stats=True, backend="reference")
    assert torch.equal(out, ref)
    monkeypatch.setenv("DETOX_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        socd(x, y)


def test_dispatch_lists_every_reason():
    from detox_kernels.dispatch import Backend, select

    ran = []
    bs = [
        Backend("c", 2, lambda: None, lambda *a: ran.append("c")),
        Backend("a", 0, lambda: "not built", None),
        Backend("b", 1, lambda: None, None, lambda t, forced=False: ["too wide", "wrong dtype"]),
    ]
    assert select("op", bs, torch.zeros(1)).name == "c"  # priority order, not list order
    with pytest.raises(BackendUnavailableError) as info:
        select("op", bs[1:], torch.zeros(1))
    msg = str(info.value)
    assert "a: not built" in msg and "b: too wide; wrong dtype" in msg
    assert msg.index("a: not built") < msg.index("b: too wide")


@pytest.mark.skipif("cpu" not in BACKENDS, reason="C++ extension not built")
def test_auto_dispatch_picks_cpu_kernel_for_cpu_tensors():
    x, y = make_logits(2, 100, torch.float32, seed=0)
    assert detox_kernels.resolve_backend("socd", x, y).backend == "cpu"


@pytest.mark.skipif("cpu" not in BACKENDS, reason="C++ extension not built")
def test_opcheck_cpu():
    x, y = make_logits(3, 257, torch.float32, seed=2)
    args = (x, y, torch.empty_like(x), torch.empty(3), torch.empty(3), torch.empty(3, dtype=torch.int32), 5, 10, 128, 257, True, False)
    torch.library.opcheck(torch.ops.detox.socd.default, args)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton backend not available")
def test_opcheck_triton():
    dev = DEVICE["triton"]
    x, y = make_logits(3, 257, torch.float32, seed=2)
    x, y = x.to(dev), y.to(dev)
    args = (x, y, torch.empty_like(x), torch.empty(3, device=dev), torch.empty(3, device=dev),
            torch.empty(3, dtype=torch.int32, device=dev), 5, 10, 128, 257, True, False)
    torch.library.opcheck(torch.ops.detox.socd_triton.default, args)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="C++ extension not built")
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(x, y):
        z = socd(x, y, divergence="jsd", backend="cpu")
        return torch.softmax(z, -1)

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    x, y = make_logits(4, 333, torch.float32, seed=4)
    torch.testing.assert_close(compiled(x, y), step(x, y))


def _run_python(code: str, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_import_without_extension_warns_once_and_falls_back():
    code = (
        "import sys, warnings\n"
        "sys.modules['detox_kernels._C'] = None\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import detox_kernels\n"
        "import torch\n"
        "x = torch.randn(2, 50); y = torch.randn(2, 50)\n"
        "print('backend', detox_kernels.resolve_backend('socd', x, y).backend)\n"
        "print('warnings', sum('detox_kernels._C' in str(i.message) for i in w))\n"
        "print(detox_kernels.socd(x, y).shape)\n"
    )
    res = _run_python(code)
    assert res.returncode == 0, res.stderr
    assert "backend reference" in res.stdout
    assert "warnings 1" in res.stdout


def test_info_command():
    res = _run_python("import runpy; runpy.run_module('detox_kernels.info', run_name='__main__')")
    assert res.returncode == 0, res.stderr
    assert "backends (priority order)" in res.stdout
    for name in ("cuda", "triton", "cpu", "reference"):
        assert name in res.stdout
    if "cpu" in BACKENDS:
        assert "cpu        available" in res.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_gpu_backend_agrees_with_reference_and_runs_under_cuda_graphs(backend, dtype):
    if socd_module.BACKENDS[[b.name for b in socd_module.BACKENDS].index(backend)].unavailable_reason():
        pytest.skip(f"{backend} backend not built")
    x, y = make_logits(8, 151936, getattr(torch, dtype), seed=21)
    xc, yc = x.cuda(), y.cuda()
    out, stats = socd(xc, yc, return_stats=True, backend=backend)
    check_against_reference(out, stats, x, y, divergence="l2", k_min=10, k_max=None, k_rounding="ceil", subtract="abs")
    # no host synchronisation: the op can be captured in a CUDA graph and replayed
    static_out = torch.empty_like(xc)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        socd(xc, yc, out=static_out, backend=backend, check_nan=False)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, out)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_negative_zero_key_ties_with_positive_zero(backend):
    """Keys -0.0 and +0.0 are equal (a tie broken by the lower id), not ordered by their bits."""
    v = 40
    x = torch.ones(1, v)
    y = torch.ones(1, v)
    x[0, 0], y[0, 0] = 0.0, -0.0  # key -0.0 at id 0; keys +0.0 at ids 1..38
    x[0, 39], y[0, 39] = 10.0, -5.0
    dev = DEVICE.get(backend, "cpu")
    out, stats = socd(x.to(dev), y.to(dev), k_min=2, k_max=2, return_stats=True, backend=backend)
    changed = (out.cpu() != x).nonzero()[:, 1].tolist()
    # c < 0 here, so every zero key is a candidate: the two largest keys (all zeros) by lowest id
    assert stats.k.item() == 2 and changed == [1] and y[0, 0] == 0  # id 0 has |y| = 0: unchanged value
    check_against_reference(out, stats, x, y, divergence="l2", k_min=2, k_max=2, k_rounding="ceil", subtract="abs")


@pytest.mark.skipif("cpu" not in BACKENDS, reason="C++ extension not built")
def test_extension_built_from_older_sources_is_refused(monkeypatch):
    # An extension that lacks an op declared by the current sources (a stale in-place build) is
    # not used: its kernels would not match the Python side, and registering fakes would fail.
    from detox_kernels import _ext

    monkeypatch.setattr(_ext, "OPS", _ext.OPS + ("no_such_op",))
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "LOAD_ERROR", None)
    _ext._load()
    assert _ext._C is None and "out of date" in _ext.LOAD_ERROR and "detox::no_such_op" in _ext.LOAD_ERROR


def test_error_messages_show_shape_dtype_and_device():
    x, y = make_logits(8, 100, torch.float32, seed=0)
    with pytest.raises(ValueError) as info:
        socd(x, y[:, :99])
    assert "base [8, 100] float32 cpu and toxic [8, 99] float32 cpu" in str(info.value)
    with pytest.raises(ValueError, match=r"base \[8, 100\] float32 cpu and toxic \[8, 100\] bfloat16 cpu"):
        socd(x, y.bfloat16())
    with pytest.raises(ValueError, match=r"got base \[8, 100\] float64 cpu"):
        socd(x.double(), y.double())
    with pytest.raises(ValueError, match=r"base \[100\] float32 cpu and toxic \[100\] float32 cpu"):
        socd(x[0], y[0])
    with pytest.raises(ValueError, match=r"like base_logits \(\[8, 100\] float32 cpu\), got out \[8, 99\] float16 cpu"):
        socd(x, y, out=torch.empty(8, 99, dtype=torch.float16))
    with pytest.raises(TypeError, match="toxic a list, not a tensor"):
        socd(x, y.tolist())


def test_public_functions_do_not_shadow_modules():
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(detox_kernels.__path__)}
    assert {"ops", "dispatch", "reference", "triton"} <= submodules
    assert not submodules & set(detox_kernels.__all__)
    assert callable(detox_kernels.socd) and callable(detox_kernels.sasa_reweight)
    assert socd_module.__name__ == "detox_kernels.ops.socd" and socd_module.OP.name == "socd"
    from detox_kernels.ops import reversal, sasa

    assert sasa.OP.name == "sasa_reweight" and reversal.OP.name == "reverse_toxification_"


def test_resolve_backend_binds_the_op_once():
    x, y = make_logits(3, 120, torch.float32, seed=7)
    bound = detox_kernels.resolve_backend("socd", x, y, backend="reference")
    assert bound.backend == "reference" and "socd" in repr(bound)
    out, stats = bound(x, y, divergence="jsd", k_min=3, return_stats=True)
    want, want_stats = socd(x, y, divergence="jsd", k_min=3, return_stats=True, backend="reference")
    assert torch.equal(out, want) and torch.equal(stats.k, want_stats.k)
    assert not torch.equal(out, x)
    # the example is checked like the op's own arguments, and the choice is the op's choice
    with pytest.raises(ValueError, match=r"toxic \[3, 119\] float32 cpu"):
        detox_kernels.resolve_backend("socd", x, y[:, :119])
    with pytest.raises(ValueError, match="unknown op 'soft'"):
        detox_kernels.resolve_backend("soft", x, y)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="cuda.*forced"):
            detox_kernels.resolve_backend("socd", x, y, backend="cuda")
    with pytest.raises(TypeError):
        bound(x, y, backend="cpu")  # the backend is bound: the callable has no backend= argument


def test_bound_ops_take_the_public_defaults():
    """The bound callable runs ``launch``, which repeats the public function's defaults: they must agree."""
    import inspect

    from detox_kernels.dispatch import OPS

    for name, op in OPS.items():
        public = inspect.signature(getattr(detox_kernels, name)).parameters
        launch = inspect.signature(op.launch).parameters
        assert list(launch)[1:] == [p for p in public if p != "backend"], name
        for p, param in public.items():
            if p != "backend":
                assert launch[p].default == param.default and launch[p].kind == param.kind, (name, p)
