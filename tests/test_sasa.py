"""SASA re-weighting op on every available backend against the float64 reference."""

from __future__ import annotations

import itertools

import pytest
import torch

import detox_kernels
from detox_kernels import sasa_reweight
from detox_kernels.dispatch import BackendUnavailableError
from detox_kernels.ops import sasa as sasa_module
from detox_kernels.reference import sasa_reweight_reference

from backends import available_backends
from sasa_check import check_against_reference, make_sasa_inputs


BACKENDS = available_backends(sasa_module)
GPU = torch.cuda.is_available()
DEVICE = {"cuda": "cuda", "triton": "cuda" if GPU else "cpu", "cpu": "cpu"}
# (B, K, D, V): odd sizes and the real ones (SmolLM2: D 576, V 49152; Qwen-size V 151936)
SHAPES = [(1, 1, 7, 5), (3, 17, 33, 111), (2, 50, 576, 49152), (5, 64, 64, 1271), (4, 33, 896, 151936)]
DTYPES = [("float32", "float32"), ("bfloat16", "bfloat16"), ("float16", "float32"), ("float32", "bfloat16")]


def _cases():
    for (b, k, d, v), (ld, hd), mode in itertools.product(SHAPES, DTYPES, ("softmax", "tilt")):
        yield pytest.param(b, k, d, v, ld, hd, mode, id=f"B{b}-K{k}-D{d}-V{v}-{ld}-{hd}-{mode}")


def _run(backend, logits, ids, hidden, w, m, beta, valid, mode):
    dev = DEVICE[backend]
    lg = logits.clone().to(dev)
    out, margins = sasa_reweight(lg, ids.to(dev), hidden.to(dev), w.to(dev), m.to(dev), beta.to(dev), mode=mode,
                                 valid=None if valid is None else valid.to(dev), return_margins=True, backend=backend)
    assert out is lg  # in place
    return out, margins


