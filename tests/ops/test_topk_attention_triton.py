"""Triton backend of topk_attention: TRITON_INTERPRET=1 on tiny CPU shapes (in a subprocess), and on CUDA."""
import os

import pytest
import torch

from tests._helpers import run_triton_interpreted
from visionattn.ops.topk import topk_attention

INTERPRET = os.environ.get('TRITON_INTERPRET') == '1'
CUDA = torch.cuda.is_available()


def _check(device, dtype, B=2, N=13, H=2, D=8, K=5, num_dense=1, packed=True, seed=0):
    """Forward and q/k/v gradients against the fp32 oracle; low precision within 2x the oracle's own error."""
    g = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(B, N, 3, H, D, generator=g)] if packed else [torch.randn(B, N, H, D, generator=g)
                                                                        for _ in range(3)]
    index = torch.randn(B, H, N - num_dense, N, generator=g).topk(K, dim=-1, sorted=False)[1].to(device)
    grad_out = None

    def run(backend, cast):
        nonlocal grad_out
        xs = [t.detach().to(device, cast).clone().requires_grad_() for t in leaves]
        q, k, v = xs[0].unbind(2) if packed else xs
        out = topk_attention(q, k, v, index, 0.35, num_dense, backend=backend)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
        (out.float() * grad_out).sum().backward()
        return [out.float()] + [x.grad.float() for x in xs]

    ref32 = run('reference', torch.float32)
    got = run('triton', dtype)
    assert all(torch.isfinite(t).all() for t in got)
    if dtype == torch.float32:
        for a, b in zip(got, ref32):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    else:
        ref_low = run('reference', dtype)
        for a, b, c in zip(got, ref32, ref_low):
            err, err_ref = (a - b).abs().max(), (c - b).abs().max()
            assert err <= 2 * err_ref + 1e-3, (err, err_ref)


@pytest.mark.skipif(not INTERPRET, reason='runs in the subprocess of test_triton_interpret')
@pytest.mark.parametrize('dtype, num_dense, packed, K', [
    (torch.float32, 1, True, 5),
    (torch.float32, 0, False, 13),  # all keys, several chunks of the key list
    (torch.float32, 2, True, 1),
    (torch.float16, 1, False, 7),
])
def test_interp_case(dtype, num_dense, packed, K):
    _check('cpu', dtype, num_dense=num_dense, packed=packed, K=K)


@pytest.mark.skipif(not INTERPRET, reason='runs in the subprocess of test_triton_interpret')
def test_interp_multi_tile():
    # more query rows than one 16-row tile, head_dim not a power of two, a key list over several 16-key chunks
    _check('cpu', torch.float32, B=1, N=37, H=1, D=24, K=20)


def test_triton_interpret():
    """Run the interpreter cases in a fresh process (TRITON_INTERPRET must be set before triton is imported)."""
    if INTERPRET:
        pytest.skip('already inside the interpreter run')
    pytest.importorskip('triton')
    out = run_triton_interpreted(__file__, '-k', 'interp')
    assert '5 passed' in out, out[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason='needs CUDA')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('shape', [
    {'B': 2, 'N': 197, 'H': 6, 'D': 64, 'K': 50},  # Sparsifiner-S at 224, keep 0.25
    {'B': 1, 'N': 197, 'H': 12, 'D': 64, 'K': 99, 'packed': False},  # -B, keep 0.5
    {'B': 2, 'N': 50, 'H': 2, 'D': 48, 'K': 7, 'num_dense': 0},
])
def test_cuda(dtype, shape):
    _check('cuda', dtype, **shape)
