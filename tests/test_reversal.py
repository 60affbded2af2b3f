"""The toxification-reversal op on every available backend against the float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

import detox_kernels
from detox_kernels import reverse_toxification_
from detox_kernels.dispatch import BackendUnavailableError
from detox_kernels.ops import reversal as rev_module
from detox_kernels.reference.reversal import reverse_toxification_reference as reference

from backends import available_backends

BACKENDS = available_backends(rev_module)
DEVICE = {"cuda": "cuda", "triton": "cuda" if torch.cuda.is_available() else "cpu", "cpu": "cpu", "reference": "cpu"}
# (B, H, D): odd sizes, SmolLM2 (9 x 64), GPT-2 (12 x 64), Llama-7B (32 x 128), Gemma-3-270M (4 x 256)
SIZES = ((1, 1, 1), (3, 5, 17), (2, 7, 33), (1, 9, 64), (5, 9, 64), (4, 12, 64), (2, 32, 128), (3, 4, 256), (64, 9, 64))
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=3e-2, rtol=2e-2),
       torch.float16: dict(atol=4e-3, rtol=4e-3)}


def make_inputs(b, h, d, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(b, h, d, generator=g)
    delta = 0.5 * torch.randn(b, h, d, generator=g)
    e = torch.randn(h, d, generator=g)
    if h > 1:
        e[0] = o[0, 0] * 2.0  # cos = 1 for one head of row 0
        e[1] = -o[0, 1]  # cos = -1: relu gives 0
    return o.to(device, dtype), delta.to(device, dtype), e.to(device, dtype)


def _check(backend, o, delta, e, **kw):
    want = reference(o, delta, e, **kw)
    x = o.clone()
    ret = reverse_toxification_(x, delta, e, backend=backend, **kw)
    assert ret is x
    torch.testing.assert_close(x.cpu().double(), want.cpu(), **TOL[o.dtype])
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_reference(backend, size, dtype):
    if backend == "triton" and not torch.cuda.is_available() and dtype != torch.float32 and size[0] > 5:
        pytest.skip("interpreter: 16-bit on the small sizes only")
    o, delta, e = make_inputs(*size, dtype=dtype, seed=sum(size), device=DEVICE[backend])
    _check(backend, o, delta, e)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(renorm=False), dict(norm_exp=1.0, sim_exp=0.0), dict(norm_exp=0.0, sim_exp=2.5),
                                dict(norm_exp=-0.3, sim_exp=0.6, renorm=False)], ids=str)
def test_parameters(backend, kw):
    o, delta, e = make_inputs(4, 9, 64, seed=5, device=DEVICE[backend])
    x = _check(backend, o, delta, e, **kw)
    if kw.get("renorm", True):  # row norms preserved
        torch.testing.assert_close(x.flatten(1).norm(dim=-1), o.flatten(1).norm(dim=-1))


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_hand_computed_values(backend):
    """One row, two heads of size 2, numbers worked out by hand."""
    dev = DEVICE[backend]
    o = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]], device=dev)
    delta = torch.tensor([[[0.0, 3.0], [0.0, 0.0]]], device=dev)  # |delta_0| = 3, |delta_1| = 0
    e = torch.tensor([[3.0, 4.0], [-1.0, 0.0]], device=dev)  # cos_0 = 1, cos_1 = -1
    s0 = 4.0 ** 0.4 * 2.0 ** 0.6  # (1 + 3)^0.4 (1 + 1)^0.6
    new = torch.tensor([[[3.0, 4.0 - 3.0 * s0], [1.0, 0.0]]])
    x = o.clone()
    reverse_toxification_(x, delta, e, renorm=False, backend=backend)
    torch.testing.assert_close(x.cpu(), new, atol=1e-6, rtol=1e-6)
    x = o.clone()
    reverse_toxification_(x, delta, e, backend=backend)
    torch.testing.assert_close(x.cpu(), new * math.sqrt(26.0) / new.norm(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_zero_delta_is_identity_bit_for_bit(backend, dtype):
    o, _, e = make_inputs(5, 9, 64, dtype=dtype, seed=9, device=DEVICE[backend])
    if backend == "reference" and dtype == torch.bfloat16:
        pytest.skip("the reference works in float64 and rounds; identity is a kernel property")
    x = o.clone()
    reverse_toxification_(x, torch.zeros_like(o), e, backend=backend)
    assert torch.equal(x, o)


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend):
    dev = DEVICE[backend]
    o, delta, e = make_inputs(6, 4, 16, seed=11, device=dev)
    o[1] = 0.0  # zero row: cos 0, |o| = 0 -> the result is renormalised to 0
    e[2] = 0.0  # zero e_neg head: cos taken as 0
    o[3] = delta[3] = 0.0  # o' = 0: left as is (no division by 0)
    e[3] = o[4, 3]  # exact tie cos = 1 on one head of row 4
    x = _check(backend, o, delta, e)
    assert torch.equal(x[1].cpu(), torch.zeros(4, 16)) and torch.equal(x[3].cpu(), torch.zeros(4, 16))
    # NaN / inf propagate to their own row only (no host-side check)
    o[5, 0, 0] = float("nan")
    delta[2, 1, 3] = float("inf")
    x = o.clone()
    reverse_toxification_(x, delta, e, backend=backend)
    assert torch.isnan(x[5]).all() and not torch.isfinite(x[2]).all()
    assert torch.isfinite(x[[0, 1, 3, 4]]).all()
    # empty batch
    z = torch.empty(0, 4, 16, device=dev)
    reverse_toxification_(z, z.clone(), e, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_strided_rows_in_place_and_noncontiguous_fallback(backend):
    """The hook's view: the last position of [B, T, H*D], updated in place; other layouts copied."""
    dev = DEVICE[backend]
    b, t, h, d = 3, 5, 9, 64
    big = torch.randn(b, t, h * d, device=dev)
    keep = big.clone()
    o = big[:, -1, :].view(b, h, d)
    assert not o.is_contiguous()
    _, delta, e = make_inputs(b, h, d, seed=2, device=dev)
    want = reference(o, delta, e)
    reverse_toxification_(o, delta, e, backend=backend)
    torch.testing.assert_close(big[:, -1].view(b, h, d).cpu().double(), want.cpu(), atol=2e-5, rtol=2e-5)
    assert torch.equal(big[:, :-1], keep[:, :-1])  # nothing else touched
    # a transposed (head-minor) layout and a strided delta
    ot = torch.randn(b, d, h, device=dev).transpose(1, 2)
    dt = torch.randn(b, h, 2 * d, device=dev)[:, :, ::2]
    want = reference(ot, dt, e)
    reverse_toxification_(ot, dt, e, backend=backend)
    torch.testing.assert_close(ot.cpu().double(), want.cpu(), atol=2e-5, rtol=2e-5)