@pytest.mark.skipif(not BACKENDS, reason="no compiled or Triton backend available")
@pytest.mark.parametrize("b,k,d,v,ld,hd,mode", list(_cases()))
def test_sasa_matches_reference(b, k, d, v, ld, hd, mode):
    inputs = make_sasa_inputs(b, k, d, v, logits_dtype=getattr(torch, ld), hidden_dtype=getattr(torch, hd),
                              seed=b * 1000 + k)
    for backend in BACKENDS:
        if backend == "triton" and not GPU and (v > 50000 and ld != "float32"):
            continue  # the interpreter is slow; the float32 case covers the big vocabularies
        out, margins = _run(backend, *inputs, mode)
        check_against_reference(out, margins, *inputs, mode)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_edge_cases_exact(backend):
    """Duplicates add once with the summed weight; invalid rows are untouched; ties share equally."""
    v, d = 13, 8
    logits = torch.arange(3 * v, dtype=torch.float32).view(3, v) / 10
    h = torch.zeros(3, 4, d)
    h[:, :, 0] = torch.tensor([1.0, 2.0, 1.0, 3.0])
    w = torch.zeros(d)
    w[0] = 1.0
    m = torch.zeros(d)
    ids = torch.tensor([[4, 7, 4, 9], [1, 2, 3, 5], [0, 0, 0, 0]])
    valid = torch.tensor([[True, True, True, True], [False, False, False, False], [True, True, True, True]])
    beta = torch.tensor([2.0, 5.0, 1.0])
    if backend == "reference":
        out, margins = sasa_reweight(logits.clone(), ids, h, w, m, beta, valid=valid, return_margins=True,
                                     backend="reference")
    else:
        out, margins = _run(backend, logits, ids, h, w, m, beta, valid, "softmax")
    out, margins = out.cpu(), margins.cpu()
    torch.testing.assert_close(margins, torch.tensor([[1.0, 2.0, 1.0, 3.0]] * 3))
    e = torch.exp(torch.tensor([1.0, 2.0, 1.0, 3.0]) - 3)
    wts = e / e.sum()
    exp0 = logits[0].clone()
    exp0[4] += 2.0 * (wts[0] + wts[2])
    exp0[7] += 2.0 * wts[1]
    exp0[9] += 2.0 * wts[3]
    torch.testing.assert_close(out[0], exp0, atol=1e-6, rtol=1e-6)
    assert torch.equal(out[1], logits[1])  # no valid candidate: unchanged, bit for bit
    torch.testing.assert_close(out[2, 0], logits[2, 0] + 1.0, atol=1e-6, rtol=0)  # weights of one id sum to 1
    assert torch.equal(out[2, 1:], logits[2, 1:])


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_token_zero_before_padding_and_all_minus_inf_margins(backend):
    """Row 0: a real candidate with id 0 followed by padding (invalid ids / valid=False) still gets
    its update. Row 1: every margin is -inf (a -inf hidden value): zero weights, row unchanged."""
    v, d = 11, 4
    logits = torch.randn(2, v, generator=torch.Generator().manual_seed(0))
    h = torch.zeros(2, 3, d)
    h[0, :, 0] = torch.tensor([2.0, 1.0, 0.5])
    h[1, :, 0] = float("-inf")
    w = torch.zeros(d)
    w[0] = 1.0
    m = torch.zeros(d)
    ids = torch.tensor([[0, -1, 5], [3, 4, 6]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    beta = torch.tensor([3.0, 2.0])
    if backend == "reference":
        out = sasa_reweight(logits.clone(), ids, h, w, m, beta, valid=valid, backend="reference")
    else:
        out, _ = _run(backend, logits, ids, h, w, m, beta, valid, "softmax")
    out = out.cpu()
    torch.testing.assert_close(out[0, 0], logits[0, 0] + 3.0, atol=1e-6, rtol=0)  # the only candidate: weight 1
    assert torch.equal(out[0, 1:], logits[0, 1:])
    assert torch.equal(out[1], logits[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_beta_and_empty_shapes(backend):
    logits, ids, hidden, w, m, beta, valid = make_sasa_inputs(3, 9, 16, 40, seed=3)
    out, _ = _run(backend, logits, ids, hidden, w, m, torch.zeros(3), valid, "softmax")
    assert torch.equal(out.cpu(), logits)  # beta = 0 changes nothing (not even -0.0 -> 0.0 issues)
    dev = DEVICE[backend]
    for b, k in ((0, 5), (2, 0)):
        lg = torch.randn(b, 10, device=dev)
        before = lg.clone()
        o, mg = sasa_reweight(lg, torch.zeros(b, k, dtype=torch.long, device=dev), torch.randn(b, k, 4, device=dev),
                              torch.ones(4), torch.zeros(4), 3.0, return_margins=True, backend=backend)
        assert torch.equal(o, before) and mg.shape == (b, k)


def test_scalar_beta_int32_ids_and_out_argument():
    logits, ids, hidden, w, m, _, valid = make_sasa_inputs(2, 6, 12, 30, seed=5)
    ref, _ = sasa_reweight_reference(logits, ids, hidden, w, m, 7.5, valid=valid)
    out = torch.empty_like(logits)
    res = sasa_reweight(logits, ids.int(), hidden, w.double(), m.double(), 7.5, valid=valid, out=out)
    assert res is out
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    assert not torch.equal(out, logits)  # logits left unchanged when out= is another tensor


def test_errors_are_clear():
    logits, ids, hidden, w, m, beta, valid = make_sasa_inputs(2, 6, 12, 30, seed=5)
    with pytest.raises(ValueError, match=r"candidate_hidden must be \[B, K, D\]"):
        sasa_reweight(logits, ids, hidden[:, :5], w, m)
    with pytest.raises(ValueError, match="direction must have shape"):
        sasa_reweight(logits, ids, hidden, w[:5], m)
    with pytest.raises(ValueError, match="unknown mode"):
        sasa_reweight(logits, ids, hidden, w, m, mode="hard")
    with pytest.raises(ValueError, match="beta must be"):
        sasa_reweight(logits, ids, hidden, w, m, torch.ones(3))
    bad = hidden.clone()
    bad[1, 2, 0] = float("nan")
    v = torch.ones(2, 6, dtype=torch.bool)
    ids2 = ids.clamp(0, 29)
    with pytest.raises(ValueError, match=r"NaN in the hidden states .* row\(s\) \[1\]"):
        sasa_reweight(logits.clone(), ids2, bad, w, m, valid=v)
    with pytest.raises(ValueError, match="unknown backend"):
        sasa_reweight(logits.clone(), ids, hidden, w, m, backend="fpga")
    if not GPU:
        with pytest.raises(BackendUnavailableError, match="cuda"):
            sasa_reweight(logits.clone(), ids, hidden, w, m, backend="cuda")


@pytest.mark.skipif("cpu" not in BACKENDS, reason="C++ extension not built")
def test_auto_dispatch_and_opcheck_cpu():
    logits, ids, hidden, w, m, beta, valid = make_sasa_inputs(3, 7, 16, 50, seed=1)
    assert detox_kernels.resolve_backend("sasa_reweight", logits, ids, hidden, w, m, beta, valid=valid).backend == "cpu"
    torch.library.opcheck(torch.ops.detox.sasa_reweight.default,
                          (logits, ids, hidden, w, m, beta, valid, torch.empty(3, 7), 0))
    torch.library.opcheck(torch.ops.detox.sasa_reweight.default,
                          (logits, ids, hidden, w, m, beta, None, torch.empty(3, 7), 1))


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton backend not available")
def test_opcheck_triton():
    dev = DEVICE["triton"]
    logits, ids, hidden, w, m, beta, valid = (t.to(dev) for t in make_sasa_inputs(3, 7, 16, 50, seed=1))
    torch.library.opcheck(torch.ops.detox.sasa_reweight_triton.default,
                          (logits, ids, hidden, w, m, beta, valid, torch.empty(3, 7, device=dev), 0))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="C++ extension not built")
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    logits, ids, hidden, w, m, beta, valid = make_sasa_inputs(4, 9, 24, 77, seed=6)

    def step(x):
        x = x.clone()
        sasa_reweight(x, ids, hidden, w, m, beta, valid=valid, check_nan=False, backend="cpu")
        return torch.softmax(x, -1)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(logits), step(logits))


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_cuda_graph_capture_no_host_sync():
    logits, ids, hidden, w, m, beta, valid = (t.cuda() for t in make_sasa_inputs(32, 50, 576, 49152, seed=2))
    ref = logits.clone()
    sasa_reweight(ref, ids, hidden, w, m, beta, valid=valid)
    x = logits.clone()
    g = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        sasa_reweight(x, ids, hidden, w, m, beta, valid=valid)
    x.copy_(logits)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(x, ref)


def test_error_messages_show_shape_dtype_and_device():
    logits, ids, hidden, w, m, beta, valid = make_sasa_inputs(2, 6, 12, 30, seed=5)
    with pytest.raises(ValueError, match=r"\(candidate_ids \[2, 6\] int64 cpu\), got candidate_hidden \[2, 5, 12\] "
                                         r"float32 cpu"):
        sasa_reweight(logits, ids, hidden[:, :5], w, m)
    with pytest.raises(ValueError, match=r"B = 2 \(logits \[2, 30\] float32 cpu\), got candidate_ids \[3, 6\] int64 cpu"):
        sasa_reweight(logits, torch.zeros(3, 6, dtype=torch.long), hidden, w, m)
    with pytest.raises(ValueError, match=r"got logits \[2, 30\] float64 cpu and candidate_hidden \[2, 6, 12\] float32"):
        sasa_reweight(logits.double(), ids, hidden, w, m)
    with pytest.raises(ValueError, match=r"got candidate_ids \[2, 6\] float32 cpu"):
        sasa_reweight(logits, ids.float(), hidden, w, m)
    with pytest.raises(ValueError, match=r"got logits \[30\] float32 cpu"):
        sasa_reweight(logits[0], ids, hidden, w, m)
    with pytest.raises(ValueError, match=r"\[12\] \(the hidden size\), got direction \[5\] float32 cpu"):
        sasa_reweight(logits, ids, hidden, w[:5], m)
    with pytest.raises(ValueError, match=r"got beta \[3\] float32 cpu"):
        sasa_reweight(logits, ids, hidden, w, m, torch.ones(3))
    with pytest.raises(ValueError, match=r"got valid \[2, 5\] bool cpu"):
        sasa_reweight(logits, ids, hidden, w, m, valid=valid[:, :5])
    with pytest.raises(ValueError, match=r"like logits \(\[2, 30\] float32 cpu\), got out \[2, 30\] bfloat16 cpu"):
        sasa_reweight(logits, ids, hidden, w, m, out=logits.bfloat16())


def test_resolve_backend_binds_the_op_once():
    logits, ids, hidden, w, m, beta, valid = make_sasa_inputs(3, 7, 16, 50, seed=1)
    ref = sasa_reweight(logits.clone(), ids, hidden, w, m, beta, valid=valid, mode="tilt", backend="reference")
    bound = detox_kernels.resolve_backend("sasa_reweight", logits, ids, hidden, w, m, beta, valid=valid)
    assert bound.backend == ("cpu" if "cpu" in BACKENDS else "reference")
    x = logits.clone()
    res, margins = bound(x, ids, hidden, w, m, beta, valid=valid, mode="tilt", return_margins=True)
    assert res is x and margins.shape == (3, 7)
    torch.testing.assert_close(res, ref, atol=1e-4, rtol=1e-5)
    assert not torch.equal(res, logits)
    with pytest.raises(ValueError, match=r"got candidate_hidden \[3, 6, 16\] float32 cpu"):
        detox_kernels.resolve_backend("sasa_reweight", logits, ids, hidden[:, :6], w, m)
