"""GNA backend ``cpu`` (fused C++ kernels, kernels/cpu/gna.cpp) against the reference oracle: the blocked backend's
sweeps, forward and every gradient, plus dispatch, fallbacks and bad input."""
import random

import pytest
import torch

from tests.ops.test_neighborhood_blocked import _config, _inputs
from visionattn.ops import na1d, na2d, neighborhood_attention
from visionattn.ops._dispatch import get_backend
from visionattn.ops.cpu import _ext
from visionattn.ops.cpu.neighborhood import _token_strided, gna_cpu, gna_cpu_bwd, gna_cpu_fwd, gna_cpu_unsupported
from visionattn.ops.reference import gna_reference

pytestmark = pytest.mark.skipif(not _ext.load(), reason=f'fused CPU kernels unavailable: {_ext.unavailable_reason()}')


def _grads(fn, xs, ks, st, dil, causal, scale, grad):
    present = [x for x in xs if x is not None]
    return torch.autograd.grad(fn(*xs[:3], ks, st, dil, causal, xs[3], scale, *xs[4:]), present, grad)


def _assert_fp32_matches(inputs, ks, st, dil, causal):
    """fp32 forward and every gradient within 1e-4 of the fp64 reference."""
    exact = [x.double().requires_grad_(True) if x is not None else None for x in inputs]
    xs = [x.requires_grad_(True) if x is not None else None for x in inputs]
    ref = gna_reference(*exact[:3], ks, st, dil, causal, exact[3], None, *exact[4:])
    out = gna_cpu(*xs[:3], ks, st, dil, causal, xs[3], None, *xs[4:])
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=0)
    grad = torch.randn_like(ref)
    for a, b in zip(_grads(gna_cpu, xs, ks, st, dil, causal, None, grad.float()),
                    _grads(gna_reference, exact, ks, st, dil, causal, None, grad)):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=0)


@pytest.mark.parametrize('na_dim', [1, 2, 3])
def test_cpu_matches_reference_random_fp64(na_dim):
    rng = random.Random(20 + na_dim)
    for i in range(12 if na_dim < 3 else 6):
        shape, ks, st, dil, causal = _config(rng, na_dim, **({'kmax': 3, 'extra': 2} if na_dim == 3 else {}))
        inputs = _inputs(shape, ks, torch.float64, dim_v=8 if i % 2 else 5, rpb=i % 2 == 0, n_extra=3 * (i % 3 == 1),
                         seed=i)
        xs = [x.requires_grad_(True) if x is not None else None for x in inputs]
        ref = gna_reference(*xs[:3], ks, st, dil, causal, xs[3], 0.4, *xs[4:])
        out = gna_cpu(*xs[:3], ks, st, dil, causal, xs[3], 0.4, *xs[4:])
        assert (out - ref).abs().max().item() < 1e-10, (shape, ks, st, dil, causal)
        grad = torch.randn_like(ref)
        for a, b in zip(_grads(gna_cpu, xs, ks, st, dil, causal, 0.4, grad),
                        _grads(gna_reference, xs, ks, st, dil, causal, 0.4, grad)):
            assert (a - b).abs().max().item() < 1e-10, (shape, ks, st, dil, causal)


@pytest.mark.parametrize('shape,ks,st,dil,causal', [
    ((21,), (4,), (3,), (2,), (False,)),
    ((10,), (4,), (4,), (1,), (True,)),
    ((11, 9), (3, 4), (1, 2), (2, 1), (False, False)),
    ((12, 10), (5, 5), (5, 5), (1, 1), (False, False)),
    ((9, 9), (3, 3), (2, 1), (1, 3), (True, False)),
    ((5, 6, 7), (2, 3, 3), (2, 1, 3), (1, 2, 1), (False, True, False)),
])
@pytest.mark.parametrize('dim', [8, 12])  # 8: the SIMD paths, 12: the portable tails
@pytest.mark.parametrize('extra', [0, 2])
def test_cpu_fp32_and_gradients(shape, ks, st, dil, causal, dim, extra):
    inputs = _inputs(shape, ks, torch.float32, dim=dim, dim_v=dim, n_extra=extra)
    _assert_fp32_matches(inputs, ks, st, dil, causal)


