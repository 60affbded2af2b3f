"""Fused top-k/top-p sampling op (detox_kernels.sample_top_k_top_p) on every available backend
against the float64 reference, token for token on the same uniforms; the CUDA kernel through its
CPU emulation; the reference against HuggingFace's warpers; and the distribution of the op against
HuggingFace's warpers + torch.multinomial."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from detox_kernels import sample_top_k_top_p
from detox_kernels.ops import sampling as sampling_module
from detox_kernels.reference import sample_top_k_top_p_reference, warped_scores_reference

from backends import available_backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = available_backends(sampling_module)
GPU = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and not GPU
DEVICE = {"cuda": "cuda", "triton": "cuda" if GPU else "cpu", "cpu": "cpu"}
NINF = float("-inf")

# (V, B, top_k, top_p, temperature): odd small V, SmolLM2's 49,152, Qwen's 151,936; top_k 1, V-1,
# V, > V, 0; top_p tiny, 0.9, 1.0; temperature != 1.
CASES = [
    (37, 7, 0, 1.0, 1.0), (37, 7, 1, 1.0, 1.0), (37, 7, 36, 0.9, 0.7), (37, 7, 37, 1.0, 1.3),
    (37, 7, 50, 0.9, 1.0), (37, 64, 5, 1e-6, 1.0), (37, 64, 0, 0.9, 1.0), (37, 1, 3, 0.9, 2.0),
    (49152, 1, 0, 0.9, 1.0), (49152, 7, 50, 0.9, 0.7), (49152, 64, 0, 1.0, 1.0), (49152, 64, 49151, 0.9, 1.0),
    (49152, 7, 1, 1.0, 1.0), (49152, 7, 0, 1e-6, 1.3), (49152, 7, 49152, 0.95, 1.0),
    (151936, 1, 0, 1.0, 1.0), (151936, 7, 40, 0.95, 0.8), (151936, 64, 0, 0.9, 1.0),
]


def _small(v, b):
    """Cases the CUDA emulation runs here (every thread a fiber: slow at B = 64)."""
    return v <= 37 or (v <= 49152 and b <= 7)


def _tiny(v, b):
    """Cases Triton's CPU interpreter runs here (slow: a Python loop per program and tile)."""
    return (v <= 37 and b <= 7) or (v == 49152 and b == 1)


