"""block_sparse_attention: oracle semantics, backends against the oracle, autograd, compile, script, FX, errors."""
import warnings

import pytest
import torch

from visionattn.ops import BackendUnavailable, get_backend
from visionattn.ops.block_sparse import block_sparse_attention, block_sparse_attention_reference
from visionattn.ops.cpu import _ext as cpu_ext

FAST = ['gather', 'blocked']


def _naive(q, k, v, idx, scale, bias=None, key_mask=None):
    """Per query block, concatenate the listed key blocks (duplicates included) and run dense softmax attention."""
    B, Nq, Tq, H, D = q.shape
    Dv = v.shape[-1]
    out = torch.zeros(B, Nq, Tq, H, Dv, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            hi = h if idx.shape[1] > 1 else 0
            for n in range(Nq):
                blocks = idx[b, hi, n].tolist()
                keys = torch.cat([k[b, m, :, h] for m in blocks])
                vals = torch.cat([v[b, m, :, h] for m in blocks])
                logits = scale * q[b, n, :, h] @ keys.T
                if bias is not None:
                    hb = h if bias.shape[1] > 1 else 0
                    logits = logits + torch.cat([bias[b, hb, n, j].expand(k.shape[2]) for j in range(len(blocks))])
                if key_mask is not None:
                    valid = torch.cat([key_mask[b, m] for m in blocks])
                    if not valid.any():
                        continue
                    logits = logits.masked_fill(~valid, float('-inf'))
                out[b, n, :, h] = torch.softmax(logits, -1) @ vals
    return out


def _inputs(B=2, Nq=5, Tq=6, H=3, D=8, Nk=7, Tk=5, Dv=4, topk=3, Hi=1, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Nq, Tq, H, D, generator=g, dtype=dtype)
    k = torch.randn(B, Nk, Tk, H, D, generator=g, dtype=dtype)
    v = torch.randn(B, Nk, Tk, H, Dv, generator=g, dtype=dtype)
    idx = torch.randint(0, Nk, (B, Hi, Nq, topk), generator=g)
    idx[0, 0, 0] = torch.tensor([2, 2, 4][:topk])  # a duplicate
    bias = torch.randn(B, Hi, Nq, topk, generator=g, dtype=dtype)
    key_mask = torch.rand(B, Nk, Tk, generator=g) > 0.3
    return q, k, v, idx, bias, key_mask


@pytest.mark.parametrize('Hi', [1, 3])
@pytest.mark.parametrize('extras', [False, True])
def test_reference_matches_naive(Hi, extras):
    q, k, v, idx, bias, key_mask = _inputs(Hi=Hi)
    if extras:
        key_mask[1, idx[1, 0, 2]] = False  # query block 2 of batch 1 (head 0) sees only masked keys
    kw = {'bias': bias, 'key_mask': key_mask} if extras else {}
    ref = block_sparse_attention_reference(q, k, v, idx, 0.37, **kw)
    torch.testing.assert_close(ref, _naive(q, k, v, idx, 0.37, **kw), rtol=0, atol=1e-12)


def test_duplicates_count_twice():
    q, k, v, idx, _, _ = _inputs(topk=3)
    idx[:, :, :, 1] = idx[:, :, :, 0]  # every list holds slot 0's block twice
    dedup = idx[:, :, :, [0, 2]]
    bias = torch.zeros(dedup.shape, dtype=q.dtype)
    bias[..., 0] = torch.log(torch.tensor(2.0, dtype=q.dtype))
    expect = block_sparse_attention(q, k, v, dedup, bias=bias, backend='reference')
    for backend in ['reference'] + FAST:
        out = block_sparse_attention(q, k, v, idx, backend=backend)
        torch.testing.assert_close(out, expect, rtol=0, atol=1e-12)
    # and it differs from listing the block once
    once = block_sparse_attention(q, k, v, dedup, backend='reference')
    assert (once - expect).abs().max() > 1e-3


@pytest.mark.parametrize('backend', FAST)
@pytest.mark.parametrize('Hi', [1, 3])
@pytest.mark.parametrize('extras', [False, True])
def test_backend_matches_reference_fp64(backend, Hi, extras):
    q, k, v, idx, bias, key_mask = _inputs(Hi=Hi)
    if extras:
        key_mask[1, idx[1, 0, 2]] = False  # an all-masked query block: zero output, zero gradients
    leaves = [q, k, v] + ([bias] if extras else [])
    results = {}
    for name in ('reference', backend):
        xs = [t.clone().requires_grad_() for t in leaves]
        kw = {'bias': xs[3], 'key_mask': key_mask} if extras else {}
        out = block_sparse_attention(xs[0], xs[1], xs[2], idx, scale=0.41, backend=name, **kw)
        grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * grad).sum().backward()
        results[name] = [out] + [x.grad for x in xs]
    for got, want in zip(results[backend], results['reference']):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    if extras:
        assert results[backend][0][1, 2, :, 0].abs().max() == 0