@pytest.mark.parametrize('tile_bytes', ['', '0'])  # '': tiles built once per call; '0': per task (the memory bound)
@pytest.mark.parametrize('shape,ks,st,dil,causal', [
    ((28, 28), (7, 7), (1, 1), (2, 2), (False, False)),  # dilation groups of 14: partial tiles
    ((19, 23), (5, 7), (2, 3), (3, 1), (False, True)),
    ((150,), (37,), (1,), (2,), (False,)),
])
@pytest.mark.parametrize('dim', [32, 20])  # 32: two 16x16 lane transposes, 20: one plus the gathered tail
def test_cpu_lane_transposes_and_tile_reuse(tile_bytes, shape, ks, st, dil, causal, dim, monkeypatch):
    monkeypatch.setenv('VISIONATTN_GNA_TILE_BYTES', tile_bytes)
    inputs = _inputs(shape, ks, torch.float32, dim=dim, dim_v=dim, rpb=len(shape) == 2, n_extra=2 * (dim == 20))
    _assert_fp32_matches(inputs, ks, st, dil, causal)


@pytest.mark.parametrize('shape,ks,dil', [
    ((9, 11), (3, 5), (2, 1)), ((40,), (9,), (3,)), ((4, 5, 6), (2, 3, 3), (1, 1, 2))])
def test_cpu_reads_qkv_views_in_place(shape, ks, dil):
    n = len(shape)
    qkv = torch.randn(2, *shape, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    rpb = torch.randn(2, *(2 * k - 1 for k in ks), dtype=torch.float64, requires_grad=True)
    args = (ks, (1,) * n, dil, (False,) * n)
    q, k, v = qkv.unbind(-3)
    assert not q.is_contiguous() and _token_strided(q.reshape(2, *(1,) * (3 - n), *shape, 2, 8))
    out = gna_cpu(q, k, v, *args, rpb, 0.3)
    ref = gna_reference(*(x.detach().requires_grad_(True) for x in (q, k, v)), *args, rpb.detach(), 0.3)
    assert (out - ref).abs().max().item() < 1e-10
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (qkv, rpb), grad)
    want = torch.autograd.grad(gna_reference(*qkv.unbind(-3), *args, rpb, 0.3), (qkv, rpb), grad)
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() < 1e-10
    perm = qkv.detach().permute(0, *range(1, n + 1), n + 2, n + 3, n + 1)[..., 0]  # heads/channels not dense: copied
    out = gna_cpu(perm, perm, perm, *args, None, 0.3)
    assert (out - gna_reference(perm, perm, perm, *args, None, 0.3)).abs().max().item() < 1e-10


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_cpu_low_precision_computed_in_fp32(dtype):
    shape, ks, st, dil, causal = (12, 11), (5, 4), (2, 1), (1, 2), (False, False)
    q, k, v, rpb, ak, av = (x.to(dtype) for x in _inputs(shape, ks, torch.float64, n_extra=2))
    out = gna_cpu(q, k, v, ks, st, dil, causal, rpb, None, ak, av)
    assert out.dtype == dtype
    ref = gna_reference(*(x.float() for x in (q, k, v)), ks, st, dil, causal, rpb.float(), None, ak.float(), av.float())
    torch.testing.assert_close(out.float(), ref.to(dtype).float(), atol=2e-2, rtol=0)


def test_dispatch_and_public_api():
    q, k, v, rpb, _, _ = _inputs((14, 14), (7, 7), torch.float32, b=1, dim=16, dim_v=16)
    call = dict(query=q, key=k, value=v, kernel_size=(7, 7), stride=(1, 1), dilation=(1, 1), is_causal=(False, False),
                rpb=rpb, scale=0.25, additional_keys=None, additional_values=None)
    assert gna_cpu_unsupported(**call) is None
    assert get_backend('gna', 'auto', **call).__module__ == 'visionattn.ops.cpu.neighborhood'
    out = na2d(q, k, v, 7, rpb=rpb, scale=0.25, backend='cpu')
    torch.testing.assert_close(out, na2d(q, k, v, 7, rpb=rpb, scale=0.25, backend='reference'), atol=1e-5, rtol=0)
    # non-contiguous inputs (a qkv split) are made contiguous by the backend
    qkv = torch.randn(2, 40, 3, 2, 8)
    q1, k1, v1 = qkv.unbind(2)
    torch.testing.assert_close(na1d(q1, k1, v1, 5, backend='cpu'), na1d(q1, k1, v1, 5, backend='reference'),
                               atol=1e-5, rtol=0)
    assert neighborhood_attention(q, k, v, 3, backend='cpu').shape == q.shape


