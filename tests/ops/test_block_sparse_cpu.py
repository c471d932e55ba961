"""Block-sparse attention backend ``cpu`` (fused C++ kernels, kernels/cpu/block_sparse.cpp) against the oracle:
forward and every gradient (fp64 and fp32), duplicates, masked rows, and bad input."""
import pytest
import torch

from tests.ops.test_block_sparse import _inputs
from visionattn.ops.block_sparse import block_sparse_attention, block_sparse_attention_reference
from visionattn.ops.cpu import _ext
from visionattn.ops.cpu import block_sparse as cpu_bsa
from visionattn.ops.cpu.block_sparse import block_sparse_cpu_unsupported, bsa_cpu_bwd, bsa_cpu_fwd

pytestmark = pytest.mark.skipif(not _ext.load(), reason=f'fused CPU kernels unavailable: {_ext.unavailable_reason()}')


def _run(backend, leaves, idx, key_mask, extras, grad=None):
    xs = [t.clone().requires_grad_() for t in leaves]
    kw = {'bias': xs[3], 'key_mask': key_mask} if extras else {}
    out = block_sparse_attention(xs[0], xs[1], xs[2], idx, scale=0.41, backend=backend, **kw)
    grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out) if grad is None else grad
    return [out] + list(torch.autograd.grad(out, xs, grad))


# GEMM_MIN_TOKENS: the row path, the GEMM path through the BLAS, the GEMM path with the portable GEMM loop
PATHS = {'rows': 10 ** 9, 'gemm': 1, 'gemm_portable': -1}


@pytest.mark.parametrize('path', list(PATHS))
@pytest.mark.parametrize('dtype,atol', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize('Hi', [1, 3])
@pytest.mark.parametrize('extras', [False, True])
@pytest.mark.parametrize('D', [8, 6])  # 8: the SIMD paths, 6: the portable tails
def test_cpu_matches_reference(path, dtype, atol, Hi, extras, D, monkeypatch):
    monkeypatch.setattr(cpu_bsa, 'GEMM_MIN_TOKENS', PATHS[path])
    q, k, v, idx, bias, key_mask = _inputs(Hi=Hi, D=D, Dv=D, dtype=dtype)
    if extras:
        key_mask[1, idx[1, 0, 2]] = False  # an all-masked query block: zero output, zero gradients
    leaves = [q, k, v] + ([bias] if extras else [])
    got = _run('cpu', leaves, idx, key_mask, extras)
    want = _run('reference', [x.double() for x in leaves], idx, key_mask, extras)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=0, atol=atol)
    if extras:
        assert got[0][1, 2, :, 0].abs().max() == 0


@pytest.mark.parametrize('dtype,atol', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cpu_gemm_path_large_blocks(dtype, atol):
    """The default rule's GEMM path on blocks of >= 16 tokens: odd sizes (buffer rows padded to 16 in the kernel),
    rows split in two chunks (topk * Tk * Tq above the per-thread logits budget), duplicates, bias, key mask."""
    q, k, v, idx, bias, key_mask = _inputs(B=1, Nq=2, Tq=100, H=2, D=16, Nk=5, Tk=477, Dv=8, topk=3, Hi=2, dtype=dtype)
    assert 16 <= k.shape[2] and 3 * 477 * 100 > 2 ** 17
    key_mask[0, 1] = False  # a block with every key masked
    idx[0, 1, 1] = 1  # query block 1 of head 1 sees only masked keys
    leaves = [q, k, v, bias]
    got = _run('cpu', leaves, idx, key_mask, True)
    want = _run('reference', [x.double() for x in leaves], idx, key_mask, True)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=0, atol=atol)
    assert got[0][0, 1, :, 1].abs().max() == 0


def test_duplicates_count_twice_and_low_precision():
    q, k, v, idx, _, _ = _inputs(topk=3)
    idx[:, :, :, 1] = idx[:, :, :, 0]
    dedup = idx[:, :, :, [0, 2]]
    bias = torch.zeros(dedup.shape, dtype=q.dtype)
    bias[..., 0] = torch.log(torch.tensor(2.0, dtype=q.dtype))
    expect = block_sparse_attention_reference(q, k, v, dedup, 0.3, bias=bias)
    torch.testing.assert_close(block_sparse_attention(q, k, v, idx, 0.3, backend='cpu'), expect, rtol=0, atol=1e-12)
    for dtype in (torch.float16, torch.bfloat16):
        out = block_sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), idx, 0.3, backend='cpu')
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expect, rtol=0, atol=2e-2)


def test_auto_and_fallback(monkeypatch):
    q, k, v, idx, _, key_mask = _inputs(dtype=torch.float32)
    assert block_sparse_cpu_unsupported(q) is None
    monkeypatch.setattr(_ext, '_STATE', {'error': 'disabled by VISIONATTN_NO_CPU_KERNELS'})
    assert 'VISIONATTN_NO_CPU_KERNELS' in block_sparse_cpu_unsupported(q)
    out = block_sparse_attention(q, k, v, idx, key_mask=key_mask)  # auto: the pure-PyTorch backends take over
    torch.testing.assert_close(out, block_sparse_attention_reference(q, k, v, idx, 8 ** -0.5, key_mask=key_mask),
                               rtol=0, atol=1e-5)


def _op_args():
    q, k, v, idx, bias, key_mask = _inputs(Hi=3)
    return [q, k, v, idx.contiguous(), bias.contiguous(), key_mask.to(torch.uint8), 0.3]


@pytest.mark.parametrize('bad', ['index_high', 'index_low', 'index_dtype', 'index_shape', 'noncontiguous', 'dtype',
                                 'mixed_dtype', 'shape', 'bias_shape', 'mask_shape', 'mask_dtype'])
def test_custom_op_rejects_bad_input(bad):
    args = _op_args()
    if bad == 'index_high':
        args[3] = args[3].clone().fill_(7)
    elif bad == 'index_low':
        args[3] = args[3].clone().fill_(-1)
    elif bad == 'index_dtype':
        args[3] = args[3].int()
    elif bad == 'index_shape':
        args[3] = args[3][:, :1].contiguous()
    elif bad == 'noncontiguous':
        args[1] = args[1].transpose(1, 2).contiguous().transpose(1, 2)
    elif bad == 'dtype':
        args[:3] = [x.to(torch.int32) for x in args[:3]]
    elif bad == 'mixed_dtype':
        args[2] = args[2].float()
    elif bad == 'shape':
        args[2] = args[2][:, :, :4].contiguous()
    elif bad == 'bias_shape':
        args[4] = args[4][..., :2].contiguous()
    elif bad == 'mask_shape':
        args[5] = args[5][:, :, :4].contiguous()
    elif bad == 'mask_dtype':
        args[5] = args[5].bool()
    with pytest.raises(ValueError):
        bsa_cpu_fwd(*args)


def test_backward_op_checks_and_opcheck():
    args = _op_args()
    out, lse = bsa_cpu_fwd(*args)
    with pytest.raises(ValueError):
        bsa_cpu_bwd(out, *args[:3], out, lse[..., :2].contiguous(), *args[3:])
    bad_idx = args[3].clone().fill_(9)
    with pytest.raises(ValueError):
        bsa_cpu_bwd(out, *args[:3], out, lse, bad_idx, *args[4:])
    xs = [x.requires_grad_(True) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in args]
    torch.library.opcheck(bsa_cpu_fwd, xs)
