"""The export formulation of GNA (``gna_gather``: windows gathered by index tensors) against the dense oracle, and the
neighborhood attention module exported with dynamic H and W."""
import random

import pytest
import torch

from tests._helpers import export_dynamic_hw
from visionattn.layers import NeighborhoodAttention2d
from visionattn.ops.reference import gna_axis_mask, gna_reference
from visionattn.ops.reference.neighborhood import gna_axis_index, gna_gather

CASES = [
    ((13,), (5,), (1,), (1,), (False,)),
    ((13,), (4,), (2,), (2,), (False,)),
    ((17,), (5,), (3,), (3,), (True,)),
    ((9, 11), (3, 4), (1, 2), (2, 1), (False, True)),
    ((12, 10), (7, 5), (7, 2), (1, 2), (True, False)),
    ((14, 14), (7, 7), (1, 1), (2, 1), (False, False)),
    ((8, 9), (2, 3), (2, 3), (3, 2), (True, True)),
    ((5, 6, 7), (3, 2, 3), (2, 1, 3), (1, 2, 2), (True, False, True)),
]


def _random_cases(n_cases, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n_cases):
        n = rng.randint(1, 3)
        ks = tuple(rng.randint(1, 6) for _ in range(n))
        dil = tuple(rng.randint(1, 3) for _ in range(n))
        st = tuple(rng.randint(1, k) for k in ks)
        causal = tuple(rng.random() < 0.4 for _ in range(n))
        shape = tuple(k * d + rng.randint(0, 5) for k, d in zip(ks, dil))
        out.append((shape, ks, st, dil, causal))
    return out


@pytest.mark.parametrize('length,k,s,d,causal', [
    (10, 4, 4, 1, False), (7, 3, 2, 1, False), (9, 5, 4, 1, False), (6, 3, 2, 1, True), (11, 3, 1, 3, False),
    (11, 3, 2, 3, True), (8, 1, 1, 2, False), (12, 6, 5, 2, True)])
def test_axis_index_is_the_axis_mask(length, k, s, d, causal):
    """Each query's gathered keys (the valid ones) are exactly its row of the oracle's mask, with the same rpb index."""
    mask, rel = gna_axis_mask(length, k, s, d, causal)
    index, valid, rel_g = gna_axis_index(length, k, s, d, causal)
    valid = torch.ones_like(index, dtype=torch.bool) if valid is None else valid
    for q in range(length):
        keys = index[q][valid[q]]
        assert sorted(keys.tolist()) == torch.nonzero(mask[q]).flatten().tolist(), (q, keys)
        assert rel_g[q][valid[q]].tolist() == rel[q, keys].tolist()


@pytest.mark.parametrize('shape,ks,st,dil,causal', CASES + _random_cases(24))
@pytest.mark.parametrize('rpb,extra', [(False, False), (True, False), (True, True)], ids=['plain', 'rpb', 'rpb_extra'])
def test_gather_equals_reference(shape, ks, st, dil, causal, rpb, extra):
    g = torch.Generator().manual_seed(0)
    b, h, dim, dim_v = 2, 2, 4, 3
    q, k = (torch.randn(b, *shape, h, dim, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, *shape, h, dim_v, generator=g, dtype=torch.float64)
    bias = torch.randn(h, *[2 * x - 1 for x in ks], generator=g, dtype=torch.float64) if rpb else None
    ak = torch.randn(b, 3, h, dim, generator=g, dtype=torch.float64) if extra else None
    av = torch.randn(b, 3, h, dim_v, generator=g, dtype=torch.float64) if extra else None
    ref = gna_reference(q, k, v, ks, st, dil, causal, bias, 0.3, ak, av)
    torch.testing.assert_close(gna_gather(q, k, v, ks, st, dil, causal, bias, 0.3, ak, av), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize('kernel_size,stride,dilation,causal', [
    (7, 1, 1, False), (7, 1, 3, False), (5, 2, 2, True), ((3, 5), (3, 1), (1, 2), (False, True))])
def test_module_exports_dynamic_size(kernel_size, stride, dilation, causal):
    """Exported at one size, the module (``small_input='pad'``) runs at larger, non-square and padded sizes."""
    torch.manual_seed(0)
    m = NeighborhoodAttention2d(16, 2, kernel_size, stride, dilation, causal, rel_pos_bias=True,
                                small_input='pad').eval()
    x = torch.randn(1, 14, 16, 16)
    run = export_dynamic_hw(m, x, min_size=2)
    for size in [(14, 16), (23, 17), (9, 30), (4, 3)]:  # (4, 3): smaller than the window, padded
        x = torch.randn(1, *size, 16)
        with torch.no_grad():
            torch.testing.assert_close(run(x), m(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize('small_input', ['pad', 'clamp'])
@pytest.mark.parametrize('size', [(14, 16), (9, 30), (4, 3), (21, 8)])
def test_module_export_path_equals_eager(small_input, size):
    """The export formulation of the module (padding as one token, tensor-valued lengths) equals eager, in float64."""
    from unittest import mock

    import visionattn.layers.neighborhood as layer
    torch.manual_seed(0)
    m = NeighborhoodAttention2d(8, 2, (5, 3), (2, 1), (3, 2), (False, True), rel_pos_bias=True,
                                small_input=small_input).double().eval()
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = m(x)
        with mock.patch.object(layer, 'is_exporting', lambda: True):
            got = m(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_op_exports_dynamic_size():
    """``small_input='error'``: the op itself (reference backend, which exports as ``gna_gather``) exports dynamic."""
    torch.manual_seed(0)
    m = NeighborhoodAttention2d(16, 2, 5, (2, 1), (1, 2), (True, False), rel_pos_bias=True).eval()
    x = torch.randn(1, 14, 16, 16)
    run = export_dynamic_hw(m, x, min_size=10)
    for size in [(14, 16), (23, 17), (10, 31)]:
        x = torch.randn(1, *size, 16)
        with torch.no_grad():
            torch.testing.assert_close(run(x), m(x), rtol=0, atol=1e-5)
