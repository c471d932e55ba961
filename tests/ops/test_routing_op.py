"""bilevel_routing_attention: masked padding against a naive loop, backends, errors."""
import pytest
import torch

from visionattn.ops.routing import bilevel_routing_attention, region_partition, region_reverse


def _maps(B=2, H=8, W=12, Cqk=16, C=24, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, W, c, generator=g, dtype=dtype) for c in (Cqk, Cqk, C)]


def _naive(q, k, v, num_heads, n_win, topk, scale):
    """Token loops: regions of ceil(H/n_win) x ceil(W/n_win) cells, descriptors over real tokens only."""
    B, H, W, Cqk = q.shape
    C = v.shape[-1]
    h, w = -(-H // n_win), -(-W // n_win)
    regions = [[(y, x) for y in range(r * h, min((r + 1) * h, H)) for x in range(c * w, min((c + 1) * w, W))]
               for r in range(n_win) for c in range(n_win)]
    out = torch.zeros(B, H, W, C, dtype=q.dtype)
    for b in range(B):
        def desc(t, b=b):
            return torch.stack([torch.stack([t[b, y, x] for y, x in reg]).mean(0) if reg else
                                torch.zeros(Cqk, dtype=q.dtype) for reg in regions])
        logits = (desc(q) * scale) @ desc(k).T
        logits[:, [i for i, reg in enumerate(regions) if not reg]] = float('-inf')
        idx = logits.topk(topk, dim=-1).indices
        for r, reg in enumerate(regions):
            keys = [yx for m in idx[r].tolist() for yx in regions[m]]
            for y, x in reg:
                for m in range(num_heads):
                    dq, dv = Cqk // num_heads, C // num_heads
                    qq = q[b, y, x, m * dq:(m + 1) * dq]
                    kk = torch.stack([k[b, yy, xx, m * dq:(m + 1) * dq] for yy, xx in keys])
                    vv = torch.stack([v[b, yy, xx, m * dv:(m + 1) * dv] for yy, xx in keys])
                    out[b, y, x, m * dv:(m + 1) * dv] = torch.softmax(scale * kk @ qq, 0) @ vv
    return out


def test_partition_roundtrip():
    x = torch.arange(2 * 6 * 9 * 2).reshape(2, 6, 9, 2)
    parts = region_partition(x, 3)
    assert parts.shape == (2, 9, 6, 2)
    assert parts[0, 1, :, 0].tolist() == x[0, 0:2, 3:6, 0].flatten().tolist()  # region (0, 1), row-major tokens
    assert torch.equal(region_reverse(parts, 3, 6, 9), x)


@pytest.mark.parametrize('H, W, n_win, topk', [(8, 12, 4, 3), (7, 10, 4, 4), (5, 6, 4, 5), (6, 6, 3, 9)])
def test_masked_matches_naive(H, W, n_win, topk):
    q, k, v = _maps(B=1, H=H, W=W)
    out = bilevel_routing_attention(q, k, v, num_heads=2, n_win=n_win, topk=topk, padding='masked')
    expect = _naive(q, k, v, 2, n_win, topk, 16 ** -0.5)
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-10)


def test_empty_regions_never_routed():
    # H=5, n_win=4: regions are 2 rows high, the last region row is all padding
    q, k, v = _maps(H=5, W=8)
    out, idx = bilevel_routing_attention(q, k, v, 2, 4, topk=4, return_index=True)
    assert out.shape == (2, 5, 8, 24) and torch.isfinite(out).all()
    assert (idx < 12).all()


def test_masked_equals_none_when_divisible():
    q, k, v = _maps()
    a = bilevel_routing_attention(q, k, v, 2, 4, 3, padding='masked')
    b = bilevel_routing_attention(q, k, v, 2, 4, 3, padding='none')
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('backend', ['gather', 'blocked'])
@pytest.mark.parametrize('size', [(8, 12), (7, 10)])
def test_backends_agree_with_grad(backend, size):
    maps = _maps(H=size[0], W=size[1])
    res = {}
    for name in ('reference', backend):
        xs = [t.clone().requires_grad_() for t in maps]
        out = bilevel_routing_attention(*xs, num_heads=2, n_win=4, topk=3, backend=name)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        res[name] = [out] + [x.grad for x in xs]
    for a, b in zip(res[backend], res['reference']):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_scale_is_full_channel():
    q, k, v = _maps()
    default = bilevel_routing_attention(q, k, v, 2, 4, 3)
    explicit = bilevel_routing_attention(q, k, v, 2, 4, 3, scale=16 ** -0.5)
    per_head = bilevel_routing_attention(q, k, v, 2, 4, 3, scale=8 ** -0.5)
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    assert (default - per_head).abs().max() > 1e-3


@pytest.mark.parametrize('kw, match', [
    ({'topk': 17}, 'topk must lie'),
    ({'topk': 0}, 'topk must lie'),
    ({'num_heads': 5}, 'divisible by num_heads'),
    ({'padding': 'legacy'}, "padding must be 'masked' or 'none'"),
])
def test_bad_args(kw, match):
    q, k, v = _maps()
    args = {'num_heads': 2, 'n_win': 4, 'topk': 3}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        bilevel_routing_attention(q, k, v, **args)


def test_none_padding_needs_divisible():
    q, k, v = _maps(H=7)
    with pytest.raises(ValueError, match='divisible by n_win=4'):
        bilevel_routing_attention(q, k, v, 2, 4, 3, padding='none')
