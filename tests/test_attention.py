"""Contract tests for every registered attention mechanism, against explicit-loop float64 references."""

import math

import pytest
import torch

from lra.attention import ATTENTIONS, attention_options, build_attention, hrr
from lra.attention.common import CosineScale
from lra.attention.hrr_bundled import bundle_readout_fft, bundle_readout_gemm
from lra.attention.hrr_individual import auto_block_rows
from lra.errors import ConfigError

NAMES = sorted(ATTENTIONS)
SCALE, EPS = 2.5, 0.05  # a non-trivial eps, so the reference checks where it enters


# ---------------------------------------------------------------- naive references (python loops, float64)
def conv(a: list, b: list) -> list:
    H = len(a)
    return [sum(a[p] * b[(n - p) % H] for p in range(H)) for n in range(H)]


def invol(a: list) -> list:
    return [a[(-n) % len(a)] for n in range(len(a))]


def dot(a: list, b: list) -> float:
    return sum(x * y for x, y in zip(a, b))


def cos(a: list, b: list, eps: float) -> float:
    return dot(a, b) / (math.sqrt(dot(a, a) + eps**2) * math.sqrt(dot(b, b) + eps**2))


def softmax_sum(scores: list, values: list, keep: list) -> list:
    """Σ_j softmax(scores)_j values_j over the kept j only (what the large negative bias means)."""
    top = max(s for s, m in zip(scores, keep) if m)
    w = [math.exp(s - top) if m else 0.0 for s, m in zip(scores, keep)]
    z = sum(w)
    return [sum(wj * vj[n] for wj, vj in zip(w, values)) / z for n in range(len(values[0]))]


def bundle(k: list, v: list, m: list) -> list:
    H = len(k[0])
    beta = [0.0] * H
    for kj, vj, mj in zip(k, v, m):
        if mj:
            beta = [x + y for x, y in zip(beta, conv(kj, vj))]
    return beta


def ref_softmax(q, k, v, m, s, eps):
    H = len(q[0])
    return [softmax_sum([dot(qi, kj) / math.sqrt(H) for kj in k], v, m) for qi in q]


def ref_hrr_bundled(q, k, v, m, s, eps):
    beta = bundle(k, v, m)
    a = [s * cos(conv(invol(qi), beta), vi, eps) for qi, vi in zip(q, v)]
    top = max(ai for ai, mi in zip(a, m) if mi)
    w = [math.exp(ai - top) if mi else 0.0 for ai, mi in zip(a, m)]
    return [[wi / sum(w) * x for x in vi] for wi, vi in zip(w, v)]


def ref_hrr_individual(q, k, v, m, s, eps):
    return [softmax_sum([s * cos(conv(invol(qi), conv(kj, vj)), vj, eps) for kj, vj in zip(k, v)], v, m)
            for qi in q]


def ref_hrr_quadratic(q, k, v, m, s, eps):
    beta = bundle(k, v, m)
    return [softmax_sum([s * cos(conv(invol(qi), beta), vj, eps) for vj in v], v, m) for qi in q]


def ref_tpr(q, k, v, m, s, eps):
    H = len(q[0])
    phi = lambda x: [xi + 1.0 if xi > 0 else math.exp(xi) for xi in x]  # noqa: E731  elu + 1
    M = [[0.0] * H for _ in range(H)]
    z = [0.0] * H
    for kj, vj, mj in zip(k, v, m):
        if mj:
            pk = phi(kj)
            for a in range(H):
                z[a] += pk[a]
                for b in range(H):
                    M[a][b] += pk[a] * vj[b]  # explicit outer product φ(k_j) v_jᵀ
    out = []
    for qi in q:
        pq = phi(qi)
        out.append([sum(M[a][b] * pq[a] for a in range(H)) / (dot(pq, z) + eps) for b in range(H)])
    return out


REFERENCES = {"softmax": ref_softmax, "hrr-bundled": ref_hrr_bundled, "hrr-individual": ref_hrr_individual,
              "hrr-quadratic": ref_hrr_quadratic, "tpr": ref_tpr}


def reference(name, q, k, v, mask, s, eps) -> torch.Tensor:
    B, h, T, H = q.shape
    out = torch.zeros(B, h, T, H, dtype=torch.float64)
    for b in range(B):
        m = mask[b].tolist()
        for hd in range(h):
            args = (q[b, hd].tolist(), k[b, hd].tolist(), v[b, hd].tolist(), m, s, eps)
            out[b, hd] = torch.tensor(REFERENCES[name](*args), dtype=torch.float64)
    return out


