"""topk_attention: every backend against the masked dense oracle (forward and gradients), the hand-written backward
with dropout against autograd through the same ops, the automatic backend choice, input checks, torch.compile."""
import math

import pytest
import torch

from visionattn.ops import BackendUnavailable, get_backend
from visionattn.ops import topk as T
from visionattn.ops.blocked import topk as TB
from visionattn.ops.cpu import topk as TC
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


@pytest.mark.parametrize('backend', ['cpu', 'sparse', 'masked_sdpa'])
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
            out = TB.sparse_forward(q, k, v, index, 0.3, 1, 0.3)[0]
        grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        grads.append([out, *torch.autograd.grad(out, xs, grad)])
    assert grads[0][0].abs().sum() > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize('backend', ['cpu', 'sparse'])
@pytest.mark.parametrize('D, Dv', [(16, 16), (64, 40), (12, 12)])  # AVX2 path (D, Dv % 8 == 0), Dv % 32 != 0, generic
def test_float32_and_large_budget(backend, D, Dv):
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 2, 40, 2, D, generator=g).unbind(0)
    v = torch.randn(2, 40, 2, Dv, generator=g)
    index = torch.randn(2, 2, 39, 40, generator=g).topk(20, dim=-1)[1]
    ref = topk_attention(q.double(), k.double(), v.double(), index, None, 1, backend='reference')
    out = topk_attention(q, k, v, index, None, 1, backend=backend)
    assert (out.double() - ref).abs().max() < 1e-5


def test_cpu_inference_and_threads():
    # no gradient wanted: the kernel skips the probabilities; rows split over threads give the same result
    leaves, index = _case(B=3, N=50, H=4, D=16, K=9, dtype=torch.float32)
    q, k, v = _qkv(leaves)
    with torch.no_grad():
        one = topk_attention(q, k, v, index, 0.3, 1, backend='cpu')
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        out = TC.cpu_forward(q, k, v, index, 0.3, 1, need_probs=False)[0]
    finally:
        torch.set_num_threads(threads)
    ref = topk_attention(q.double(), k.double(), v.double(), index, 0.3, 1, backend='reference')
    assert (one.double() - ref).abs().max() < 1e-5
    torch.testing.assert_close(out, one, rtol=0, atol=0)


def test_cpu_index_out_of_range_is_an_error():
    (q, k, v), index = _case(packed=False)
    with pytest.raises(ValueError, match=r'index values must be in \[0, Nk=13\)'):
        topk_attention(q, k, v, index + 13, num_dense=1, backend='cpu')
    with pytest.raises(ValueError, match='index values'):
        topk_attention(q, k, v, index - 1, num_dense=1, backend='cpu')


def test_auto_backend_by_density(monkeypatch):
    q = torch.randn(1, 197, 6, 64)

    def pick(density, backend='auto', query=q):
        index = torch.zeros(1, 6, 196, math.ceil(density * 197), dtype=torch.long)
        return get_backend('topk_attention', backend, query=query, key=query, value=query, index=index)

    # the C kernel at every density (faster than masked dense SDPA up to density 1, measured)
    assert pick(0.1) is T._topk_cpu and pick(0.25) is T._topk_cpu and pick(1.0) is T._topk_cpu
    assert pick(0.25, query=q.double()) is T._topk_cpu
    assert pick(0.25, query=q.bfloat16()) is TB.topk_masked_sdpa  # no bf16 C kernel
    # an explicit request runs at any density
    assert pick(0.5, 'sparse') is T._topk_sparse
    # without the C kernels: the sparse backend at low density, dense SDPA above
    from visionattn.ops import cpu
    monkeypatch.setattr(cpu, '_STATE', {'error': 'disabled by VISIONATTN_NO_CPU_KERNELS'})
    assert pick(0.1) is T._topk_sparse and pick(0.25) is TB.topk_masked_sdpa
    with pytest.raises(BackendUnavailable, match='VISIONATTN_NO_CPU_KERNELS'):
        pick(0.1, 'cpu')


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


@pytest.mark.parametrize('backend', ['cpu', 'sparse'])
def test_compile_fullgraph(backend):
    leaves, index = _case(dtype=torch.float32)
    q, k, v = _qkv(leaves)
    fn = torch.compile(
        lambda q, k, v: topk_attention(q, k, v, index, 0.3, num_dense=1, backend=backend), fullgraph=True,
        backend='aot_eager')
    torch.testing.assert_close(fn(q, k, v), topk_attention(q, k, v, index, 0.3, 1, backend='reference'),
                               rtol=0, atol=1e-5)