@pytest.mark.parametrize('Hi', [1, 3])
def test_dense_backend_matches_reference_fp64(Hi):
    # dense SDPA with the block lists as an additive mask (duplicates: log 2), forward and gradients
    q, k, v, idx, _, _ = _inputs(Hi=Hi)
    results = {}
    for name in ('reference', 'dense'):
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = block_sparse_attention(*xs, idx, scale=0.41, backend=name)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results[name] = [out] + [x.grad for x in xs]
    for got, want in zip(results['dense'], results['reference']):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_dense_backend_choice():
    def pick(B, S, n_win, topk, heads=2, D=16, **kw):
        T = (S // n_win) ** 2
        q = torch.zeros(B, n_win ** 2, T, heads, D)
        idx = torch.zeros(B, 1, n_win ** 2, topk, dtype=torch.long)
        return get_backend('block_sparse_attention', query=q, key=q, value=q, block_index=idx, **kw).__name__

    # the fused CPU kernels (backend cpu) take every shape where they are built, but where dense SDPA is much faster
    small = 'block_sparse_cpu' if cpu_ext.load() else '_block_sparse_blocked'
    # BiFormer at 224: the 14x14 stage (topk 16 of 49 blocks of 4 tokens) runs dense, the 56x56 one cpu (or blocked)
    assert pick(4, 14, 7, 16) == 'block_sparse_dense'
    assert pick(4, 56, 7, 4) == pick(4, 56, 7, 16) == small
    assert pick(4, 28, 7, 4) == small
    # BiFormer at 512, 32x32 stage padded to 35x35 (topk 16 of 49 blocks of 25): dense beats blocked, not cpu
    assert pick(2, 35, 7, 16) == ('block_sparse_cpu' if cpu_ext.load() else 'block_sparse_dense')
    # never with a bias or key mask, nor when the mask would be too large
    assert pick(4, 14, 7, 16, bias=torch.zeros(4, 1, 49, 16)) == small
    assert pick(4, 14, 7, 16, key_mask=torch.ones(4, 49, 4, dtype=torch.bool)) == small
    assert pick(64, 56, 7, 49) == small
    q = torch.zeros(1, 4, 4, 1, 8)
    with pytest.raises(BackendUnavailable, match='bias and key_mask'):
        block_sparse_attention(q, q, q, torch.zeros(1, 1, 4, 2, dtype=torch.long), bias=torch.zeros(1, 1, 4, 2),
                               backend='dense')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_blocked_low_precision_accuracy_rule(dtype):
    """Error vs the fp32 oracle is at most 2x that of the oracle run in the low precision (FlashAttention's rule)."""
    q, k, v, idx, bias, key_mask = _inputs(dtype=torch.float32, Tq=16, Tk=16, D=16, Dv=16)
    ref32 = block_sparse_attention_reference(q, k, v, idx, 0.25, bias, key_mask)
    low = [t.to(dtype) for t in (q, k, v, bias)]
    ref_low = block_sparse_attention_reference(low[0], low[1], low[2], idx, 0.25, low[3], key_mask)
    out = block_sparse_attention(low[0], low[1], low[2], idx, 0.25, low[3], key_mask, backend='blocked')
    assert out.dtype == dtype
    err_ref = (ref_low.float() - ref32).abs().max()
    err = (out.float() - ref32).abs().max()
    assert err <= 2 * err_ref + 1e-6, (err, err_ref)


def test_default_scale_and_head_broadcast():
    q, k, v, idx, _, _ = _inputs(Hi=1)
    out = block_sparse_attention(q, k, v, idx, backend='blocked')
    per_head = block_sparse_attention(q, k, v, idx.expand(-1, 3, -1, -1), backend='reference', scale=8 ** -0.5)
    torch.testing.assert_close(out, per_head, rtol=0, atol=1e-12)


def test_auto_dispatch_cpu():
    q, k, v, idx, _, _ = _inputs(dtype=torch.float32)
    call = {'query': q, 'key': k, 'value': v, 'block_index': idx, 'bias': None, 'key_mask': None}
    fn = get_backend('block_sparse_attention', 'auto', **call)
    # small blocks, 3 of 7 listed: dense SDPA is the faster one on CPU (test_dense_backend_choice)
    assert fn.__name__ == ('_block_sparse_triton' if torch.cuda.is_available() else 'block_sparse_dense')
    fn = get_backend('block_sparse_attention', 'auto', **dict(call, key_mask=torch.ones(2, 7, 5, dtype=torch.bool)))
    small = 'block_sparse_cpu' if cpu_ext.load() else '_block_sparse_blocked'  # the fused CPU kernels, where built
    assert fn.__name__ == ('_block_sparse_triton' if torch.cuda.is_available() else small)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match='CUDA'):
            block_sparse_attention(q, k, v, idx, backend='triton')


