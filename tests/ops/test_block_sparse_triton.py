"""Triton backend of block_sparse_attention: TRITON_INTERPRET=1 on tiny CPU shapes (in a subprocess), and on CUDA."""
import os

import pytest
import torch

from tests._helpers import run_triton_interpreted
from visionattn.ops.block_sparse import block_sparse_attention, block_sparse_attention_reference

INTERPRET = os.environ.get('TRITON_INTERPRET') == '1'
CUDA = torch.cuda.is_available()


def _case(device, dtype, B=2, Nq=3, Tq=6, H=2, D=8, Nk=4, Tk=5, Dv=4, topk=3, Hi=1, extras=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Nq, Tq, H, D, generator=g)
    k = torch.randn(B, Nk, Tk, H, D, generator=g)
    v = torch.randn(B, Nk, Tk, H, Dv, generator=g)
    idx = torch.randint(0, Nk, (B, Hi, Nq, topk), generator=g)
    idx[0, 0, 0, :2] = 1  # a duplicate
    bias = torch.randn(B, Hi, Nq, topk, generator=g) if extras else None
    key_mask = None
    if extras:
        key_mask = torch.rand(B, Nk, Tk, generator=g) > 0.3
        key_mask[B - 1, idx[B - 1, 0, 1]] = False  # query block 1 of the last batch (head 0) sees only masked keys
    to = lambda t: None if t is None else t.to(device)
    return [to(t) for t in (q, k, v, idx, bias, key_mask)]


def _check(device, dtype, **kw):
    """Forward and gradients against the fp32 oracle; low precision within 2x the oracle's own low-precision error."""
    q, k, v, idx, bias, key_mask = _case(device, dtype, **kw)
    leaves = [t for t in (q, k, v, bias) if t is not None]
    grad_out = None

    def run(backend, cast):
        nonlocal grad_out
        xs = [t.detach().to(cast).requires_grad_() for t in leaves]
        b = xs[3] if bias is not None else None
        out = block_sparse_attention(xs[0], xs[1], xs[2], idx, 0.35, b, key_mask, backend=backend)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
        (out.float() * grad_out).sum().backward()
        return [out.float()] + [x.grad.float() for x in xs]

    ref32 = run('reference', torch.float32)
    got = run('triton', dtype)
    for g in got:
        assert torch.isfinite(g).all()
    if dtype == torch.float32:
        for a, b in zip(got, ref32):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    else:
        ref_low = run('reference', dtype)
        for a, b, c in zip(got, ref32, ref_low):
            err, err_ref = (a - b).abs().max(), (c - b).abs().max()
            assert err <= 2 * err_ref + 1e-3, (err, err_ref)


@pytest.mark.skipif(not INTERPRET, reason='runs in the subprocess of test_triton_interpret')
@pytest.mark.parametrize('dtype, Hi, extras', [
    (torch.float32, 1, True),
    (torch.float32, 2, False),
    (torch.float16, 1, True),
    (torch.float16, 2, False),
])
def test_interp_case(dtype, Hi, extras):
    _check('cpu', dtype, Hi=Hi, extras=extras)


@pytest.mark.skipif(not INTERPRET, reason='runs in the subprocess of test_triton_interpret')
def test_interp_bf16_unsupported():
    from visionattn.ops import BackendUnavailable

    q, k, v, idx, _, _ = _case('cpu', torch.float32)
    with pytest.raises(BackendUnavailable, match='bf16'):
        block_sparse_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), idx, backend='triton')


@pytest.mark.skipif(not INTERPRET, reason='runs in the subprocess of test_triton_interpret')
def test_interp_multi_tile():
    # Tq, Tk above the 64 tile: several query tiles per block and several key tiles per slot
    _check('cpu', torch.float32, B=1, Nq=2, Tq=70, H=1, D=16, Nk=3, Tk=66, Dv=16, topk=2)


@pytest.mark.skipif(not INTERPRET, reason='runs in the subprocess of test_triton_interpret')
def test_interp_noncontiguous():
    # q/k/v as strided views (split of a packed projection, as in the BRA module): the kernels read through strides
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 3, 5, 2, 3 * 16, generator=g)  # [B, N, T, heads, 3 * D]
    q, k, v = qkv.split(16, dim=-1)
    idx = torch.randint(0, 3, (2, 1, 3, 2), generator=g)
    leaves = [t.clone().requires_grad_() for t in (qkv, qkv)]
    outs = []
    for backend, packed in zip(('triton', 'reference'), leaves):
        q, k, v = packed.split(16, dim=-1)
        assert not q.is_contiguous()
        out = block_sparse_attention(q, k, v, idx, backend=backend)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        outs.append((out, packed.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_triton_interpret():
    """Run the interpreter cases in a fresh process (TRITON_INTERPRET must be set before triton is imported)."""
    if INTERPRET:
        pytest.skip('already inside the interpreter run')
    pytest.importorskip('triton')
    out = run_triton_interpreted(__file__, '-k', 'interp')
    assert '7 passed' in out, out[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason='needs CUDA')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('shape', [
    {'B': 2, 'Nq': 49, 'Tq': 64, 'H': 2, 'D': 32, 'Nk': 49, 'Tk': 64, 'Dv': 32, 'topk': 1},  # BiFormer stage 1 at 224
    {'B': 2, 'Nq': 49, 'Tq': 4, 'H': 4, 'D': 32, 'Nk': 49, 'Tk': 4, 'Dv': 32, 'topk': 16, 'Hi': 4},  # per-head
    {'B': 1, 'Nq': 16, 'Tq': 13 * 19, 'H': 2, 'D': 48, 'Nk': 16, 'Tk': 13 * 19, 'Dv': 24, 'topk': 3},  # odd sizes
])
def test_cuda(dtype, shape):
    _check('cuda', dtype, **shape)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason='needs CUDA')
def test_cuda_compile():
    q, k, v, idx, bias, key_mask = _case('cuda', torch.float16)
    fn = torch.compile(block_sparse_attention, fullgraph=True)
    out = fn(q.half(), k.half(), v.half(), idx, 0.35, bias, key_mask, 'triton')
    ref = block_sparse_attention_reference(q, k, v, idx, 0.35, bias, key_mask)
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=2e-2)
