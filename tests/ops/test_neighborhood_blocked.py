"""GNA blocked backend, custom op, dispatch and argument checks against the reference oracle."""
import random

import pytest
import torch

from tests._helpers import gna_inputs
from visionattn.ops import na1d, na2d, na3d, neighborhood_attention
from visionattn.ops._dispatch import get_backend
from visionattn.ops.blocked.neighborhood import _gna_blocked_op, gna_blocked
from visionattn.ops.cpu import _ext as cpu_ext
from visionattn.ops.reference import gna_reference


def _config(rng, n, kmax=5, dmax=2, extra=4):
    ks, st, dil, causal, shape = [], [], [], [], []
    for _ in range(n):
        k = rng.randint(1, kmax)
        d = rng.randint(1, dmax)
        ks.append(k)
        dil.append(d)
        st.append(rng.randint(1, k))
        causal.append(rng.random() < 0.3)
        shape.append(rng.randint(k * d, k * d + extra))
    return tuple(shape), tuple(ks), tuple(st), tuple(dil), tuple(causal)


def _inputs(shape, ks, dtype, b=2, heads=2, dim=8, dim_v=8, rpb=True, n_extra=0, seed=0):
    return gna_inputs(shape, ks, dtype, batch=b, heads=heads, dim=dim, dim_v=dim_v, rpb=rpb, n_extra=n_extra, seed=seed)


@pytest.mark.parametrize('na_dim', [1, 2, 3])
def test_blocked_matches_reference_random_fp64(na_dim):
    rng = random.Random(10 + na_dim)
    for i in range(12 if na_dim < 3 else 6):
        shape, ks, st, dil, causal = _config(rng, na_dim, **({'kmax': 3, 'extra': 2} if na_dim == 3 else {}))
        q, k, v, rpb, ak, av = _inputs(shape, ks, torch.float64, rpb=i % 2 == 0, n_extra=3 * (i % 3 == 1), seed=i)
        tile = None if i % 2 else tuple(rng.randint(1, 5) for _ in range(na_dim))  # odd tiles stress the geometry
        ref = gna_reference(q, k, v, ks, st, dil, causal, rpb, 0.4, ak, av)
        out = gna_blocked(q, k, v, ks, st, dil, causal, rpb, 0.4, ak, av, tile_shape=tile)
        err = (out - ref).abs().max().item()
        assert err < 1e-10, (shape, ks, st, dil, causal, tile, err)


@pytest.mark.parametrize('shape,ks,st,dil,causal', [
    ((21,), (4,), (3,), (2,), (False,)),
    ((10,), (4,), (4,), (1,), (False,)),
    ((11, 9), (3, 4), (1, 2), (2, 1), (False, False)),
    ((12, 10), (5, 5), (5, 5), (1, 1), (False, False)),
    ((9, 9), (3, 3), (2, 1), (1, 3), (True, False)),
    ((5, 6, 7), (2, 3, 3), (2, 1, 3), (1, 2, 1), (False, True, False)),
])
@pytest.mark.parametrize('extra', [0, 2])
def test_blocked_fp32_and_gradients(shape, ks, st, dil, causal, extra):
    q, k, v, rpb, ak, av = _inputs(shape, ks, torch.float32, dim_v=5, n_extra=extra)
    torch.testing.assert_close(
        gna_blocked(q, k, v, ks, st, dil, causal, rpb, None, ak, av),
        gna_reference(q, k, v, ks, st, dil, causal, rpb, None, ak, av), atol=1e-4, rtol=0)
    # gradients in float64, every input
    xs = [x.double().requires_grad_(True) if x is not None else None for x in (q, k, v, rpb, ak, av)]
    grad = torch.randn(q.shape[:-1] + (5,), dtype=torch.float64)
    present = [x for x in xs if x is not None]
    ref = torch.autograd.grad(gna_reference(*xs[:3], ks, st, dil, causal, xs[3], None, *xs[4:]), present, grad)
    got = torch.autograd.grad(gna_blocked(*xs[:3], ks, st, dil, causal, xs[3], None, *xs[4:]), present, grad)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_blocked_low_precision_error_bound(dtype):
    # FlashAttention's rule: error vs fp64 at most 2x the reference's own error in the same precision (+ slack)
    shape, ks, st, dil, causal = (12, 11), (5, 4), (2, 1), (1, 2), (False, False)
    q, k, v, rpb, ak, av = _inputs(shape, ks, torch.float64, n_extra=2)
    exact = gna_reference(q, k, v, ks, st, dil, causal, rpb, None, ak, av)
    low = [x.to(dtype) for x in (q, k, v, rpb, ak, av)]
    ref_err = (gna_reference(*low[:3], ks, st, dil, causal, low[3], None, *low[4:]).double() - exact).abs().max()
    err = (gna_blocked(*low[:3], ks, st, dil, causal, low[3], None, *low[4:]).double() - exact).abs().max()
    assert err <= 2 * ref_err + 1e-3, (err, ref_err)