# ---------------------------------------------------------------- helpers
def exact_options(name: str, **extra) -> dict:
    """Options that make the module compute the attention.md formula with s = SCALE and eps = EPS."""
    accepted = attention_options(name)
    opts = {k: v for k, v in (("scale_init", SCALE), ("learn_scale", False), ("eps", EPS)) if k in accepted}
    return {**opts, **extra}


def variants(name: str) -> list[dict]:
    return [{"block_size": 0}, {"block_size": 4}, {}] if name == "hrr-individual" else [{}]


def qkv(B=2, h=2, T=6, H=8, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, H, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3)]


def lengths_mask(lengths, T) -> torch.Tensor:
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


# ---------------------------------------------------------------- registry
def test_registry_has_the_five_names():
    assert NAMES == ["hrr-bundled", "hrr-individual", "hrr-quadratic", "softmax", "tpr"]
    assert set(REFERENCES) == set(ATTENTIONS), "a registered mechanism needs a naive reference here"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        build_attention("performer", 2, 8)
    assert err.value.key == "attention.name"
    assert all(n in str(err.value) for n in NAMES)
    with pytest.raises(ConfigError):
        attention_options("performer")


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_names_the_key(name):
    with pytest.raises(ConfigError) as err:
        build_attention(name, 2, 8, window=3)
    assert err.value.key == "attention.window"
    assert all(opt in str(err.value) for opt in attention_options(name))


@pytest.mark.parametrize("name", NAMES)
def test_options_are_the_constructor_defaults(name):
    opts = attention_options(name)
    assert set(opts) <= {"scale_init", "learn_scale", "eps", "block_size"}
    assert isinstance(build_attention(name, 2, 8, **opts), ATTENTIONS[name])
    for key in {"scale_init", "eps"} & set(opts):
        with pytest.raises(ConfigError) as err:
            build_attention(name, 2, 8, **{key: 0.0})
        assert err.value.key == f"attention.{key}"


def test_scale_defaults_and_clamp():
    assert attention_options("hrr-bundled")["scale_init"] == 1.0  # s = 1 reproduces the Hrrformer
    assert attention_options("hrr-individual")["scale_init"] == 10.0
    assert attention_options("hrr-quadratic")["scale_init"] == 10.0
    scale = CosineScale(3, 10.0, learn_scale=True)
    assert torch.allclose(scale(torch.float32, "cpu").flatten(), torch.full((3,), 10.0))
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert torch.allclose(scale(torch.float32, "cpu").flatten(), torch.full((3,), 100.0))
    fixed = CosineScale(2, 0.3, learn_scale=False)
    assert list(fixed.parameters()) == [] and fixed(torch.float64, "cpu").flatten().tolist() == [0.3, 0.3]


# ---------------------------------------------------------------- HRR primitives
@pytest.mark.parametrize("H", [7, 8])
def test_hrr_primitives_match_index_arithmetic(H):
    a, b, c = torch.randn(3, H, dtype=torch.float64).unbind(0)
    assert torch.allclose(hrr.bind(a, b), torch.tensor(conv(a.tolist(), b.tolist()), dtype=torch.float64))
    assert hrr.involution(a).tolist() == invol(a.tolist())
    assert torch.allclose(torch.fft.rfft(hrr.involution(a)), torch.fft.rfft(a).conj())
    assert torch.allclose(hrr.unbind(a, c), hrr.bind(hrr.involution(a), c))
    w = hrr.parseval_weights(H, torch.float64)
    A, B = torch.fft.rfft(a), torch.fft.rfft(b)
    assert torch.allclose((w * (A * B.conj()).real).sum() / H, a @ b)


@pytest.mark.parametrize("H", [7, 8])
def test_unbinding_is_dot_product_plus_crosstalk(H):
    """q† ⊛ (k ⊛ v) = Σ_m c[m] roll(v, m) with c = q† ⊛ k and c[0] = q·k: (q·k) v + crosstalk, exactly."""
    q, k, v = torch.randn(3, H, dtype=torch.float64).unbind(0)
    c = hrr.unbind(q, k)
    assert torch.allclose(c[0], q @ k)
    crosstalk = sum(c[m] * torch.roll(v, m) for m in range(1, H))
    assert torch.allclose(hrr.unbind(q, hrr.bind(k, v)), (q @ k) * v + crosstalk)


def test_unbinding_recovers_the_value_for_large_H():
    g = torch.Generator().manual_seed(0)
    H = 2048
    k, v, other_k, other_v = (torch.randn(H, generator=g, dtype=torch.float64) / math.sqrt(H) for _ in range(4))
    memory = hrr.bind(k, v) + hrr.bind(other_k, other_v)
    out = hrr.unbind(k, memory)
    assert torch.nn.functional.cosine_similarity(out, v, dim=0) > 0.5
    assert abs(torch.nn.functional.cosine_similarity(out, other_v, dim=0)) < 0.15


