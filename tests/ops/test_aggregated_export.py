"""The export formulation of aggregated attention (``aggregated_gather``: window slots gathered from the zero-padded
keys/values) against the dense oracle in float64, and the op exported with dynamic H and W."""
import random

import pytest
import torch

from tests._helpers import export_dynamic_hw
from visionattn.ops import aggregated_attention
from visionattn.ops.reference.aggregated import aggregated_attention_reference, aggregated_gather


def _args(seed, h, w, kernel_size, heads=2, dim=5, dim_v=None, n_pool=3, biases=True, weights=True, batch_bias=False,
          dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    b, kk, dim_v = 2, kernel_size * kernel_size, dim_v or dim

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)
    lead = (b,) if batch_bias else ()
    return dict(
        query=rnd(b, h, w, heads, dim), key=rnd(b, h, w, heads, dim), value=rnd(b, h, w, heads, dim_v),
        pool_key=rnd(b, n_pool, heads, dim) if n_pool else None,
        pool_value=rnd(b, n_pool, heads, dim_v) if n_pool else None, kernel_size=kernel_size,
        local_bias=rnd(heads, kk) if biases else None,
        pool_bias=rnd(*lead, h, w, heads, n_pool) if biases and n_pool else None,
        local_weights=rnd(*lead, h, w, heads, kk) if weights else None)


def _sweep(n_cases, seed=0):
    rng = random.Random(seed)
    cases = []
    for i in range(n_cases):
        k = rng.choice((1, 3, 5))
        cases.append(dict(
            seed=i, h=rng.randint(1, 9), w=rng.randint(1, 9), kernel_size=k, heads=rng.randint(1, 3),
            dim=rng.randint(1, 6), dim_v=rng.randint(1, 6), n_pool=rng.choice((0, 1, 4)), biases=rng.random() < 0.7,
            weights=rng.random() < 0.7, batch_bias=rng.random() < 0.5))
    return cases


@pytest.mark.parametrize('case', _sweep(60), ids=lambda c: '{h}x{w}-k{kernel_size}-p{n_pool}-s{seed}'.format(**c))
def test_gather_equals_reference_float64(case):
    args = _args(**case)
    scale = 0.7 if case['seed'] % 2 else 1.
    ref = aggregated_attention_reference(**args, scale=scale)
    out = aggregated_gather(**args, scale=scale)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize('h,w,k', [(7, 7, 3), (3, 11, 5), (2, 2, 5), (6, 1, 3)])
def test_gather_equals_reference_float64_fixed(h, w, k):
    for biases, weights, n_pool in ((True, True, 4), (False, False, 0), (True, False, 1), (False, True, 0)):
        args = _args(h * 100 + w, h, w, k, n_pool=n_pool, biases=biases, weights=weights)
        torch.testing.assert_close(aggregated_gather(**args), aggregated_attention_reference(**args), rtol=0,
                                   atol=1e-10)


class _Agg(torch.nn.Module):
    """Aggregated attention over channels-last input with fixed random projections, on the reference backend."""

    def __init__(self, dim=8, heads=2, kernel_size=3, n_pool=4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.heads, self.k, self.n_pool = heads, kernel_size, n_pool
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.local_bias = torch.nn.Parameter(torch.randn(heads, kernel_size ** 2, generator=g))
        self.lw = torch.nn.Linear(dim, heads * kernel_size ** 2)
        self.pb = torch.nn.Linear(dim, heads * n_pool)
        self.tokens = torch.nn.Parameter(torch.randn(n_pool, dim, generator=g))

    def forward(self, x):
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).reshape(b, h, w, 3, self.heads, -1).unbind(3)
        pooled = x.mean((1, 2)).unsqueeze(1) + self.tokens  # [B, P, C]
        pk, pv = self.qkv(pooled)[..., c:].reshape(b, self.n_pool, 2, self.heads, -1).unbind(2)
        return aggregated_attention(
            q, k, v, pk, pv, kernel_size=self.k, local_bias=self.local_bias,
            pool_bias=self.pb(x).reshape(b, h, w, self.heads, self.n_pool),
            local_weights=self.lw(x).reshape(b, h, w, self.heads, -1), backend='reference')


@pytest.mark.parametrize('onnx', [False, True])
def test_export_dynamic_hw(onnx, tmp_path):
    torch.manual_seed(0)
    m = _Agg(kernel_size=3).eval()
    run = export_dynamic_hw(m, torch.randn(1, 12, 10, 8), min_size=2, onnx_dir=str(tmp_path) if onnx else None)
    for h, w in ((12, 10), (5, 9), (3, 3), (17, 6)):
        x = torch.randn(1, h, w, 8)
        with torch.no_grad():
            torch.testing.assert_close(run(x), m(x), rtol=1e-5, atol=1e-5)
