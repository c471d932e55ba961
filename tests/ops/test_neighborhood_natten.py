"""The ``natten`` peer backend of the GNA op: equal to the reference where natten can run, precise reasons where not.

natten's CPU path is its uncompiled Flex Attention (forward only, slow): shapes stay tiny.
"""
import warnings

import pytest
import torch

from tests._helpers import gna_inputs
from visionattn.ops import BackendUnavailable, list_backends, na1d, na2d, na3d, neighborhood_attention
from visionattn.ops._dispatch import _REGISTRY
from visionattn.ops.natten import neighborhood as nbh

natten = pytest.importorskip('natten')

_FNS = {1: na1d, 2: na2d, 3: na3d}

# (shape, kernel_size, stride, dilation, is_causal): odd/even kernels, strides 1..k, dilations, causal per axis
_CASES = [
    ((11,), 3, 1, 1, False),
    ((12,), 4, 2, 2, False),
    ((13,), 5, 5, 1, True),
    ((10,), 4, 3, 2, True),
    ((7, 9), 3, 1, 1, False),
    ((8, 9), (4, 3), (2, 3), (1, 2), (False, True)),
    ((9, 8), (2, 5), (2, 4), (3, 1), (True, False)),
    ((10, 7), 4, 4, 1, (True, True)),
    ((6, 7, 5), (3, 2, 3), (1, 2, 3), (2, 1, 1), (False, True, False)),
    ((5, 6, 7), (2, 3, 4), (2, 1, 4), (1, 2, 1), (True, False, True)),
]


def _qkv(shape, heads=2, dim=16, dtype=torch.float32, seed=0, batch=1):
    return list(gna_inputs(shape, 1, dtype, batch=batch, heads=heads, dim=dim, rpb=False, seed=seed)[:3])


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch's Flex warnings (unfused path, return_lse deprecation)
        yield


@pytest.mark.parametrize('shape,ks,st,dil,causal', _CASES)
def test_natten_backend_matches_reference(shape, ks, st, dil, causal):
    q, k, v = _qkv(shape)
    fn = _FNS[len(shape)]
    out = fn(q, k, v, ks, st, dil, causal, backend='natten')
    ref = fn(q, k, v, ks, st, dil, causal, backend='reference')
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_natten_backend_scale_and_additional_kv():
    q, k, v = _qkv((7, 8), heads=3, dim=8)
    g = torch.Generator().manual_seed(1)
    ak, av = (torch.randn(1, 5, 3, 8, generator=g) for _ in range(2))
    out = na2d(q, k, v, 3, 2, 2, (False, True), scale=0.7, additional_keys=ak, additional_values=av, backend='natten')
    ref = na2d(q, k, v, 3, 2, 2, (False, True), scale=0.7, additional_keys=ak, additional_values=av,
               backend='reference')
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_natten_backend_bf16_within_twice_reference_error():
    q, k, v = _qkv((9, 10))
    exact = na2d(*(x.double() for x in (q, k, v)), 3, 2, backend='reference')
    low = [x.bfloat16() for x in (q, k, v)]
    err_nat = (na2d(*low, 3, 2, backend='natten').double() - exact).abs().max()
    err_ref = (na2d(*low, 3, 2, backend='reference').double() - exact).abs().max()
    assert err_nat <= 2 * err_ref + 1e-3, (err_nat, err_ref)


def test_natten_no_grad_with_leaf_tensors():
    # natten's Flex path refuses tensors that require grad even under no_grad: the backend detaches them there
    q, k, v = (x.requires_grad_() for x in _qkv((6, 6)))
    with torch.no_grad():
        out = na2d(q, k, v, 3, backend='natten')
    torch.testing.assert_close(out, na2d(q, k, v, 3, backend='reference').detach(), atol=1e-4, rtol=0)


def _unavailable(match, *args, **kwargs):
    with pytest.raises(BackendUnavailable, match=match):
        neighborhood_attention(*args, backend='natten', **kwargs)


def test_natten_unsupported_reasons(monkeypatch):
    q, k, v = _qkv((6, 7))
    _unavailable('rpb', q, k, v, 3, rpb=torch.zeros(2, 5, 5))
    _unavailable('gradients required on cpu', q.requires_grad_(), k, v, 3)
    q.requires_grad_(False)
    _unavailable('kernel_size >= 2', q, k, v, (1, 3))
    _unavailable('scale 0', q, k, v, 3, scale=0.)
    _unavailable('FP32, FP16, and BF16', *(x.double() for x in (q, k, v)), 3)
    _unavailable('head_dim', *(x[..., :12] for x in (q, k, v)), 3)
    _unavailable('head dims', q, k, v[..., :8], 3)
    q1, k1, v1 = _qkv((6,))
    _unavailable('causal', q1, k1, v1, 6, is_causal=True)
    ak, av = torch.zeros(1, 2, 2, 16), torch.zeros(1, 2, 2, 16)
    monkeypatch.setattr(nbh, '_natten_takes_additional_kv', lambda: False)
    _unavailable('additional keys', q, k, v, 3, additional_keys=ak, additional_values=av)
    monkeypatch.setattr(nbh, '_natten', lambda: (None, 'natten is not importable (ModuleNotFoundError: x)'))
    _unavailable('not importable', q, k, v, 3)


def test_natten_priority_on_cpu():
    q, k, v = _qkv((6, 7))
    call = dict(query=q, key=k, value=v, kernel_size=(3, 3), stride=(1, 1), dilation=(1, 1),
                is_causal=(False, False), rpb=None, scale=0.25, additional_keys=None, additional_values=None)
    order = list_backends('gna', **call)
    assert order.index('blocked') < order.index('natten') < order.index('reference')


def test_auto_never_picks_natten_when_it_cannot_run(monkeypatch):
    # rank natten first, then check that auto still skips it for every call it cannot run
    monkeypatch.setattr(_REGISTRY['gna']['natten'], 'priority_fn', lambda **kw: 100)
    picked = []
    real = nbh.natten_backend
    monkeypatch.setattr(_REGISTRY['gna']['natten'], 'fn', lambda *a, **kw: picked.append(1) or real(*a, **kw))
    q, k, v = _qkv((6, 7))
    ref = na2d(q, k, v, 3, backend='reference')
    torch.testing.assert_close(na2d(q, k, v, 3), ref, atol=1e-4, rtol=0)
    assert picked == [1]  # it can run this one
    rpb = torch.randn(2, 5, 5)
    torch.testing.assert_close(na2d(q, k, v, 3, rpb=rpb), na2d(q, k, v, 3, rpb=rpb, backend='reference'))
    qg = q.clone().requires_grad_()
    out = na2d(qg, k, v, 3)
    out.sum().backward()
    assert qg.grad is not None
    na2d(*(x.double() for x in (q, k, v)), 3)
    assert picked == [1]