@pytest.mark.parametrize('bad, match', [
    ({'query': torch.randn(2, 5, 6, 3)}, 'expects query/key/value'),
    ({'key': torch.randn(2, 7, 5, 2, 8)}, 'key must be'),
    ({'block_index': torch.zeros(2, 2, 5, 3, dtype=torch.long)}, 'block_index must be'),
    ({'block_index': torch.full((2, 1, 5, 3), 7)}, r'values must lie in \[0, Nk=7\)'),
    ({'block_index': torch.full((2, 1, 5, 3), -1)}, 'values must lie'),
    ({'block_index': torch.zeros(2, 1, 5, 3)}, 'integer tensor'),
    ({'bias': torch.zeros(2, 1, 5, 2)}, 'bias must be'),
    ({'key_mask': torch.ones(2, 7, 5)}, 'key_mask must be a bool'),
])
def test_bad_inputs(bad, match):
    q, k, v, idx, _, _ = _inputs(dtype=torch.float32)
    args = {'query': q, 'key': k, 'value': v, 'block_index': idx}
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(**args)


def test_check_index_opt_out():
    q, k, v, idx, _, _ = _inputs(dtype=torch.float32)
    out = block_sparse_attention(q, k, v, idx, check_index=False)
    torch.testing.assert_close(out, block_sparse_attention(q, k, v, idx, backend='reference'))


def test_unknown_backend():
    q, k, v, idx, _, _ = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match='Unknown backend'):
        block_sparse_attention(q, k, v, idx, backend='nope')


@pytest.mark.parametrize('backend', ['auto', 'blocked', 'gather'])
def test_torch_compile_fullgraph(backend):
    q, k, v, idx, bias, key_mask = _inputs(dtype=torch.float32)
    fn = torch.compile(block_sparse_attention, fullgraph=True, backend='aot_eager')
    xs = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    out = fn(xs[0], xs[1], xs[2], idx, 0.3, xs[3], key_mask, backend)
    out.sum().backward()
    ref = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    expect = block_sparse_attention_reference(ref[0], ref[1], ref[2], idx, 0.3, ref[3], key_mask)
    expect.sum().backward()
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-5)
    for a, b in zip(xs, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-5)


def test_torchscript_pure_pytorch_path():
    q, k, v, idx, bias, key_mask = _inputs(dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        scripted = torch.jit.script(block_sparse_attention)
    out = scripted(q, k, v, idx, 0.3, bias, key_mask)
    torch.testing.assert_close(out, block_sparse_attention_reference(q, k, v, idx, 0.3, bias, key_mask))


def test_fx_notrace():
    from timm.layers import get_notrace_functions
    from timm.models import create_feature_extractor

    assert block_sparse_attention in get_notrace_functions()

    class M(torch.nn.Module):
        def forward(self, q, k, v, idx):
            return block_sparse_attention(q, k, v, idx, backend='blocked') * 2

    q, k, v, idx, _, _ = _inputs(dtype=torch.float32)
    fx = create_feature_extractor(M(), return_nodes=['mul'])
    torch.testing.assert_close(fx(q, k, v, idx)['mul'], M()(q, k, v, idx))


@pytest.mark.parametrize('Hi', [1, 3])
@pytest.mark.parametrize('step_bytes', [1, 20000, 40000, 10 ** 9])
def test_blocked_steps(monkeypatch, step_bytes, Hi):
    """Budgets from one query block and one slot per step (online softmax), through several query blocks per chunk,
    to everything in one step give the oracle's output and gradients (shared and per-head index lists)."""
    import visionattn.ops.blocked.block_sparse as bs
    monkeypatch.setattr(bs, '_BLOCKED_STEP_BYTES', step_bytes)
    q, k, v, idx, bias, key_mask = _inputs(Hi=Hi)
    key_mask[1, idx[1, 0, 2]] = False
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    ref_inputs = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    out = block_sparse_attention(*inputs[:3], idx, 0.37, bias=inputs[3], key_mask=key_mask, backend='blocked')
    ref = block_sparse_attention_reference(*ref_inputs[:3], idx, 0.37, bias=ref_inputs[3], key_mask=key_mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for a, b in zip(inputs, ref_inputs):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-10)