def test_bad_arguments_give_clear_errors():
    o, d, e = make_inputs(2, 3, 4)
    with pytest.raises(ValueError, match=r"\[B, H, D\]"):
        reverse_toxification_(o[0], d[0], e)
    with pytest.raises(ValueError, match="delta"):
        reverse_toxification_(o, d[:1], e)
    with pytest.raises(ValueError, match="neg_end must be"):
        reverse_toxification_(o, d, e[:2])
    with pytest.raises(ValueError, match="share one dtype"):
        reverse_toxification_(o, d.half(), e)
    with pytest.raises(ValueError, match="floating"):
        reverse_toxification_(o.long(), d.long(), e.long())
    with pytest.raises(ValueError, match="finite"):
        reverse_toxification_(o, d, e, norm_exp=float("nan"))
    with pytest.raises(TypeError, match="tensor"):
        reverse_toxification_(o, d, e.tolist())


def test_forced_backend_and_dispatch_reasons(monkeypatch):
    o, d, e = make_inputs(2, 3, 4)
    with pytest.raises(BackendUnavailableError, match="cuda.*forced"):
        reverse_toxification_(o, d, e, backend="cuda")
    monkeypatch.setenv("DETOX_BACKEND", "reference")
    x = o.clone()
    reverse_toxification_(x, d, e)
    torch.testing.assert_close(x.double(), reference(o, d, e))
    monkeypatch.delenv("DETOX_BACKEND")
    # float64 goes to the reference; the error lists every backend's reason when forced elsewhere
    assert detox_kernels.resolve_backend("reverse_toxification_", o.double(), d.double(), e.double()).backend == "reference"
    with pytest.raises(BackendUnavailableError, match="dtype torch.float64 not supported"):
        reverse_toxification_(o.double(), d.double(), e.double(), backend="triton")
    if "cpu" in BACKENDS:
        assert detox_kernels.resolve_backend("reverse_toxification_", o, d, e).backend == "cpu"


