"""Triton GNA kernels: forward and backward against the reference, on CUDA or under TRITON_INTERPRET=1 on CPU.

The interpreter must be chosen before triton is first imported (timm and torch.compile import it), so without CUDA
``test_interpreted_in_subprocess`` re-runs this module in a fresh process with TRITON_INTERPRET=1.
"""
import os

import pytest
import torch

from tests._helpers import gna_inputs, run_triton_interpreted
from visionattn.ops import na2d
from visionattn.ops._dispatch import BackendUnavailable
from visionattn.ops.reference import gna_reference
from visionattn.ops.triton import neighborhood as tri

CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1' and not CUDA
DEVICE = 'cuda' if CUDA else 'cpu'
needs_kernels = pytest.mark.skipif(not (CUDA or INTERPRETED), reason='needs CUDA or TRITON_INTERPRET=1 (subprocess)')


@pytest.mark.skipif(CUDA or INTERPRETED, reason='runs the kernel tests in a TRITON_INTERPRET=1 subprocess on CPU')
@pytest.mark.parametrize('markexpr', ['not slow', pytest.param('slow', marks=pytest.mark.slow)])
def test_interpreted_in_subprocess(markexpr):
    out = run_triton_interpreted(__file__, '-m', markexpr, timeout=900)
    assert ' passed' in out, out[-2000:]


def _inputs(shape, ks, dtype, n_extra=0, rpb=True, b=2, heads=2, dim=16, seed=0):
    return gna_inputs(shape, ks, dtype, DEVICE, batch=b, heads=heads, dim=dim, rpb=rpb, n_extra=n_extra, seed=seed,
                      draw_dtype=torch.float32)


def _check(shape, ks, st, dil, causal, dtype=torch.float32, n_extra=0, rpb=True, **launch):
    """Forward and all gradients vs the fp32 reference; low precision within 2x the reference's own error."""
    xs32 = _inputs(shape, ks, torch.float32, n_extra=n_extra, rpb=rpb)
    present = [i for i, x in enumerate(xs32) if x is not None]
    grad = torch.randn(xs32[0].shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    def run(fn, dtype):
        xs = [None if x is None else x.detach().to(dtype).requires_grad_() for x in xs32]
        out = fn(xs, dtype)
        grads = torch.autograd.grad(out, [xs[i] for i in present], grad.to(dtype))
        return [out.float()] + [g.float() for g in grads]

    ref = lambda xs, dt: gna_reference(*xs[:3], ks, st, dil, causal, xs[3], 0.3, *xs[4:])
    if launch:  # explicit tile shapes: straight to the kernels through an autograd shim
        def fused(xs, dt):
            return _Fused.apply(launch, ks, st, dil, causal, *xs)
    else:
        def fused(xs, dt):
            return tri.gna_triton(*xs[:3], ks, st, dil, causal, xs[3], 0.3, *xs[4:])
    want = run(ref, torch.float32)
    got = run(fused, dtype)
    if dtype == torch.float32:
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    else:
        low = run(ref, dtype)
        for a, b, c in zip(got, want, low):
            err, err_ref = (a - b).abs().max(), (c - b).abs().max()
            assert err <= 2 * err_ref + 1e-3, (err, err_ref)


class _Fused(torch.autograd.Function):
    """The kernels with explicit tile/BLOCK_N (to get several tiles and key chunks on tiny inputs)."""

    @staticmethod
    def forward(ctx, launch, ks, st, dil, causal, q, k, v, rpb, ak, av):
        out, lse = tri._gna_triton_forward(q, k, v, ks, st, dil, causal, rpb, 0.3, ak, av, **launch)
        ctx.save_for_backward(q, k, v, out, lse, rpb, ak, av)
        ctx.args = (launch, ks, st, dil, causal)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, rpb, ak, av = ctx.saved_tensors
        launch, ks, st, dil, causal = ctx.args
        grads = tri._gna_triton_backward(grad, q, k, v, out, lse, ks, st, dil, causal, rpb, 0.3, ak, av, **launch)
        return (None,) * 5 + tuple(grads)


@needs_kernels
def test_triton_2d_tiles_stride_dilation_rpb_extra():
    _check((7, 6), (3, 4), (2, 1), (2, 1), (False, True), n_extra=3, tile_shape=(2, 4), block_n=16)


@needs_kernels
def test_triton_1d_causal_default_launch():
    _check((9,), (4,), (3,), (2,), (True,))


@needs_kernels
def test_triton_3d():
    _check((4, 5, 4), (2, 3, 2), (1, 3, 2), (2, 1, 1), (True, False, False), n_extra=2, rpb=False,
           tile_shape=(2, 2, 4), block_n=32)


@needs_kernels
def test_triton_fp16():
    _check((6, 6), (3, 3), (1, 1), (1, 1), (False, False), dtype=torch.float16, n_extra=2)


@needs_kernels
@pytest.mark.slow
@pytest.mark.parametrize('case', [
    ((10, 9), (4, 3), (4, 2), (1, 3), (False, False)),
    ((12,), (5,), (1,), (2,), (False,)),
    ((5, 7), (5, 3), (5, 3), (1, 2), (True, True)),
])
def test_triton_more_cases(case):
    _check(*case, n_extra=2, tile_shape=(2, 4)[-len(case[0]):], block_n=16)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason='needs CUDA (bf16 is not supported by the Triton interpreter)')
def test_triton_bf16_cuda():
    _check((14, 13), (7, 7), (2, 1), (1, 2), (False, False), dtype=torch.bfloat16, n_extra=4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason='needs CUDA')
@pytest.mark.parametrize('dim', [16, 32, 64, 128])
def test_triton_cuda_head_dims(dim):
    q, k, v, rpb, ak, av = _inputs((20, 18), (7, 5), torch.float16, n_extra=3, dim=dim)
    out = na2d(q, k, v, (7, 5), stride=(2, 1), dilation=(1, 2), rpb=rpb, additional_keys=ak, additional_values=av)
    ref = na2d(*(x.float() for x in (q, k, v)), (7, 5), stride=(2, 1), dilation=(1, 2), rpb=rpb.float(),
               additional_keys=ak.float(), additional_values=av.float(), backend='reference')
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=0)


@needs_kernels
def test_triton_backend_dispatch():
    q, k, v, _, _, _ = _inputs((6, 6), (3, 3), torch.float32, rpb=False)
    if CUDA:
        torch.testing.assert_close(na2d(q, k, v, 3, backend='triton'), na2d(q, k, v, 3, backend='reference'),
                                   atol=1e-4, rtol=0)
    else:
        with pytest.raises(BackendUnavailable, match='need CUDA'):
            na2d(q, k, v, 3, backend='triton')
    assert tri.gna_triton_unsupported(q[..., :8], v) is not None
