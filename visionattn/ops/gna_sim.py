"""Speed-of-light simulator for tiled generalized neighborhood attention (GNA).

For a GNA config and a (query tile, key tile) shape, counts the key tiles each query tile must visit in a fused
tile-sparse kernel (one that skips tiles with no neighbour pair), and from that the FLOP-implied speedup over dense
attention (the useful pairs) and the tile-implied upper bound (the tile pairs a kernel computes). A config is
*perfectly block-sparse* for a tile shape when every visited tile is full: no masking work at all.

The GNA mask is a product of per-axis masks (``reference.gna_axis_mask``) and tiles are boxes, so a tile pair is
visited iff it is visited along every axis, and all counts factorize over the axes. With ``group_dilation=True``
(default, what fused kernels do) each dilation group of an axis is tiled as its own problem with dilation 1.
"""
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from ._args import BoolOrTuple, IntOrTuple, gna_axes, per_axis
from .reference.neighborhood import gna_axis_mask

__all__ = ['GNASim', 'simulate_gna', 'perfectly_block_sparse_strides']


@dataclass
class GNASim:
    """Counts of one simulated config (all over the whole map, one head, one batch element)."""
    q_tiles: int  # query tiles
    visited_tile_pairs: int  # (query tile, key tile) pairs a tile-sparse kernel computes
    dense_tile_pairs: int  # tile pairs of dense attention over the same tokens
    attended_pairs: int  # (query, key) pairs in the GNA mask
    dense_pairs: int  # tokens ** 2
    perfectly_block_sparse: bool  # every visited tile is full (no partial tile to mask)

    @property
    def kv_tiles_per_q_tile(self) -> float:
        return self.visited_tile_pairs / self.q_tiles

    @property
    def flop_speedup(self) -> float:
        """Dense attention FLOPs over GNA's useful FLOPs."""
        return self.dense_pairs / self.attended_pairs

    @property
    def tile_speedup(self) -> float:
        """Upper bound of a tile-sparse kernel's speedup over a dense kernel with the same tiles."""
        return self.dense_tile_pairs / self.visited_tile_pairs


def _axis(length: int, k: int, s: int, d: int, causal: bool, qt: int, kt: int, group_dilation: bool):
    """Per-axis counts: (q tiles, visited tile pairs, attended pairs, every visited tile full)."""
    groups = [(len(range(g, length, d)), 1) for g in range(d)] if group_dilation and d > 1 else [(length, d)]
    q_tiles = visited = attended = 0
    full = True
    for lg, dg in groups:
        mask, _ = gna_axis_mask(lg, k, s, dg, causal)
        nq, nk = math.ceil(lg / qt), math.ceil(lg / kt)
        padded = torch.zeros(nq * qt, nk * kt, dtype=torch.bool)
        padded[:lg, :lg] = mask
        real = torch.zeros_like(padded)
        real[:lg, :lg] = True
        occ = padded.view(nq, qt, nk, kt).any(3).any(1)
        fill = (padded == real).view(nq, qt, nk, kt).all(3).all(1)  # tile has no masked-out or padded element
        q_tiles += nq
        visited += int(occ.sum())
        attended += int(mask.sum())
        full = full and bool(fill[occ].all())
    return q_tiles, visited, attended, full


def simulate_gna(
        shape: Sequence[int],
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        q_tile: IntOrTuple = 8,
        kv_tile: IntOrTuple = 8,
        group_dilation: bool = True,
) -> GNASim:
    """Simulate a tile-sparse GNA kernel on a map of ``shape`` with the tile shapes ``q_tile``/``kv_tile`` per axis."""
    n = len(shape)
    ks, ss, ds, cs = gna_axes(n, kernel_size, stride, dilation, is_causal)
    qts, kts = per_axis(q_tile, n, 'q_tile'), per_axis(kv_tile, n, 'kv_tile')
    for a, (length, k, d) in enumerate(zip(shape, ks, ds)):
        if k * d > length:
            raise ValueError(f'axis {a}: size {length} is smaller than kernel_size * dilation = {k} * {d} = {k * d}')
    q_tiles = visited = attended = dense_tiles = tokens = 1
    full = True
    for length, k, s, d, c, qt, kt in zip(shape, ks, ss, ds, cs, qts, kts):
        aq, av, aa, af = _axis(length, k, s, d, c, qt, kt, group_dilation)
        q_tiles, visited, attended, full = q_tiles * aq, visited * av, attended * aa, full and af
        dense_tiles *= math.ceil(length / qt) * math.ceil(length / kt)
        tokens *= length
    return GNASim(q_tiles, visited, dense_tiles, attended, tokens * tokens, full)


def perfectly_block_sparse_strides(
        shape: Sequence[int],
        kernel_size: IntOrTuple,
        q_tile: IntOrTuple = 8,
        kv_tile: IntOrTuple = 8,
) -> List[Tuple[int, ...]]:
    """The per-axis strides (each 1..kernel_size) for which non-causal GNA is perfectly block-sparse."""
    n = len(shape)
    ks = per_axis(kernel_size, n, 'kernel_size')
    qts, kts = per_axis(q_tile, n, 'q_tile'), per_axis(kv_tile, n, 'kv_tile')
    options_per_axis = [
        [s for s in range(1, k + 1) if _axis(length, k, s, 1, False, qt, kt, True)[3]]
        for length, k, qt, kt in zip(shape, ks, qts, kts)]
    out: List[Tuple[int, ...]] = [()]
    for options in options_per_axis:
        out = [t + (s,) for t in out for s in options]
    return out