@pytest.mark.skipif("cpu" not in BACKENDS, reason="C++ extension not built")
def test_opcheck_cpu():
    o, d, e = make_inputs(3, 4, 16)
    torch.library.opcheck(torch.ops.detox.reverse_toxification_.default, (o, d, e, 0.4, 0.6, True))


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton backend not available")
def test_opcheck_triton():
    o, d, e = make_inputs(3, 4, 16, device=DEVICE["triton"])
    torch.library.opcheck(torch.ops.detox.reverse_toxification_triton.default, (o, d, e, 0.4, 0.6, True))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="C++ extension not built")
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(big, delta, e):
        x = big * 2.0
        reverse_toxification_(x[:, -1, :].view(3, 4, 16), delta, e, backend="cpu")
        return x.sum(-1)

    big = torch.randn(3, 2, 64)
    _, d, e = make_inputs(3, 4, 16)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(big, d, e), step(big, d, e))


def test_exported_from_package():
    assert detox_kernels.reverse_toxification_ is reverse_toxification_
    assert "reverse_toxification_" in detox_kernels.__all__


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("size", [(1, 9, 64), (64, 9, 64), (8, 32, 128), (256, 64, 128), (3, 5, 17)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gpu_backend_agrees_with_reference_and_runs_under_cuda_graphs(backend, dtype, size):
    if rev_module.BACKENDS[[b.name for b in rev_module.BACKENDS].index(backend)].unavailable_reason():
        pytest.skip(f"{backend} backend not built")
    o, delta, e = make_inputs(*size, dtype=dtype, seed=3, device="cuda")
    x = _check(backend, o, delta, e)
    y = o.clone()
    reverse_toxification_(y, torch.zeros_like(o), e, backend=backend)
    assert torch.equal(y, o)
    # no host synchronisation: capturable in a CUDA graph
    z = o.clone()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        reverse_toxification_(z, delta, e, backend=backend)
    z.copy_(o)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(z, x)


def test_error_messages_show_shape_dtype_and_device():
    o, d, e = make_inputs(2, 3, 4)
    with pytest.raises(ValueError, match=r"got head_out \[3, 4\] float32 cpu"):
        reverse_toxification_(o[0], d[0], e)
    with pytest.raises(ValueError, match=r"got delta \[1, 3, 4\] float32 cpu and head_out \[2, 3, 4\] float32 cpu"):
        reverse_toxification_(o, d[:1], e)
    with pytest.raises(ValueError, match=r"\[H, D\] = \[3, 4\], got neg_end \[2, 4\] float32 cpu"):
        reverse_toxification_(o, d, e[:2])
    with pytest.raises(ValueError, match=r"head_out \[2, 3, 4\] float32 cpu, delta \[2, 3, 4\] float16 cpu and "
                                         r"neg_end \[3, 4\] float32 cpu"):
        reverse_toxification_(o, d.half(), e)
    with pytest.raises(ValueError, match=r"got head_out \[2, 3, 4\] int64 cpu"):
        reverse_toxification_(o.long(), d.long(), e.long())
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match=r"head_out: dtype torch.float64 not supported"):
            reverse_toxification_(o.double(), d.double(), e.double(), backend="cpu")


def test_resolve_backend_binds_the_op_once():
    o, d, e = make_inputs(3, 5, 17)
    bound = detox_kernels.resolve_backend("reverse_toxification_", o, d, e)
    assert bound.backend == ("cpu" if "cpu" in BACKENDS else "reference")
    # strided rows (the last position of [B, T, H*D]) as in generation
    big = torch.randn(3, 4, 5 * 17)
    big[:, -1] = o.reshape(3, -1)
    x = big[:, -1, :].view(3, 5, 17)
    assert bound(x, d, e, norm_exp=0.5, sim_exp=0.7, renorm=False) is x
    torch.testing.assert_close(x.double(), reference(o, d, e, norm_exp=0.5, sim_exp=0.7, renorm=False), **TOL[torch.float32])
    with pytest.raises(ValueError, match="finite"):
        bound(x, d, e, norm_exp=float("inf"))
    forced = detox_kernels.resolve_backend("reverse_toxification_", o.double(), d.double(), e.double())
    assert forced.backend == "reference"
