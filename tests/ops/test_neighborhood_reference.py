"""The GNA reference (oracle) against hand-worked cases, a brute-force definition and NATTEN 0.21.7's Flex mask."""
import itertools
import math
import random
import warnings

import pytest
import torch

from visionattn.ops import na1d, na2d, na3d
from visionattn.ops.reference import gna_axis_mask, gna_mask, gna_reference


def _windows(mask):
    """Per-query sorted key lists of a [L, L] mask."""
    return [torch.nonzero(row).flatten().tolist() for row in mask]


def _brute_axis(length, k, s, d, causal):
    """Neighbour lists per query written from NATTEN's reference formulas (mask.hpp), independent of the oracle."""
    out = []
    for q in range(length):
        g, cq = q % d, q // d
        lg = length // d + (1 - ((g + (d - length % d)) // d))  # NATTEN's qkv_fix_dilation
        if causal:
            leader = min((cq // s) * s + s - 1, lg - 1)
            start, end = max(leader - (k - 1), 0), cq + 1
        else:
            left, right = k // 2, k // 2 + k % 2 - 1
            leader = min((cq // s) * s + s // 2, lg - 1)
            start = max(leader - left, 0) + (leader + right >= lg) * (lg - right - leader - 1)
            end = start + k
        out.append([c * d + g for c in range(start, end)])
    return out


def test_hand_worked_blocks():
    # k = s = 4 on L = 10: blocks [0, 4), [4, 8) and the last partial group shifted inward to [6, 10)
    m, _ = gna_axis_mask(10, 4, 4)
    w = _windows(m)
    assert w[:4] == [[0, 1, 2, 3]] * 4
    assert w[4:8] == [[4, 5, 6, 7]] * 4
    assert w[8:] == [[6, 7, 8, 9]] * 2


def test_hand_worked_even_kernel_and_even_stride():
    # even k = 4: two keys left, one right of the centre; clamped at the borders
    w = _windows(gna_axis_mask(8, 4)[0])
    assert w[0] == [0, 1, 2, 3] and w[3] == [1, 2, 3, 4] and w[6] == [4, 5, 6, 7] and w[7] == [4, 5, 6, 7]
    # k = 3, s = 2 on L = 7: leaders 1, 3, 5, 6 (right-hand centre); windows move by irregular steps
    w = _windows(gna_axis_mask(7, 3, 2)[0])
    assert w == [[0, 1, 2]] * 2 + [[2, 3, 4]] * 2 + [[4, 5, 6]] * 3
    # k = 5, s = 4 on L = 9: groups {0..3} leader 2 -> [0, 5); {4..7} leader 6 -> clamped [4, 9); {8} -> [4, 9)
    w = _windows(gna_axis_mask(9, 5, 4)[0])
    assert w == [[0, 1, 2, 3, 4]] * 4 + [[4, 5, 6, 7, 8]] * 5


def test_hand_worked_causal_and_dilation():
    # causal k = 3, s = 2: the group {2, 3} shares the start of its last query 3 -> keys from 1; each stops at itself
    w = _windows(gna_axis_mask(6, 3, 2, is_causal=True)[0])
    assert w == [[0], [0, 1], [1, 2], [1, 2, 3], [3, 4], [3, 4, 5]]
    # dilation 3 on L = 10: groups {0,3,6,9}, {1,4,7}, {2,5,8}; k = 3 inside each group, clamped per group
    w = _windows(gna_axis_mask(10, 3, dilation=3)[0])
    assert w[0] == [0, 3, 6] and w[9] == [3, 6, 9] and w[6] == [3, 6, 9] and w[3] == [0, 3, 6]
    assert w[1] == [1, 4, 7] and w[7] == [1, 4, 7] and w[8] == [2, 5, 8]


def test_hand_worked_rpb_index():
    # rpb index (key - query) / dilation + k - 1
    m, rel = gna_axis_mask(9, 3, dilation=2)
    assert rel[0, 0] == 2 and rel[0, 2] == 3 and rel[0, 4] == 4 and rel[4, 2] == 1 and rel[8, 4] == 0
    mask, rels = gna_mask((5, 4), (3, 3), (1, 1), (1, 1), (False, False))
    # query (0, 0) with key (1, 2): offsets (+1, +2) -> but (1, 2) is outside the 3x3 window at (0, 0)? no: window
    # of (0, 0) is rows 0..2, cols 0..2, so it is inside; rpb indices (1 + 2, 2 + 2)
    q, k = 0 * 4 + 0, 1 * 4 + 2
    assert mask[q, k] and rels[0][q, k] == 3 and rels[1][q, k] == 4


@pytest.mark.parametrize('seed', range(3))
def test_axis_mask_matches_brute_force(seed):
    rng = random.Random(seed)
    for _ in range(60):
        k = rng.randint(1, 7)
        d = rng.randint(1, 3)
        length = rng.randint(k * d, k * d + 9)
        s = rng.randint(1, k)
        causal = rng.random() < 0.4
        got = _windows(gna_axis_mask(length, k, s, d, causal)[0])
        assert got == _brute_axis(length, k, s, d, causal), (length, k, s, d, causal)


def _brute_attention(q, k, v, ks, st, dil, causal, rpb, scale, ak=None, av=None):
    """Per-query loop over explicit neighbour lists, rpb by (key - query) / dilation + k - 1 per axis."""
    shape = q.shape[1:-2]
    nbrs = [_brute_axis(shape[i], ks[i], st[i], dil[i], causal[i]) for i in range(len(shape))]
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype)
    for qc in itertools.product(*[range(n) for n in shape]):
        keys = list(itertools.product(*[nbrs[i][qc[i]] for i in range(len(shape))]))
        kk = torch.stack([k[(slice(None),) + kc] for kc in keys], 1)  # [B, n, H, D]
        vv = torch.stack([v[(slice(None),) + kc] for kc in keys], 1)
        logit = torch.einsum('bhd,bnhd->bhn', q[(slice(None),) + qc], kk) * scale
        if rpb is not None:
            idx = [[(kc[i] - qc[i]) // dil[i] + ks[i] - 1 for kc in keys] for i in range(len(shape))]
            logit = logit + rpb[(slice(None),) + tuple(torch.tensor(x) for x in idx)][None]
        if ak is not None:
            logit = torch.cat([logit, torch.einsum('bhd,bnhd->bhn', q[(slice(None),) + qc], ak) * scale], -1)
            vv = torch.cat([vv, av], 1)
        out[(slice(None),) + qc] = torch.einsum('bhn,bnhd->bhd', logit.softmax(-1), vv)
    return out


@pytest.mark.parametrize('shape,ks,st,dil,causal', [
    ((7, 6), (3, 4), (2, 1), (2, 1), (False, True)),
    ((9,), (4,), (4,), (2,), (False,)),
    ((4, 5, 6), (2, 3, 3), (1, 3, 2), (2, 1, 1), (True, False, False)),
])
def test_reference_matches_brute_force_attention(shape, ks, st, dil, causal):
    torch.manual_seed(0)
    b, h, dim = 2, 2, 4
    q, k = torch.randn(2, b, *shape, h, dim, dtype=torch.float64)
    v = torch.randn(b, *shape, h, 3, dtype=torch.float64)
    rpb = torch.randn(h, *[2 * x - 1 for x in ks], dtype=torch.float64)
    ak, av = torch.randn(b, 3, h, dim, dtype=torch.float64), torch.randn(b, 3, h, 3, dtype=torch.float64)
    ref = gna_reference(q, k, v, ks, st, dil, causal, rpb, 0.3, ak, av)
    torch.testing.assert_close(ref, _brute_attention(q, k, v, ks, st, dil, causal, rpb, 0.3, ak, av))
    ref = gna_reference(q, k, v, ks, st, dil, causal)
    torch.testing.assert_close(ref, _brute_attention(q, k, v, ks, st, dil, causal, None, dim ** -0.5))


def _random_config(rng, n, kmax=6, dmax=3, extra=7):
    ks, st, dil, causal, shape = [], [], [], [], []
    for _ in range(n):
        k = rng.randint(2, kmax)  # NATTEN requires kernel_size >= 2
        d = rng.randint(1, dmax)
        ks.append(k)
        dil.append(d)
        st.append(rng.randint(1, k))
        causal.append(rng.random() < 0.3)
        shape.append(rng.randint(k * d, k * d + extra))
    return tuple(shape), tuple(ks), tuple(st), tuple(dil), tuple(causal)


@pytest.mark.parametrize('na_dim', [1, 2, 3])
def test_mask_matches_natten_flex_mask(na_dim):
    flex = pytest.importorskip('natten.backends.flex')
    rng = random.Random(na_dim)
    small = {'kmax': 4, 'dmax': 2, 'extra': 3} if na_dim == 3 else {}
    for _ in range(15 if na_dim == 3 else 40):
        shape, ks, st, dil, causal = _random_config(rng, na_dim, **small)
        bm = flex.get_na_flex_mask('cpu', na_dim, shape, ks, st, dil, causal)
        num = math.prod(shape)
        z = torch.zeros((), dtype=torch.long)
        theirs = bm.mask_mod(z, z, torch.arange(num)[:, None], torch.arange(num)[None, :])
        ours, _ = gna_mask(shape, ks, st, dil, causal)
        assert torch.equal(ours, theirs), (shape, ks, st, dil, causal)


_NATTEN_CASES = [
    ((10,), 4, 4, 1, False),
    ((13, 11), (4, 3), (2, 3), (2, 1), (False, True)),
    ((9, 8, 7), (3, 2, 3), (2, 2, 1), (2, 3, 1), (True, False, False)),
]


@pytest.mark.parametrize('shape,ks,st,dil,causal', _NATTEN_CASES)
def test_forward_matches_natten_flex(shape, ks, st, dil, causal):
    natten = pytest.importorskip('natten')
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, *shape, 2, 16)
    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        theirs = fn(q, k, v, kernel_size=ks, stride=st, dilation=dil, is_causal=causal, backend='flex-fna')
    ours = {1: na1d, 2: na2d, 3: na3d}[len(shape)](q, k, v, ks, st, dil, causal, backend='reference')
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)