@pytest.mark.parametrize('shape,ks,st,dil', [
    ((28, 28), (7, 7), (1, 1), (2, 2)),  # picked with gradients before the kernel beat blocked there (0.96x)
    ((24, 24), (8, 8), (4, 4), (1, 1)),
    ((300,), (127,), (1,), (1,)),
])
def test_auto_ranks_cpu_above_blocked_with_gradients(shape, ks, st, dil):
    q = torch.randn(2, *shape, 2, 8, requires_grad=True)
    call = dict(query=q, key=q, value=q, kernel_size=ks, stride=st, dilation=dil, is_causal=(False,) * len(ks),
                rpb=None, scale=None, additional_keys=None, additional_values=None)
    with torch.no_grad():
        assert get_backend('gna', 'auto', **call).__module__ == 'visionattn.ops.cpu.neighborhood'
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert get_backend('gna', 'auto', **call).__module__ == 'visionattn.ops.cpu.neighborhood'
        torch.set_num_threads(8)  # 4 (batch, head) pairs: the backward's threads would idle
        assert get_backend('gna', 'auto', **call).__module__ == 'visionattn.ops.blocked.neighborhood'
    finally:
        torch.set_num_threads(threads)


def test_falls_back_when_unavailable(monkeypatch):
    q = torch.randn(1, 10, 10, 2, 8)
    monkeypatch.setattr(_ext, '_STATE', {'error': 'disabled by VISIONATTN_NO_CPU_KERNELS'})
    call = dict(query=q, key=q, value=q, kernel_size=(3, 3), stride=(1, 1), dilation=(1, 1), is_causal=(False, False),
                rpb=None, scale=None, additional_keys=None, additional_values=None)
    assert 'VISIONATTN_NO_CPU_KERNELS' in gna_cpu_unsupported(**call)
    assert get_backend('gna', 'auto', **call).__module__ == 'visionattn.ops.blocked.neighborhood'
    torch.testing.assert_close(na2d(q, q, q, 3), na2d(q, q, q, 3, backend='reference'), atol=1e-5, rtol=0)
    assert gna_cpu_unsupported(**{**call, 'query': q.to(torch.int32)}) is not None


def _canonical(dtype=torch.float32, n_extra=0):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, 6, 7, 2, 8, generator=g, dtype=dtype) for _ in range(3))
    rpb = torch.randn(2, 1, 5, 5, generator=g, dtype=dtype)
    ak = torch.randn(2, n_extra, 2, 8, generator=g, dtype=dtype) if n_extra else None
    av = torch.randn(2, n_extra, 2, 8, generator=g, dtype=dtype) if n_extra else None
    return [q, k, v, [1, 3, 3], [1, 1, 2], [1, 2, 1], [0, 0, 1], rpb, 0.3, ak, av]


@pytest.mark.parametrize('bad', [
    'noncontiguous', 'dtype', 'mixed_dtype', 'shape', 'rpb_shape', 'kernel_too_big', 'stride_gt_kernel', 'extra_shape',
    'extra_alone', 'rank', 'nan_scale'])
def test_custom_op_rejects_bad_input(bad):
    args = _canonical(n_extra=2)
    if bad == 'noncontiguous':
        args[1] = args[1].transpose(2, 3).contiguous().transpose(2, 3)
    elif bad == 'dtype':
        args[:3] = [x.to(torch.int64) for x in args[:3]]
    elif bad == 'mixed_dtype':
        args[2] = args[2].double()
    elif bad == 'shape':
        args[1] = args[1][:, :, :5]
    elif bad == 'rpb_shape':
        args[7] = args[7][:, :, :4]
    elif bad == 'kernel_too_big':
        args[3] = [1, 7, 3]
    elif bad == 'stride_gt_kernel':
        args[4] = [1, 4, 1]
    elif bad == 'extra_shape':
        args[10] = args[10][..., :4]
    elif bad == 'extra_alone':
        args[10] = None
    elif bad == 'rank':
        args[:3] = [x[0] for x in args[:3]]
    elif bad == 'nan_scale':
        args[8] = float('nan')
    with pytest.raises(ValueError):
        gna_cpu_fwd(*args)


def test_backward_op_rejects_bad_input_and_opcheck():
    args = _canonical(dtype=torch.float64, n_extra=2)
    out, lse = gna_cpu_fwd(*args)
    with pytest.raises(ValueError):
        gna_cpu_bwd(out.transpose(2, 3).contiguous().transpose(2, 3), *args[:3], out, lse, *args[3:])
    with pytest.raises(ValueError):
        gna_cpu_bwd(out, *args[:3], out, lse[:, :1], *args[3:])
    xs = [x.requires_grad_(True) if isinstance(x, torch.Tensor) else x for x in args]
    torch.library.opcheck(gna_cpu_fwd, xs)
