"""NeighborhoodAttention1d/2d/3d modules over the GNA op."""
import pytest
import torch
import torch.nn.functional as F

from visionattn.layers import NeighborhoodAttention1d, NeighborhoodAttention2d, NeighborhoodAttention3d
from visionattn.ops.reference import gna_reference


def _manual(m, x):
    """qkv -> reference GNA -> proj, written out."""
    heads, hd = m.num_heads, m.head_dim
    q, k, v = m.qkv(x).reshape(*x.shape[:-1], 3, heads, hd).unbind(-3)
    o = gna_reference(q, k, v, m.kernel_size, m.stride, m.dilation, m.is_causal, m.rpb, m.scale)
    return m.proj(o.reshape(x.shape))


@pytest.mark.parametrize('cls,shape,kw', [
    (NeighborhoodAttention1d, (11,), {'kernel_size': 4, 'stride': 2, 'is_causal': True}),
    (NeighborhoodAttention2d, (9, 10), {'kernel_size': 3, 'dilation': (2, 3), 'rel_pos_bias': True}),
    (NeighborhoodAttention3d, (4, 5, 6), {'kernel_size': (2, 3, 3), 'stride': (1, 1, 3), 'rel_pos_bias': True}),
])
def test_module_matches_manual(cls, shape, kw):
    torch.manual_seed(0)
    m = cls(16, 2, **kw).eval()
    x = torch.randn(2, *shape, 16)
    out = m(x)
    torch.testing.assert_close(out, _manual(m, x), atol=1e-5, rtol=0)
    out.sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_rpb_layout_and_pad_input():
    m = NeighborhoodAttention2d(16, 4, kernel_size=(5, 3), dilation=2, rel_pos_bias=True, small_input='pad').eval()
    assert m.rpb.shape == (4, 9, 5)
    x = torch.randn(1, 7, 9, 16)  # height 7 < 5 * 2: padded to 10, width 9 >= 3 * 2 untouched
    ref = _manual(m, F.pad(x, (0, 0, 0, 0, 0, 3)))[:, :7]
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='axis 0: input size 7'):
        NeighborhoodAttention2d(16, 4, kernel_size=(5, 3), dilation=2)(x)


def test_attn_drop_and_extra_kv():
    torch.manual_seed(0)
    m = NeighborhoodAttention2d(16, 2, kernel_size=3, attn_drop=0.5)
    x = torch.randn(1, 6, 6, 16)
    m.train()
    a, b = m(x), m(x)
    assert not torch.allclose(a, b)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    ak, av = torch.randn(2, 1, 3, 2, 8).unbind(0)
    out = m(x, ak, av)
    assert out.shape == x.shape and not torch.allclose(out, m(x))