def test_public_api_and_dispatch():
    q, k, v, rpb, ak, av = _inputs((9, 8), (3, 3), torch.float32, n_extra=2)
    ref = na2d(q, k, v, 3, stride=(1, 2), dilation=(2, 1), rpb=rpb, additional_keys=ak, additional_values=av,
               backend='reference')
    out = na2d(q, k, v, 3, stride=(1, 2), dilation=(2, 1), rpb=rpb, additional_keys=ak, additional_values=av)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    call = {'query': q, 'value': v, 'rpb': rpb}
    fast = '_cpu_backend' if cpu_ext.load() else 'gna_blocked_backend'  # the fused CPU kernels, where built
    assert get_backend('gna', 'auto', **call).__name__ == fast
    q1, k1, v1, _, _, _ = _inputs((9,), (3,), torch.float32, rpb=False)
    torch.testing.assert_close(na1d(q1, k1, v1, 4, is_causal=True), neighborhood_attention(
        q1, k1, v1, (4,), is_causal=(True,), backend='reference'), atol=1e-5, rtol=0)
    q3, k3, v3, _, _, _ = _inputs((4, 5, 4), (2, 2, 2), torch.float32, rpb=False)
    torch.testing.assert_close(na3d(q3, k3, v3, 2, stride=2), na3d(q3, k3, v3, 2, stride=2, backend='reference'),
                               atol=1e-5, rtol=0)


def test_argument_errors():
    q, k, v, rpb, _, _ = _inputs((6, 7), (3, 3), torch.float32)
    with pytest.raises(ValueError, match=r'axis 1: input size 7 .* 4 \* 2 = 8'):
        na2d(q, k, v, (3, 4), dilation=2)
    with pytest.raises(ValueError, match='stride 4 must not exceed kernel_size 3'):
        na2d(q, k, v, 3, stride=4)
    with pytest.raises(ValueError, match='rpb must have shape'):
        na2d(q, k, v, 3, rpb=rpb[:, :3])
    with pytest.raises(ValueError, match='5-D'):
        na2d(q[0], k[0], v[0], 3)
    with pytest.raises(ValueError, match='2 entries'):
        na2d(q, k, v, (3, 3, 3))
    with pytest.raises(ValueError, match='key shape'):
        na2d(q, k[:, :5], v, 3)
    with pytest.raises(ValueError, match='together'):
        na2d(q, k, v, 3, additional_keys=q[:, 0])
    with pytest.raises(ValueError, match='additional_keys must have shape'):
        na2d(q, k, v, 3, additional_keys=q[:, 0, :2, :1], additional_values=v[:, 0, :2, :1])


def test_custom_op_forward_backward():
    shape, ks, st, dil, causal = (7, 6), (3, 2), (2, 1), (2, 1), (False, True)
    q, k, v, rpb, ak, av = _inputs(shape, ks, torch.float64, n_extra=2)
    xs = [x.requires_grad_(True) for x in (q, k, v, rpb, ak, av)]
    grad = torch.randn(q.shape, dtype=torch.float64)
    ref_out = gna_reference(*xs[:3], ks, st, dil, causal, xs[3], 0.5, *xs[4:])
    ref = torch.autograd.grad(ref_out, xs, grad)
    out = _gna_blocked_op(*xs[:3], list(ks), list(st), list(dil), list(causal), xs[3], 0.5, *xs[4:])
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    for a, b in zip(torch.autograd.grad(out, xs, grad), ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # without the optional tensors
    out = _gna_blocked_op(*xs[:3], list(ks), list(st), list(dil), list(causal), None, 0.5, None, None)
    ref_out = gna_reference(*xs[:3], ks, st, dil, causal, None, 0.5)
    for a, b in zip(torch.autograd.grad(out, xs[:3], grad), torch.autograd.grad(ref_out, xs[:3], grad)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_opcheck():
    shape, ks = (6, 5), (3, 2)
    q, k, v, rpb, ak, av = _inputs(shape, ks, torch.float64, n_extra=2)
    args = (q.requires_grad_(), k, v, [3, 2], [1, 2], [1, 1], [False, False], rpb.requires_grad_(), 0.3, ak, av)
    torch.library.opcheck(_gna_blocked_op, args)


def test_torch_compile_fullgraph():
    shape, ks = (7, 6), (3, 4)
    q, k, v, rpb, ak, av = _inputs(shape, ks, torch.float32, n_extra=2)
    rpb.requires_grad_(True)
    q.requires_grad_(True)

    def f(q, k, v, rpb, ak, av):
        return na2d(q, k, v, ks, stride=(2, 1), dilation=(2, 1), rpb=rpb, additional_keys=ak, additional_values=av)

    compiled = torch.compile(f, fullgraph=True, backend='aot_eager')
    out = compiled(q, k, v, rpb, ak, av)
    ref = f(q, k, v, rpb, ak, av)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    g1 = torch.autograd.grad(out.square().sum(), (q, rpb))
    g2 = torch.autograd.grad(ref.square().sum(), (q, rpb))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_torch_compile_inductor():
    q, k, v, rpb, _, _ = _inputs((9, 10), (3, 3), torch.float32)
    f = lambda q, k, v, rpb: na2d(q, k, v, 3, stride=2, rpb=rpb)
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v, rpb), f(q, k, v, rpb), atol=1e-5, rtol=0)


