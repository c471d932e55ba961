"""The GNA speed-of-light simulator against direct counts on the dense mask."""
import itertools
import math

import pytest
import torch

from visionattn.ops.gna_sim import perfectly_block_sparse_strides, simulate_gna
from visionattn.ops.reference import gna_mask


def _tile_ids(shape, tile):
    # box tile index of every row-major token
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing='ij'), -1).reshape(-1, len(shape))
    n_tiles = [math.ceil(s / t) for s, t in zip(shape, tile)]
    ids = torch.zeros(coords.shape[0], dtype=torch.long)
    for a, t in enumerate(tile):
        ids = ids * n_tiles[a] + coords[:, a] // t
    return ids


@pytest.mark.parametrize('shape, k, s, d, causal, qt, kt', [
    ((20,), 5, 1, 1, False, 4, 4),
    ((13, 11), (3, 5), (1, 2), 1, False, (4, 3), (2, 4)),
    ((12, 10), 4, 4, 1, (True, False), 4, 4),
    ((9, 7, 6), (3, 3, 2), (2, 1, 2), 1, False, 2, 3),
])
def test_counts_equal_the_dense_mask(shape, k, s, d, causal, qt, kt):
    n = len(shape)
    tup = lambda v: (v,) * n if isinstance(v, (int, bool)) else tuple(v)
    mask, _ = gna_mask(shape, tup(k), tup(s), tup(d), tup(causal))
    q_ids, k_ids = _tile_ids(shape, tup(qt)), _tile_ids(shape, tup(kt))
    pairs = mask.nonzero()
    visited = len({(int(q_ids[i]), int(k_ids[j])) for i, j in pairs})
    sim = simulate_gna(shape, k, s, d, causal, qt, kt, group_dilation=False)
    assert sim.visited_tile_pairs == visited
    assert sim.attended_pairs == int(mask.sum())
    assert sim.q_tiles == int(q_ids.max()) + 1
    assert sim.dense_pairs == mask.numel()
    # perfectly block-sparse iff every visited tile pair is entirely in the mask
    full = all(
        bool(mask[q_ids == qi][:, k_ids == ki].all())
        for qi, ki in {(int(q_ids[i]), int(k_ids[j])) for i, j in pairs})
    assert sim.perfectly_block_sparse == full


def test_window_attention_is_perfectly_block_sparse():
    sim = simulate_gna((56, 56), kernel_size=8, stride=8, q_tile=8, kv_tile=8)
    assert sim.perfectly_block_sparse
    assert sim.kv_tiles_per_q_tile == 1
    assert sim.flop_speedup == pytest.approx(49) and sim.tile_speedup == pytest.approx(49)


def test_neighborhood_attention_counts():
    # NAT 56x56 k7: every query sees 49 keys; 8x8 tiles visit 2 or 3 key tiles per axis
    sim = simulate_gna((56, 56), kernel_size=7, q_tile=8, kv_tile=8)
    assert not sim.perfectly_block_sparse
    assert sim.flop_speedup == pytest.approx(56 * 56 / 49)
    assert 4 <= sim.kv_tiles_per_q_tile <= 9
    assert sim.tile_speedup < sim.flop_speedup


def test_dilation_groups():
    # dilation 2 on 16: two groups of 8, each a k=4, s=4 problem: tiles of 4 are perfectly block-sparse per group
    grouped = simulate_gna((16,), kernel_size=4, stride=4, dilation=2, q_tile=4, kv_tile=4)
    assert grouped.perfectly_block_sparse and grouped.kv_tiles_per_q_tile == 1
    flat = simulate_gna((16,), kernel_size=4, stride=4, dilation=2, q_tile=4, kv_tile=4, group_dilation=False)
    assert not flat.perfectly_block_sparse


def test_perfectly_block_sparse_strides():
    assert perfectly_block_sparse_strides((32,), 8, 8, 8) == [(8,)]
    strides = perfectly_block_sparse_strides((16, 16), (4, 8), (4, 8), (4, 8))
    assert strides == [(4, 8)]
    for st in itertools.product(range(1, 5), range(1, 9)):
        assert simulate_gna((16, 16), (4, 8), st, q_tile=(4, 8), kv_tile=(4, 8)).perfectly_block_sparse == (
            st in strides)


def test_bad_config():
    with pytest.raises(ValueError, match='axis 1: size 5'):
        simulate_gna((16, 5), kernel_size=3, dilation=2)
    with pytest.raises(ValueError, match='kernel_size has 3 entries'):
        simulate_gna((16, 16), kernel_size=(3, 3, 3))
