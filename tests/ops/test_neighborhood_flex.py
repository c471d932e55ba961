"""The ``flex`` GNA backend (FlexAttention) against the oracle. CPU: eager flex, forward only (torch's FlexAttention
has no CPU backward); CUDA (``gpu``): compiled flex, forward and gradients."""
import pytest
import torch

from tests._helpers import gna_inputs
from visionattn.ops import list_backends, neighborhood_attention
from visionattn.ops._dispatch import get_backend

CASES = [
    # (shape, kernel_size, stride, dilation, is_causal, rpb, extra)
    ((13,), 5, 1, 1, False, True, 0),
    ((13,), 4, 2, 2, True, False, 3),
    ((9, 11), 3, 1, 1, False, True, 0),
    ((9, 11), (3, 4), (2, 3), (2, 1), (True, False), True, 2),
    ((4, 5, 6), (2, 3, 3), (1, 2, 1), (1, 1, 2), (False, True, False), True, 1),
]


def _inputs(shape, ks, extra, rpb, dtype, device, heads=2, d=8, dv=4, grad=False):
    return gna_inputs(shape, ks, dtype, device, heads=heads, dim=d, dim_v=dv, rpb=rpb, n_extra=extra,
                      draw_dtype=torch.float64, grad=grad)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize('case', CASES)
def test_flex_forward_cpu(case, dtype, tol):
    shape, ks, st, dil, causal, rpb, extra = case
    q, k, v, b, ak, av = _inputs(shape, ks, extra, rpb, dtype, 'cpu')
    args = (q, k, v, ks, st, dil, causal, b, None, ak, av)
    out = neighborhood_attention(*args, backend='flex')
    ref = neighborhood_attention(*args, backend='reference')
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    # the check can fail: another window gives another result
    other = neighborhood_attention(q, k, v, tuple(x + 1 for x in (ks if isinstance(ks, tuple) else (ks,) * len(shape))),
                                   1, 1, False, None, None, ak, av, backend='reference') if min(shape) > 6 else None
    if other is not None and b is None:
        assert (other - out).abs().max() > 1e-3


def test_flex_ranked_last_on_cpu_and_refuses_grad():
    q = torch.randn(1, 8, 8, 2, 8)
    call = dict(query=q, key=q, value=q, kernel_size=(3, 3), stride=(1, 1), dilation=(1, 1), is_causal=(False, False))
    assert list_backends('gna', **call)[-2:] == ['flex', 'reference'] or list_backends('gna', **call)[-1] == 'flex'
    assert get_backend('gna', **call).__name__ != 'gna_flex'
    qg = q.clone().requires_grad_()
    with pytest.raises(Exception, match='no CPU backward'):
        neighborhood_attention(qg, qg, qg, 3, backend='flex')


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('case', CASES)
def test_flex_cuda_forward_backward(case, dtype):
    shape, ks, st, dil, causal, rpb, extra = case
    q, k, v, b, ak, av = _inputs(shape, ks, extra, rpb, dtype, 'cuda', d=16, dv=16, grad=True)
    args = (q, k, v, ks, st, dil, causal, b, None, ak, av)
    out = neighborhood_attention(*args, backend='flex')
    ref = neighborhood_attention(*[x.double() if torch.is_tensor(x) else x for x in args], backend='reference')
    low = neighborhood_attention(*args, backend='reference')
    ins = [x for x in (q, k, v, b, ak, av) if x is not None]
    go = torch.randn_like(out)
    g_out = torch.autograd.grad(out, ins, go)
    g_ref = torch.autograd.grad(ref, [x for x in args if torch.is_tensor(x)], go.double())
    g_low = torch.autograd.grad(low, ins, go)
    tol = 1e-4 if dtype == torch.float32 else None
    for a, r, lo in [(out, ref, low)] + list(zip(g_out, g_ref, g_low)):
        err = (a.double() - r).abs().max().item()
        bound = tol if tol is not None else 2 * (lo.double() - r).abs().max().item() + 1e-3
        assert err <= bound, (err, bound)