@pytest.mark.parametrize("H", [7, 8])
def test_bundled_gemm_readout_equals_fft_readout(H):
    q, k, v = qkv(T=9, H=H)
    mask = lengths_mask([9, 5], 9)
    assert torch.allclose(bundle_readout_gemm(q, k, v, mask), bundle_readout_fft(q, k, v, mask), atol=1e-12)


# ---------------------------------------------------------------- naive references
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("H", [8, 7])
@pytest.mark.parametrize("name", NAMES)
def test_matches_naive_reference(name, H, dtype):
    q, k, v = qkv(T=6, H=H)
    mask = lengths_mask([6, 4], 6)
    q[1, :, 4:] = k[1, :, 4:] = v[1, :, 4:] = 7.0  # padding content must not matter
    expected = reference(name, q, k, v, mask, SCALE, EPS)
    real = mask[:, None, :, None].expand_as(expected)
    for opts in variants(name):
        y = build_attention(name, 2, H, **exact_options(name, **opts))(q.to(dtype), k.to(dtype), v.to(dtype), mask)
        assert y.dtype == dtype and y.shape == v.shape
        tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
        err = (y.double() - expected)[real].abs().max()
        assert torch.allclose(y.double()[real], expected[real], **tol), (opts, err)


# ---------------------------------------------------------------- contract
@pytest.mark.parametrize("name", NAMES)
def test_padding_invariance(name):
    B, h, T, H, extra = 3, 2, 7, 8, 5
    q, k, v = qkv(B, h, T, H, dtype=torch.float32)
    mask = lengths_mask([7, 4, 1], T)
    for opts in variants(name):
        attn = build_attention(name, h, H, **opts)
        y = attn(q, k, v, mask)
        pad = [torch.randn(B, h, extra, H) * 10 for _ in range(3)]
        qp, kp, vp = (torch.cat([x, p], dim=2) for x, p in zip((q, k, v), pad))
        yp = attn(qp, kp, vp, torch.cat([mask, torch.zeros(B, extra, dtype=torch.bool)], dim=1))
        real = mask[:, None, :, None].expand_as(y)
        assert torch.allclose(yp[..., :T, :][real], y[real], atol=1e-5), opts
        # arbitrary content inside the existing padding does not matter either
        q2, k2, v2 = (torch.where(mask[:, None, :, None], x, torch.randn_like(x) * 10) for x in (q, k, v))
        assert torch.allclose(attn(q2, k2, v2, mask)[real], y[real], atol=1e-5), opts


@pytest.mark.parametrize("name", NAMES)
def test_permutation_equivariance(name):
    B, h, T, H = 2, 2, 11, 7
    q, k, v = qkv(B, h, T, H, dtype=torch.float32)
    mask = lengths_mask([11, 6], T)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(1))
    attn = build_attention(name, h, H)
    y, yp = attn(q, k, v, mask), attn(q[:, :, perm], k[:, :, perm], v[:, :, perm], mask[:, perm])
    real = mask[:, perm][:, None, :, None].expand_as(yp)
    assert torch.allclose(yp[real], y[:, :, perm][real], atol=1e-5)


def degenerate_cases():
    T = 5
    zeros = [torch.zeros(2, 2, T, 8) for _ in range(3)]
    rand = qkv(2, 2, T, 8, dtype=torch.float32)
    return {
        "all-zero inputs": (zeros, torch.ones(2, T, dtype=torch.bool)),
        "all-zero padded": (zeros, lengths_mask([5, 2], T)),
        "single real token": (rand, lengths_mask([1, 1], T)),
        "fully padded row": (rand, lengths_mask([3, 0], T)),
        "huge inputs": ([x * 1e4 for x in rand], lengths_mask([5, 3], T)),
    }


@pytest.mark.parametrize("case", list(degenerate_cases()))
@pytest.mark.parametrize("name", NAMES)
def test_finite_outputs_and_grads(name, case):
    (q, k, v), mask = degenerate_cases()[case]
    for opts in variants(name):
        attn = build_attention(name, 2, 8, **opts)
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        y = attn(*leaves, mask)
        assert torch.isfinite(y).all(), opts
        y.square().sum().backward()
        for t in [*leaves, *attn.parameters()]:
            assert t.grad is not None and torch.isfinite(t.grad).all(), opts