def test_fx_feature_extraction_keeps_op_as_leaf():
    from timm.models import create_feature_extractor

    class Mixer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(8, 24)

        def forward(self, x):
            b, h, w, c = x.shape
            q, k, v = self.qkv(x).reshape(b, h, w, 3, 2, 4).unbind(3)
            return na2d(q, k, v, 3, stride=2).reshape(b, h, w, c)

    model = Mixer()
    x = torch.randn(1, 7, 6, 8)
    fx = create_feature_extractor(model, return_nodes=['qkv', 'reshape_1'])
    graph_ops = [n.target for n in fx.graph.nodes if n.op == 'call_function']
    assert na2d in graph_ops
    torch.testing.assert_close(fx(x)['reshape_1'], model(x))


def test_rpb_expansion_cache_follows_the_tensor():
    # at inference the expanded rpb is cached per tensor and version: in-place updates and new tensors must show
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 9, 10, 2, 8)
    rpb = torch.nn.Parameter(torch.randn(2, 5, 5))
    with torch.no_grad():
        for _ in range(2):
            out = na2d(q, k, v, 3, rpb=rpb, backend='blocked')
            torch.testing.assert_close(out, na2d(q, k, v, 3, rpb=rpb, backend='reference'))
            rpb.add_(torch.randn(2, 5, 5))
        other = torch.randn(2, 5, 5)
        torch.testing.assert_close(na2d(q, k, v, 3, rpb=other, backend='blocked'),
                                   na2d(q, k, v, 3, rpb=other, backend='reference'))
    # with gradients the expansion is rebuilt and differentiable
    na2d(q, k, v, 3, rpb=rpb, backend='blocked').sum().backward()
    assert rpb.grad is not None and rpb.grad.abs().sum() > 0


@pytest.mark.parametrize('na_dim', [1, 2, 3])
def test_blocked_gradients_random_tiles_fp64(na_dim):
    # the halo backward (strided adds of overlapping key spans) over random geometries and tile shapes
    rng = random.Random(20 + na_dim)
    for i in range(4 if na_dim < 3 else 2):
        shape, ks, st, dil, causal = _config(rng, na_dim, **({'kmax': 3, 'extra': 2} if na_dim == 3 else {}))
        q, k, v, rpb, ak, av = _inputs(shape, ks, torch.float64, rpb=i % 2 == 0, n_extra=2 * (i % 2), seed=i)
        tile = tuple(rng.randint(1, 5) for _ in range(na_dim)) if i % 2 else None
        xs = [x.requires_grad_(True) if x is not None else None for x in (q, k, v, rpb, ak, av)]
        present = [x for x in xs if x is not None]
        grad = torch.randn_like(q)
        ref = torch.autograd.grad(gna_reference(*xs[:3], ks, st, dil, causal, xs[3], 0.4, *xs[4:]), present, grad)
        got = torch.autograd.grad(
            gna_blocked(*xs[:3], ks, st, dil, causal, xs[3], 0.4, *xs[4:], tile_shape=tile), present, grad)
        for a, b in zip(got, ref):
            assert (a - b).abs().max() < 1e-10, (shape, ks, st, dil, causal, tile)