def make_logits(b: int, v: int, seed: int) -> torch.Tensor:
    """Rows of five kinds: spread normal scores, scores with ~30% -inf, small integers (ties
    everywhere, so at the k-th value and at the top-p cut-off), entirely -inf, peaked scores."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, v, generator=g) * 3
    for r in range(b):
        kind = r % 5 if b > 1 else 0
        if kind == 1:
            x[r, torch.rand(v, generator=g) < 0.3] = NINF
        elif kind == 2:
            x[r] = torch.randint(0, 6, (v,), generator=g).float()
        elif kind == 3:
            x[r] = NINF
        elif kind == 4:
            x[r] *= 4
    return x


# ---------------------------------------------------------------- the CUDA kernel, emulated on the CPU


@pytest.fixture(scope="module")
def emu_binary(tmp_path_factory):
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no host C++ compiler for the CUDA emulation")
    exe = str(tmp_path_factory.mktemp("emu") / "sampling_emu_test")
    subprocess.run(["bash", os.path.join(ROOT, "csrc/cuda/emu/run_sampling_emu_test.sh"), "--build-only", exe],
                   check=True)
    return exe


def run_emulated(exe, logits, uniform, top_k, top_p, temperature, tmp_path):
    b, v = logits.shape
    code = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}[logits.dtype]
    raw = logits.contiguous().view(torch.int16 if code else torch.int32).numpy().tobytes()
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    inp.write_bytes(struct.pack("<4q2d", b, v, top_k if 0 < top_k < v else 0, code, top_p, temperature) + raw
                    + uniform.to(torch.float32).numpy().tobytes())
    subprocess.run([exe, str(inp), str(out)], check=True)
    return torch.from_numpy(np.frombuffer(out.read_bytes(), dtype=np.int64).copy())


def run(backend, logits, uniform, top_k, top_p, temperature, emu=None, tmp_path=None):
    if backend == "emu":
        return run_emulated(emu, logits, uniform, top_k, top_p, temperature, tmp_path)
    dev = DEVICE[backend]
    return sample_top_k_top_p(logits.to(dev), uniform.to(dev), top_k=top_k, top_p=top_p, temperature=temperature,
                              backend=backend).cpu()


# ---------------------------------------------------------------- the check


U_TOL = 2e-5  # float32 rounding of a cumulative sum over up to 151,936 terms, as a fraction of the total
P_TOL = 2e-5


def check_tokens(got, logits, uniform, top_k, top_p, temperature, max_fragile=None):
    """``got`` equals the reference token for token, except in rows where the uniform or the top-p
    cut-off lies within float32 rounding of a boundary: there ``got`` must be the reference's token
    for a uniform and top_p moved by at most that rounding. At most ``max_fragile`` rows (default
    2, or 3% of the rows) may be such exceptions, so the check cannot pass by tolerance alone."""
    want = sample_top_k_top_p_reference(logits, uniform, top_k=top_k, top_p=top_p, temperature=temperature)
    assert got.dtype == torch.int64 and got.shape == want.shape
    bad = (got != want).nonzero().flatten().tolist()
    limit = max_fragile if max_fragile is not None else max(2, int(0.03 * len(want)))
    assert len(bad) <= limit, f"{len(bad)} rows differ from the reference: {bad[:10]}"
    for r in bad:
        allowed = set()
        for du in (-U_TOL, 0.0, U_TOL):
            for dp in ((-P_TOL, 0.0, P_TOL) if top_p < 1.0 else (0.0,)):
                u = torch.clamp(uniform[r:r + 1].double() + du, 0.0, 1.0 - 1e-12).float()
                p = min(1.0, max(0.0, top_p + dp))
                allowed.add(int(sample_top_k_top_p_reference(logits[r:r + 1], u, top_k=top_k, top_p=p,
                                                             temperature=temperature)[0]))
        assert int(got[r]) in allowed, (f"row {r}: got token {int(got[r])}, reference {int(want[r])}; within "
                                        f"rounding of a boundary only {sorted(allowed)}")
    return want


def _backends_for(v, b):
    names = [n for n in BACKENDS if not (n == "triton" and INTERPRETED and not _tiny(v, b))]
    return names + (["emu"] if _small(v, b) else [])


@pytest.mark.parametrize("v,b,top_k,top_p,temperature", CASES,
                         ids=[f"V{c[0]}-B{c[1]}-k{c[2]}-p{c[3]}-t{c[4]}" for c in CASES])
def test_backends_match_reference(v, b, top_k, top_p, temperature, request, tmp_path):
    logits = make_logits(b, v, seed=v + 31 * b + top_k)
    uniform = torch.rand(b, generator=torch.Generator().manual_seed(b + v))
    want = sample_top_k_top_p_reference(logits, uniform, top_k=top_k, top_p=top_p, temperature=temperature)
    if b >= 5:  # the all -inf rows (kind 3) give token 0
        assert all(int(want[r]) == 0 for r in range(3, b, 5))
    names = _backends_for(v, b)
    assert names, "no backend to test"
    for name in names:
        emu = request.getfixturevalue("emu_binary") if name == "emu" else None
        got = run(name, logits, uniform, top_k, top_p, temperature, emu, tmp_path)
        check_tokens(got, logits, uniform, top_k, top_p, temperature)
        if b >= 5:
            assert all(int(got[r]) == 0 for r in range(3, b, 5)), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype, request, tmp_path):
    logits = make_logits(7, 1001, seed=5).to(dtype)
    uniform = torch.rand(7, generator=torch.Generator().manual_seed(3))
    for name in BACKENDS + ["emu"]:
        emu = request.getfixturevalue("emu_binary") if name == "emu" else None
        got = run(name, logits, uniform, 20, 0.9, 0.8, emu, tmp_path)
        check_tokens(got, logits, uniform, 20, 0.9, 0.8)


def _every_backend():
    return ["reference"] + BACKENDS + ["emu"]


def _run_all(logits, uniform, top_k, top_p, temperature, request, tmp_path):
    out = {}
    for name in _every_backend():
        if name == "reference":
            out[name] = sample_top_k_top_p(logits, uniform, top_k=top_k, top_p=top_p, temperature=temperature,
                                           backend="reference")
        else:
            emu = request.getfixturevalue("emu_binary") if name == "emu" else None
            out[name] = run(name, logits, uniform, top_k, top_p, temperature, emu, tmp_path)
    return out


def test_ties_at_the_kth_value_are_all_kept(request, tmp_path):
    # top_k = 2: the 2nd largest value is 3, held by ids 0, 2 and 3, so all three are kept (HF)
    row = torch.tensor([3.0, 1.0, 3.0, 3.0, 0.0, 2.0, NINF])
    n = 12
    logits = row.expand(n, -1).contiguous()
    uniform = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    for name, got in _run_all(logits, uniform, 2, 1.0, 1.0, request, tmp_path).items():
        # equal probabilities: in id order each takes a third of [0, 1)
        assert got.tolist() == [0] * 4 + [2] * 4 + [3] * 4, name


def test_ties_at_the_top_p_cut_off_rank_by_id(request, tmp_path):
    # ten equal scores: top_p = 0.25 keeps the tokens whose mass above is < 0.25, i.e. 3 of them,
    # the three lowest ids among the ties (here ids 1, 4, 5; id 0 is -inf)
    row = torch.full((13,), 2.0)
    row[[0, 2, 3]] = NINF
    n = 9
    logits = row.expand(n, -1).contiguous()
    uniform = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    for name, got in _run_all(logits, uniform, 0, 0.25, 1.0, request, tmp_path).items():
        assert got.tolist() == [1] * 3 + [4] * 3 + [5] * 3, name
    # a higher score above the ties: mass above the first tie is 0.5 < 0.6, the next tie 0.5 + 1/(2*10)...
    row2 = torch.tensor([0.0] * 10 + [float(np.log(10.0))])  # id 10 holds half the mass
    n = 14
    logits = row2.expand(n, -1).contiguous()
    uniform = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    for name, got in _run_all(logits, uniform, 0, 0.62, 1.0, request, tmp_path).items():
        # kept: id 10 (mass above 0), ties 0, 1, 2 (mass above 0.5, 0.55, 0.60 < 0.62), not 3 (0.65)
        assert set(got.tolist()) == {0, 1, 2, 10}, name


def test_edge_rows(request, tmp_path):
    logits = torch.full((4, 9), NINF)
    logits[1, 6] = -3.0  # one finite score
    logits[2, [2, 7]] = 1.0
    logits[3] = torch.nan
    logits[3, 8] = 0.0  # NaN counts as -inf
    uniform = torch.tensor([0.3, 0.99, 0.999, 0.0])
    for top_k, top_p in ((0, 1.0), (1, 1.0), (3, 0.5), (0, 1e-6)):
        for name, got in _run_all(logits, uniform, top_k, top_p, 0.5, request, tmp_path).items():
            assert got[0] == 0 and got[1] == 6 and got[3] == 8, (name, top_k, top_p, got)
            # ids 2 and 7 tie (top-k keeps both); top-p 0.5 keeps only the lower id
            assert int(got[2]) == (7 if top_p == 1.0 else 2), (name, top_k, top_p, got)


# ---------------------------------------------------------------- HuggingFace semantics


def hf_warp(logits, top_k, top_p, temperature):
    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    return procs(torch.zeros(logits.shape[0], 1, dtype=torch.long), logits.clone())


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 0.9, 1.0), (40, 1.0, 0.7), (40, 0.8, 1.3), (1, 0.5, 1.0),
                                                     (0, 1e-6, 1.0)])
def test_reference_keeps_what_hf_keeps(top_k, top_p, temperature):
    logits = torch.randn(16, 3001, generator=torch.Generator().manual_seed(top_k)) * 2
    logits[:4, ::3] = NINF
    logits[4:8] = torch.randint(0, 9, (4, 3001), generator=torch.Generator().manual_seed(1)).float()  # k-th ties
    ours = torch.isfinite(warped_scores_reference(logits, top_k=top_k, top_p=top_p, temperature=temperature))
    hf = torch.isfinite(hf_warp(logits, top_k, top_p, temperature))
    rows = slice(None) if top_p >= 1.0 else [0, 1, 2, 3] + list(range(8, 16))  # HF orders ties arbitrarily
    assert torch.equal(ours[rows], hf[rows])


def test_distribution_matches_hf_multinomial():
    """Many draws of the op (uniforms from a torch.Generator) against HF's warpers followed by
    torch.multinomial. The scores put most of the mass on ties at the k-th value, so a top-k that
    dropped them (or a top-p on the wrong side of its cut-off) is far outside the threshold."""
    row = torch.tensor([2.0, 1.0, 1.0, 1.0, 0.5, 0.0, -1.0, NINF, 1.0, -2.0, 0.2])
    top_k, top_p, temperature, n = 2, 0.93, 0.8, 40000
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(n, generator=g)
    logits = row.expand(n, -1).contiguous()
    ours = torch.bincount(sample_top_k_top_p(logits, uniform, top_k=top_k, top_p=top_p, temperature=temperature),
                          minlength=row.numel()).double() / n
    probs = torch.softmax(hf_warp(row[None], top_k, top_p, temperature), -1)[0].double()
    hf = torch.bincount(torch.multinomial(probs.float(), n, replacement=True, generator=g),
                        minlength=row.numel()).double() / n
    tv = 0.5 * (ours - hf).abs().sum().item()
    assert tv < 0.02, f"total variation {tv:.4f} between the op and HF + multinomial"
    assert 0.5 * (ours - probs).abs().sum().item() < 0.015
    # the test has power: dropping the ties at the k-th value (keeping ids 0 and one 1.0) is far off
    wrong = torch.zeros_like(probs)
    wrong[[0, 1]] = torch.softmax(row[[0, 1]] / temperature, -1).double()
    assert 0.5 * (ours - wrong).abs().sum().item() > 0.2
    # chi-square of the op's counts against HF's probabilities over the kept tokens
    kept = probs > 0
    chi2 = (((ours[kept] - probs[kept]) ** 2) / probs[kept]).sum().item() * n
    assert chi2 < 30.0, chi2  # df = kept - 1 = 4; p(chi2 > 30) < 1e-5


# ---------------------------------------------------------------- op plumbing


def test_bad_arguments():
    x = torch.randn(2, 5)
    u = torch.rand(2)
    for kwargs in ({"top_p": 1.5}, {"top_p": -0.1}, {"temperature": 0.0}, {"temperature": float("nan")},
                   {"top_k": -1}, {"top_k": 2.5}):
        with pytest.raises(ValueError):
            sample_top_k_top_p(x, u, **kwargs)
    with pytest.raises(ValueError):
        sample_top_k_top_p(x, torch.rand(3))
    with pytest.raises(ValueError):
        sample_top_k_top_p(x[0], u[:1])
    with pytest.raises(ValueError):
        sample_top_k_top_p(x.long(), u)


def test_out_and_strided_logits():
    x = torch.randn(6, 40)[:, ::2]  # non-contiguous rows
    u = torch.rand(6)
    out = torch.empty(6, dtype=torch.int64)
    r = sample_top_k_top_p(x, u, top_k=5, top_p=0.9, out=out)
    assert r is out
    assert torch.equal(out, sample_top_k_top_p_reference(x, u, top_k=5, top_p=0.9))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="compiled CPU kernels not built")
def test_fake_implementation_and_opcheck():
    x = torch.randn(3, 50)
    u = torch.rand(3)
    out = torch.empty(3, dtype=torch.int64)
    torch.library.opcheck(torch.ops.detox.sample_top_k_top_p.default, (x, u, out, 5, 0.9, 1.0),
                          test_utils=("test_schema", "test_faketensor"))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fx, fu = torch.empty(4, 7), torch.empty(4)
        r = sample_top_k_top_p(fx, fu, top_k=3, top_p=0.5, backend="cpu")
        assert r.shape == (4,) and r.dtype == torch.int64


@pytest.mark.skipif("cpu" not in BACKENDS, reason="compiled CPU kernels not built")
def test_torch_compile_fullgraph_traces_the_op():
    x = torch.randn(5, 300)
    u = torch.rand(5)

    def step(logits, uniform):
        return sample_top_k_top_p(logits, uniform, top_k=20, top_p=0.9, temperature=0.7, backend="cpu")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, u), step(x, u))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="compiled CPU kernels not built")
def test_cpu_rows_split_over_threads():
    # fewer rows than threads and V >= 16,384: the C++ kernel splits each row's passes into chunks
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        for b, top_k, top_p in ((1, 0, 0.9), (3, 50, 1.0), (2, 0, 1.0), (3, 7, 1e-6)):
            logits = make_logits(b, 49152, seed=b + top_k)
            uniform = torch.rand(b, generator=torch.Generator().manual_seed(b))
            got = sample_top_k_top_p(logits, uniform, top_k=top_k, top_p=top_p, temperature=0.9, backend="cpu")
            check_tokens(got, logits, uniform, top_k, top_p, 0.9)
    finally:
        torch.set_num_threads(before)
