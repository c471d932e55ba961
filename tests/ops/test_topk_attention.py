"""topk_attention: every backend against the masked dense oracle (forward and gradients), the hand-written backward
with dropout against autograd through the same ops, the automatic backend choice, input checks, torch.compile."""
import math

import pytest
import torch

from visionattn.ops import get_backend
from visionattn.ops import topk as T
from visionattn.ops.topk import topk_attention, topk_attention_reference, topk_index_to_mask


def _case(B=2, N=13, H=3, D=8, K=5, num_dense=1, packed=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    if packed:  # strided views of one packed projection, as in the model
        qkv = torch.randn(B, N, 3, H, D, generator=g, dtype=dtype)
        leaves = [qkv]
    else:
        leaves = [torch.randn(B, N, H, D, generator=g, dtype=dtype) for _ in range(3)]
    index = torch.randn(B, H, N - num_dense, N, generator=g).topk(K, dim=-1, sorted=False)[1]
    return leaves, index


def _qkv(leaves):
    return leaves[0].unbind(2) if len(leaves) == 1 else leaves


@pytest.mark.parametrize('backend', ['sparse', 'masked_sdpa'])
@pytest.mark.parametrize('num_dense, packed, K', [(1, True, 5), (0, True, 3), (2, False, 13), (1, False, 1)])
def test_backend_equals_reference(backend, num_dense, packed, K):
    leaves, index = _case(num_dense=num_dense, packed=packed, K=K)
    results = []
    for b in (backend, 'reference'):
        xs = [t.detach().clone().requires_grad_() for t in leaves]
        q, k, v = _qkv(xs)
        out = topk_attention(q, k, v, index, 0.3, num_dense=num_dense, backend=b)
        grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        results.append([out, *torch.autograd.grad(out, xs, grad)])
    for a, r in zip(*results):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


def test_reference_is_masked_softmax():
    (q, k, v), index = _case(packed=False, num_dense=1)
    mask = topk_index_to_mask(index, 13, 1)
    assert mask[:, :, 0].all() and (mask[:, :, 1:].sum(-1) == 5).all()
    out = topk_attention_reference(q, k, v, index, 0.3, 1)
    b, i, h = 1, 7, 2
    keys = mask[b, h, i].nonzero()[:, 0]
    w = torch.softmax(0.3 * k[b, keys, h] @ q[b, i, h], 0)
    torch.testing.assert_close(out[b, i, h], w @ v[b, keys, h], rtol=0, atol=1e-12)


def test_sparse_backward_with_dropout_equals_autograd():
    # the custom op's hand-written backward against autograd through the same eager ops with the same dropout masks
    leaves, index = _case()
    grads = []
    for custom in (True, False):
        xs = [t.detach().clone().requires_grad_() for t in leaves]
        q, k, v = _qkv(xs)
        torch.manual_seed(123)
        if custom:
            out = topk_attention(q, k, v, index, 0.3, num_dense=1, dropout_p=0.3, backend='sparse')
        else:
            out = T._sparse_forward(q, k, v, index, 0.3, 1, 0.3)[0]
        grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        grads.append([out, *torch.autograd.grad(out, xs, grad)])
    assert grads[0][0].abs().sum() > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_float32_and_large_budget():
    leaves, index = _case(dtype=torch.float32, N=40, H=2, D=16, K=20)
    q, k, v = _qkv(leaves)
    ref = topk_attention(q.double(), k.double(), v.double(), index, None, 1, backend='reference')
    out = topk_attention(q, k, v, index, None, 1, backend='sparse')
    assert (out.double() - ref).abs().max() < 1e-5


def test_auto_backend_by_density():
    q = torch.randn(1, 197, 6, 64)
    low = torch.zeros(1, 6, 196, math.ceil(0.1 * 197), dtype=torch.long)
    high = torch.zeros(1, 6, 196, math.ceil(0.25 * 197), dtype=torch.long)
    assert get_backend('topk_attention', query=q, key=q, value=q, index=low) is T._topk_sparse
    assert get_backend('topk_attention', query=q, key=q, value=q, index=high) is T._topk_masked_sdpa
    # an explicit request runs at any density
    assert get_backend('topk_attention', 'sparse', query=q, key=q, value=q, index=high) is T._topk_sparse


def test_input_errors():
    (q, k, v), index = _case(packed=False)
    with pytest.raises(ValueError, match='index must be'):
        topk_attention(q, k, v, index[:, :, 1:], num_dense=1)
    with pytest.raises(ValueError, match='index must be'):
        topk_attention(q, k, v, index, num_dense=2)
    with pytest.raises(ValueError, match='shape'):
        topk_attention(q[0], k, v, index)
    with pytest.raises(ValueError, match='integer'):
        topk_attention(q, k, v, index.double(), num_dense=1)
    with pytest.raises(ValueError, match='dtype'):
        topk_attention(q, k.float(), v, index, num_dense=1)


def test_compile_fullgraph():
    leaves, index = _case(dtype=torch.float32)
    q, k, v = _qkv(leaves)
    fn = torch.compile(
        lambda q, k, v: topk_attention(q, k, v, index, 0.3, num_dense=1, backend='sparse'), fullgraph=True,
        backend='aot_eager')
    torch.testing.assert_close(fn(q, k, v), topk_attention(q, k, v, index, 0.3, 1, backend='reference'),
                               rtol=0, atol=1e-5)