@pytest.mark.parametrize("name", NAMES)
def test_single_real_token_reads_its_own_value(name):
    """With one real token every mechanism can only return a multiple of that token's value."""
    q, k, v = qkv(1, 2, 4, 8, dtype=torch.float32)
    y = build_attention(name, 2, 8)(q, k, v, lengths_mask([1], 4))
    cos_sim = torch.nn.functional.cosine_similarity(y[0, :, 0], v[0, :, 0], dim=-1)
    assert torch.allclose(cos_sim.abs(), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter_and_input(name):
    q, k, v = qkv(2, 2, 6, 8, dtype=torch.float32, grad=True)
    attn = build_attention(name, 2, 8)
    attn(q, k, v, lengths_mask([6, 3], 6)).square().sum().backward()
    for t in [q, k, v, *attn.parameters()]:
        assert t.grad is not None and t.grad.abs().sum() > 0
    expected = {"hrr-bundled", "hrr-individual", "hrr-quadratic"}
    assert (len(list(attn.parameters())) == 1) == (name in expected)  # the per-head scale


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_under_autocast(name):
    q, k, v = qkv(2, 2, 6, 8, dtype=torch.float32)
    mask = lengths_mask([6, 3], 6)
    attn = build_attention(name, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert y.dtype == torch.bfloat16
    real = mask[:, None, :, None].expand_as(y)
    ref = attn(*(x.bfloat16().float() for x in (q, k, v)), mask)
    assert torch.allclose(y.float()[real], ref[real], atol=3e-2, rtol=3e-2)


# ---------------------------------------------------------------- hrr-individual: blocked == plain
@pytest.mark.parametrize("lengths", [[37, 20], [37, 37], [1, 0]])  # padded keys, none, a fully padded row
@pytest.mark.parametrize("H", [8, 7])
def test_individual_blocked_matches_plain_values_and_grads(H, lengths):
    B, h, T = 2, 3, 37
    mask = lengths_mask(lengths, T)
    results = []
    for block_size in (0, 8, 64, None):
        torch.manual_seed(0)
        attn = build_attention("hrr-individual", h, H, block_size=block_size)
        q, k, v = qkv(B, h, T, H, dtype=torch.float64, grad=True)
        y = attn(q, k, v, mask)
        (y * torch.linspace(-1, 1, H, dtype=torch.float64)).sum().backward()
        results.append([y, q.grad, k.grad, v.grad, attn.scale.log_scale.grad])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_individual_blocked_matches_plain_in_float32():
    B, h, T, H = 2, 4, 300, 64  # several blocks of 64 rows and a short last one, at the benchmark's head size
    mask = lengths_mask([300, 213], T)
    results = []
    for block_size in (0, 64):
        torch.manual_seed(0)
        attn = build_attention("hrr-individual", h, H, block_size=block_size)
        q, k, v = qkv(B, h, T, H, dtype=torch.float32, grad=True)
        y = attn(q, k, v, mask)
        (y * torch.linspace(-1, 1, H)).sum().backward()
        results.append([y, q.grad, k.grad, v.grad, attn.scale.log_scale.grad])
    for plain, blocked in zip(*results):
        assert torch.allclose(blocked, plain, rtol=1e-4, atol=1e-5 * plain.abs().max().item())


def test_individual_blocked_memory_grows_linearly_in_length():
    """Allocator-level peak of fwd+bwd (deterministic, not a timing): doubling T doubles the blocked form's
    peak and about quadruples the plain form's."""
    from lra.run.memory import peak_memory

    def peak(T: int, block_size: int) -> int:
        torch.manual_seed(0)
        attn = build_attention("hrr-individual", 2, 16, block_size=block_size)
        q, k, v = qkv(1, 2, T, 16, dtype=torch.float32, grad=True)
        mask, grad = lengths_mask([T], T), torch.randn(1, 2, T, 16)
        return peak_memory(lambda: attn(q, k, v, mask).backward(grad), torch.device("cpu")).bytes

    blocked = peak(2048, 32) / peak(1024, 32)
    plain = peak(2048, 0) / peak(1024, 0)
    assert blocked < 2.3 and plain > 3.5, (blocked, plain)


def test_individual_block_size_option():
    assert attention_options("hrr-individual")["block_size"] is None  # auto
    assert auto_block_rows(1, 8, 4096) == 64 and auto_block_rows(1, 8, 1024) == 256
    assert auto_block_rows(1, 8, 256) == 256
    assert auto_block_rows(64, 8, 4096) == 16 and auto_block_rows(1, 1, 7) == 7
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError) as err:
            build_attention("hrr-individual", 2, 8, block_size=bad)
        assert err.value.key == "attention.block_size"


def test_individual_blocked_gradcheck():
    q, k, v = qkv(1, 2, 5, 7, dtype=torch.float64, grad=True)
    attn = build_attention("hrr-individual", 2, 7, block_size=2, eps=EPS).double()
    mask = lengths_mask([4], 5)
    assert torch.autograd.gradcheck(lambda q, k, v: attn(q, k, v, mask), (q, k, v), fast_mode=True)
