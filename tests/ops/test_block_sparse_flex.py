"""The ``flex`` block-sparse backend (FlexAttention) against the oracle, duplicates counted as in the other backends.
CPU: eager flex, forward only (torch's FlexAttention has no CPU backward); CUDA (``gpu``): compiled, with gradients."""
import pytest
import torch

from visionattn.ops import block_sparse_attention


def _inputs(dtype, device, heads_index=1, grad=False, d=8, dv=5):
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(grad)
    q, k, v = mk(2, 6, 4, 2, d), mk(2, 7, 3, 2, d), mk(2, 7, 3, 2, dv)
    idx = torch.randint(0, 7, (2, heads_index, 6, 3), generator=g)
    idx[0, :, 0] = torch.tensor([1, 1, 2])  # a block listed twice counts twice
    idx[1, :, 2] = torch.tensor([4, 4, 4])
    bias = mk(2, 2, 6, 3)
    km = torch.rand(2, 7, 3, generator=g) > 0.3
    km[0, 1:3] = False  # query block 0 of batch 0 sees nothing: zero output
    return q, k, v, idx.to(device), bias, km.to(device)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize('heads_index', [1, 2])
@pytest.mark.parametrize('extras', ['none', 'bias', 'mask', 'both'])
def test_flex_forward_cpu(dtype, tol, heads_index, extras):
    q, k, v, idx, bias, km = _inputs(dtype, 'cpu', heads_index)
    kw = dict(bias=bias if extras in ('bias', 'both') else None, key_mask=km if extras in ('mask', 'both') else None)
    out = block_sparse_attention(q, k, v, idx, backend='flex', **kw)
    ref = block_sparse_attention(q, k, v, idx, backend='reference', **kw)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    if kw['key_mask'] is not None:
        assert out[0, 0].abs().max() == 0
    # duplicates matter: listing each block once gives another result
    dedup = idx.clone()
    dedup[0, :, 0] = torch.tensor([1, 2, 3])
    assert (block_sparse_attention(q, k, v, dedup, backend='reference', **kw) - out).abs().max() > 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('extras', ['none', 'both'])
def test_flex_cuda_forward_backward(dtype, extras):
    q, k, v, idx, bias, km = _inputs(dtype, 'cuda', 2, grad=True, d=16, dv=16)
    b, m = (bias, km) if extras == 'both' else (None, None)
    out = block_sparse_attention(q, k, v, idx, backend='flex', bias=b, key_mask=m)
    ins = [x for x in (q, k, v, b) if x is not None]
    dbl = [x.detach().double().requires_grad_() for x in ins]
    ref = block_sparse_attention(*dbl[:3], idx, bias=dbl[3] if b is not None else None, key_mask=m,
                                 backend='reference')
    low = block_sparse_attention(q, k, v, idx, backend='reference', bias=b, key_mask=m)
    go = torch.randn_like(out)
    pairs = [(out, ref, low)] + list(zip(torch.autograd.grad(out, ins, go), torch.autograd.grad(ref, dbl, go.double()),
                                         torch.autograd.grad(low, ins, go)))
    for a, r, lo in pairs:
        err = (a.double() - r).abs().max().item()
        bound = 1e-4 if dtype == torch.float32 else 2 * (lo.double() - r).abs().max().item() + 1e-3
        assert err <= bound, (err, bound)
