"""Blocked GNA in pure PyTorch (backend ``blocked`` of ``visionattn.ops.neighborhood``).

Query tiles with their key halo batched through ``F.scaled_dot_product_attention``, memory O(tokens x window). Runs
everywhere, autograd through plain torch ops. Key halos are one ``unfold`` view of the zero-padded keys (uniform spans
per axis), the window mask and rpb one 4-D additive mask (which keeps CPU SDPA on its flash kernel; cached at
inference), the tile shape chosen by a cost model. Dilated axes fold their dilation groups into the batch.
Registered as the custom op ``visionattn::gna_blocked`` for ``torch.compile`` and FLOP counting.
"""
import itertools
import math
import weakref
from collections import OrderedDict
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._custom_op import recompute_custom_op
from .._dispatch import use_opaque_ops

__all__ = ['gna_blocked', 'gna_blocked_backend', 'blocked_tiling']

# Fixed cost of one query tile (per batch and head) in CPU SDPA, in query-key pairs: fitted to single-thread timings
# of na2d k7 at 14x14, 28x28 and 56x56 over tile shapes (4x4 .. 28x28) on the 2-core EPYC dev machine.
_TILE_COST = 4096


def _axis_windows(length: int, kernel_size: int, stride: int, is_causal: bool):
    """Window ``[start, end)`` of every query along one axis (dilation 1)."""
    c = torch.arange(length)
    if is_causal:
        leader = torch.clamp((c // stride) * stride + stride - 1, max=length - 1)
        start = torch.clamp(leader - kernel_size + 1, min=0)
        end = c + 1
    else:
        left, right = kernel_size // 2, kernel_size // 2 + kernel_size % 2 - 1
        leader = torch.clamp((c // stride) * stride + stride // 2, max=length - 1)
        start = torch.clamp(leader, min=left, max=length - 1 - right) - left
        end = start + kernel_size
    return start, end


@lru_cache(maxsize=4096)
def _axis_span(length: int, kernel_size: int, stride: int, is_causal: bool, tile: int) -> Tuple[int, int, int, int]:
    """``(n_tiles, pad_left, pad_right, span)`` of one axis: query tile ``i`` holds queries ``[i * tile, (i + 1) *
    tile)`` (positions past the end are padding) and reads keys ``[i * tile - pad_left, i * tile - pad_left + span)``
    of the zero-padded axis, the smallest uniform span that holds every query's window (windows are clamped inward at
    the borders, so border tiles widen the span). Uniform spans make the key halos of all tiles one ``unfold`` view."""
    start, end = _axis_windows(length, kernel_size, stride, is_causal)
    nt = -(-length // tile)
    first = (torch.arange(length) // tile) * tile
    pad_left = int((first - start).max().clamp(min=0))
    span = tile + pad_left + int((end - first - tile).max().clamp(min=0))
    return nt, pad_left, (nt - 1) * tile + span - pad_left - length, span


@lru_cache(maxsize=512)
def _axis_geometry(length: int, kernel_size: int, stride: int, is_causal: bool, tile: int):
    """``_axis_span`` plus ``mask [nt, tile, span]`` (True where the key is in the query's window; padded queries see
    every key: their outputs are dropped, and a row without keys would make NaNs) and ``rel [nt, tile, span]``, the
    rpb index ``key - query + k - 1`` (clamped where masked); on CPU."""
    nt, pad_left, pad_right, span = _axis_span(length, kernel_size, stride, is_causal, tile)
    start, end = _axis_windows(length, kernel_size, stride, is_causal)
    q = torch.arange(nt * tile)
    qc = q.clamp(max=length - 1)
    kpos = (q // tile * tile - pad_left)[:, None] + torch.arange(span)[None, :]
    mask = ((kpos >= start[qc][:, None]) & (kpos < end[qc][:, None])) | (q >= length)[:, None]
    rel = (kpos - qc[:, None] + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    return nt, pad_left, pad_right, span, mask.view(nt, tile, span), rel.view(nt, tile, span)


@lru_cache(maxsize=512)
def _default_tiles(shape: Tuple[int, ...], kernel_size, stride, is_causal) -> Tuple[int, ...]:
    """Query tile shape minimizing the modelled cost: query-key pairs computed (halo and padding included) plus a
    fixed cost per tile (``_TILE_COST``). Candidates per axis: multiples of the stride below 512 and the whole axis,
    reduced to the Pareto front of (tiles, pairs) on that axis before the joint search."""
    cands = []
    for i, length in enumerate(shape):
        s = stride[i]
        full = s * -(-length // s)
        opts = []
        for t in list(range(s, min(full, 512), s)) + [full]:
            nt, _, _, span = _axis_span(length, kernel_size[i], s, is_causal[i], t)
            opts.append((nt, nt * t * span, t))
        front, best_pairs = [], None
        for nt, pairs, t in sorted(opts):
            if best_pairs is None or pairs < best_pairs:
                front.append((t, nt, pairs))
                best_pairs = pairs
        cands.append(front)
    best, best_cost = None, None
    for combo in itertools.product(*cands):
        cost = math.prod(o[2] for o in combo) + _TILE_COST * math.prod(o[1] for o in combo)
        if best_cost is None or cost < best_cost:
            best, best_cost = tuple(o[0] for o in combo), cost
    return best


@lru_cache(maxsize=256)
def _geometry(shape: Tuple[int, ...], kernel_size, stride, is_causal, tile):
    """N-D geometry: per-axis ``(nt, pad_left, pad_right, span)``, the joint mask ``[nt, Tq, Tk]`` (None when every
    tile is dense) and the flat rpb index ``[nt, Tq, Tk]`` (CPU)."""
    n = len(shape)
    axes = [_axis_geometry(shape[i], kernel_size[i], stride[i], is_causal[i], tile[i]) for i in range(n)]
    mask = flat_rel = None
    for i, (_, _, _, _, m, r) in enumerate(axes):
        view = [1] * (3 * n)
        view[i], view[n + i], view[2 * n + i] = m.shape
        m, r = m.view(view), r.view(view)
        mask = m if mask is None else mask & m
        flat_rel = r if flat_rel is None else flat_rel * (2 * kernel_size[i] - 1) + r
    full = [a[4].shape[j] for j in range(3) for a in axes]
    nt, tq, tk = math.prod(full[:n]), math.prod(full[n:2 * n]), math.prod(full[2 * n:])
    mask = mask.expand(full).reshape(nt, tq, tk)
    flat_rel = flat_rel.expand(full).reshape(nt, tq, tk).contiguous()
    return [a[:4] for a in axes], (None if bool(mask.all()) else mask), flat_rel


def blocked_tiling(
        shape: Sequence[int],
        kernel_size: Sequence[int],
        stride: Sequence[int],
        is_causal: Optional[Sequence[bool]] = None,
) -> Tuple[Tuple[int, ...], bool, int]:
    """The blocked backend's plan for one dilation group of a ``shape`` map: its query tile, whether it runs without
    a mask (every tile dense) and the (query, key) pairs it computes (halo and padding included)."""
    shape, kernel_size, stride = tuple(shape), tuple(kernel_size), tuple(stride)
    if not len(shape) == len(kernel_size) == len(stride):
        raise ValueError(f'shape {shape}, kernel_size {kernel_size} and stride {stride} need one entry per axis')
    is_causal = (False,) * len(shape) if is_causal is None else tuple(is_causal)
    tile = _default_tiles(shape, kernel_size, stride, is_causal)
    axes, mask, _ = _geometry(shape, kernel_size, stride, is_causal, tile)
    return tile, mask is None, math.prod(nt * t * span for (nt, _, _, span), t in zip(axes, tile))


@lru_cache(maxsize=256)
def _additive_mask(shape, kernel_size, stride, is_causal, tile, heads: int, dtype: torch.dtype, device: str):
    """The geometry's mask as an additive float mask ``[1, heads * nt, Tq, Tk]`` (0 / -inf), heads-major; or None."""
    _, mask, _ = _geometry(shape, kernel_size, stride, is_causal, tile)
    if mask is None:
        return None
    add = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float('-inf'))
    return add.to(device)[None].expand(heads, *mask.shape).reshape(1, heads * mask.shape[0], *mask.shape[1:])


@lru_cache(maxsize=256)
def _rel_index(shape, kernel_size, stride, is_causal, tile, device: str):
    _, _, rel = _geometry(shape, kernel_size, stride, is_causal, tile)
    return rel.reshape(-1).to(device)


_BIAS_CACHE: 'OrderedDict[tuple, Tuple[weakref.ref, torch.Tensor]]' = OrderedDict()


def _rpb_bias(rpb, geo_key, heads, dtype, device):
    """rpb expanded over the tiles plus the mask, ``[1, heads * nt, Tq, Tk]``. Cached per rpb tensor (and version)
    when no gradient flows to it (inference): the expansion then costs nothing per call."""
    cacheable = not (torch.is_grad_enabled() and rpb.requires_grad) and type(rpb) in (torch.Tensor, nn.Parameter)
    if cacheable:
        key = (id(rpb), rpb.data_ptr(), rpb._version, geo_key, dtype, str(device))
        hit = _BIAS_CACHE.get(key)
        if hit is not None and hit[0]() is rpb:
            _BIAS_CACHE.move_to_end(key)
            return hit[1]
    _, mask, rel = _geometry(*geo_key)
    nt, tq, tk = rel.shape
    bias = rpb.reshape(heads, -1).index_select(1, _rel_index(*geo_key, str(device))).view(heads, nt, tq, tk)
    if mask is not None:
        bias = bias + _additive_mask(*geo_key, 1, bias.dtype, str(device)).view(nt, tq, tk)
    bias = bias.to(dtype).reshape(1, heads * nt, tq, tk)
    if cacheable:
        _BIAS_CACHE[key] = (weakref.ref(rpb), bias)
        while len(_BIAS_CACHE) > 32:
            _BIAS_CACHE.popitem(last=False)
    return bias


class _Halo(torch.autograd.Function):
    """Key halos of all query tiles: ``[B, *spatial, H, D]`` -> ``[B, H * nt, prod(spans), D]``, tile ``i`` reading
    ``[i * tile - pad_left, i * tile - pad_left + span)`` of the zero-padded input (one ``unfold`` view, one copy).

    The backward sums the overlapping halos back with ``prod(ceil(span / tile))`` strided adds instead of
    ``unfold_backward``'s generic accumulation (several times slower on CPU).
    """

    @staticmethod
    def forward(x, pad_left, pad_right, spans, tile):
        n = len(spans)
        p = [0, 0, 0, 0]
        for i in reversed(range(n)):
            p += [pad_left[i], pad_right[i]]
        xp = F.pad(x, p) if any(p) else x
        for i in range(n):  # -> [B, *nts, H, D, *spans]
            xp = xp.unfold(1 + i, spans[i], tile[i])
        nts = xp.shape[1:1 + n]
        perm = [0, n + 1] + [1 + i for i in range(n)] + [n + 3 + i for i in range(n)] + [n + 2]
        return xp.permute(perm).reshape(x.shape[0], x.shape[-2] * math.prod(nts), math.prod(spans), x.shape[-1])

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.pad_left, ctx.pad_right, ctx.spans, ctx.tile = inputs
        ctx.x_shape = tuple(x.shape)

    @staticmethod
    def backward(ctx, grad):
        spans, tile, shape = ctx.spans, ctx.tile, ctx.x_shape
        n = len(spans)
        b, heads, d = shape[0], shape[-2], shape[-1]
        nts = [(shape[1 + i] + ctx.pad_left[i] + ctx.pad_right[i] - spans[i]) // tile[i] + 1 for i in range(n)]
        chunks = [-(-spans[i] // tile[i]) for i in range(n)]
        # room for whole chunks past the padded end, cut off below
        buf = grad.new_zeros([b] + [(nts[i] + chunks[i]) * tile[i] for i in range(n)] + [heads, d])
        g = grad.view([b, heads] + nts + list(spans) + [d])
        perm = [0] + [j for i in range(n) for j in (2 + i, 2 + n + i)] + [1, 2 * n + 2]
        for offs in itertools.product(*[range(c) for c in chunks]):
            gs, view = g, buf
            for i, c in enumerate(offs):
                size = min(tile[i], spans[i] - c * tile[i])
                gs = gs.narrow(2 + n + i, c * tile[i], size)
                view = view.narrow(1 + 2 * i, c * tile[i], nts[i] * tile[i]).unflatten(1 + 2 * i, (nts[i], tile[i]))
                view = view.narrow(2 + 2 * i, 0, size)
            view.add_(gs.permute(perm))
        for i in range(n):
            buf = buf.narrow(1 + i, ctx.pad_left[i], shape[1 + i])
        return buf, None, None, None, None


def _gna_tiled(q, k, v, kernel_size, stride, is_causal, rpb, scale, add_k, add_v, tile=None, dropout_p=0.):
    """GNA with dilation 1 on every axis: query tiles with their key halo through SDPA.

    Queries are zero-padded to whole tiles and reshaped into tiles; the key halos are one ``unfold`` view of the
    zero-padded keys (uniform spans, see ``_axis_geometry``), copied once into the SDPA layout. The mask (and rpb) go
    to SDPA as one additive float mask of shape ``[1, heads * n_tiles, Tq, Tk]``: a 4-D mask keeps CPU SDPA on its
    fused flash kernel (a 3-D one falls back to the unfused math path, ~3x slower).
    """
    n = q.dim() - 3
    b, heads = q.shape[0], q.shape[-2]
    shape = tuple(q.shape[1:-2])
    kernel_size, stride, is_causal = tuple(kernel_size), tuple(stride), tuple(is_causal)
    if tile is None:
        tile = _default_tiles(shape, kernel_size, stride, is_causal)
    tile = tuple(tile)
    geo_key = (shape, kernel_size, stride, is_causal, tile)
    axes, mask, _ = _geometry(*geo_key)
    nts = [a[0] for a in axes]
    spans = [a[3] for a in axes]
    nt, tq = math.prod(nts), math.prod(tile)

    def pad(x, left, right):  # pad the spatial axes of [B, *spatial, H, D]
        p = [0, 0, 0, 0]
        for i in reversed(range(n)):
            p += [left[i], right[i]]
        return F.pad(x, p) if any(p) else x

    # queries: [B, *spatial, H, D] -> [B, H * nt, Tq, D] (heads-major, then tiles)
    qp = pad(q, [0] * n, [nts[i] * tile[i] - shape[i] for i in range(n)])
    qp = qp.reshape([b] + [s for i in range(n) for s in (nts[i], tile[i])] + list(q.shape[-2:]))
    perm = [0, 2 * n + 1] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [2 * n + 2]
    qt = qp.permute(perm).reshape(b, heads * nt, tq, q.shape[-1])

    halo_args = (tuple(a[1] for a in axes), tuple(a[2] for a in axes), tuple(spans), tile)
    kt, vt = _Halo.apply(k, *halo_args), _Halo.apply(v, *halo_args)
    if rpb is not None:
        attn_mask = _rpb_bias(rpb, geo_key, heads, q.dtype, q.device)
    else:
        attn_mask = _additive_mask(*geo_key, heads, q.dtype, str(q.device))
    if add_k is not None:
        n_extra = add_k.shape[1]

        def extra(x):  # [B, n, H, D] -> [B, H * nt, n, D]
            return x.transpose(1, 2)[:, :, None].expand(b, heads, nt, n_extra, x.shape[-1]).reshape(
                b, heads * nt, n_extra, x.shape[-1])

        kt = torch.cat([kt, extra(add_k)], dim=2)
        vt = torch.cat([vt, extra(add_v)], dim=2)
        if attn_mask is not None:
            attn_mask = torch.cat([attn_mask, attn_mask.new_zeros(1, heads * nt, tq, n_extra)], dim=-1)
    if attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled():
        # a mask that needs a gradient (rpb in training) rules out SDPA's flash kernel, and its math fallback adds a
        # safe-softmax pass for fully masked rows (there are none here): the same computation without it
        logits = torch.matmul(qt * scale, kt.transpose(-1, -2)) + attn_mask
        out = torch.matmul(F.dropout(logits.softmax(-1), dropout_p), vt)
    else:
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    dv = out.shape[-1]
    # [B, H * nt, Tq, Dv] -> [B, *spatial, H, Dv]
    out = out.reshape([b, heads] + nts + list(tile) + [dv])
    perm_o = [0] + [j for i in range(n) for j in (2 + i, 2 + n + i)] + [1, 2 * n + 2]
    out = out.permute(perm_o).reshape([b] + [nts[i] * tile[i] for i in range(n)] + [heads, dv])
    for i in range(n):
        if out.shape[1 + i] != shape[i]:
            out = out.narrow(1 + i, 0, shape[i])
    return out


def _pad_axis(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if x.shape[dim] == size:
        return x
    pad_shape = list(x.shape)
    pad_shape[dim] = size - x.shape[dim]
    return torch.cat([x, x.new_zeros(pad_shape)], dim=dim)


def _fold_groups(x: torch.Tensor, dim: int, d: int, lmax: int, lo: int, g: int, glen: int) -> torch.Tensor:
    """Dilation groups ``[lo, lo + g)`` of axis ``dim`` (first ``glen`` in-group positions) folded into the batch."""
    x = _pad_axis(x, dim, lmax * d).unflatten(dim, (lmax, d))
    x = x.narrow(dim + 1, lo, g).narrow(dim, 0, glen)
    return x.movedim(dim + 1, 1).flatten(0, 1)


def _gna_blocked_impl(
        q, k, v, kernel_size, stride, dilation, is_causal, rpb, scale, add_k, add_v, tile=None, dropout_p=0.):
    """Fold each dilated axis' dilation groups into the batch (groups of equal length together), then tile."""
    n = q.dim() - 3
    axis = next((i for i in range(n) if dilation[i] > 1), None)
    if axis is None:
        return _gna_tiled(q, k, v, kernel_size, stride, is_causal, rpb, scale, add_k, add_v, tile, dropout_p)
    d, length, dim = dilation[axis], q.shape[1 + axis], 1 + axis
    lmax = -(-length // d)
    rem = length % d
    sets = [(0, d, length // d)] if rem == 0 else [(0, rem, lmax), (rem, d, lmax - 1)]
    sub_dilation = tuple(1 if i == axis else dilation[i] for i in range(n))
    outs = []
    for lo, hi, glen in sets:
        g = hi - lo
        fq, fk, fv = (_fold_groups(x, dim, d, lmax, lo, g, glen) for x in (q, k, v))
        fak, fav = (None if x is None else x[:, None].expand(x.shape[0], g, *x.shape[1:]).flatten(0, 1)
                    for x in (add_k, add_v))
        o = _gna_blocked_impl(
            fq, fk, fv, kernel_size, stride, sub_dilation, is_causal, rpb, scale, fak, fav, tile, dropout_p)
        o = o.unflatten(0, (q.shape[0], g)).movedim(1, dim + 1)  # [B, ..., glen, g, ...]
        outs.append(_pad_axis(o, dim, lmax))
    out = torch.cat(outs, dim=dim + 1) if len(outs) > 1 else outs[0]
    return out.flatten(dim, dim + 1).narrow(dim, 0, length)


def gna_blocked(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        dilation: Sequence[int],
        is_causal: Sequence[bool],
        rpb: Optional[torch.Tensor] = None,
        scale: Optional[float] = None,
        additional_keys: Optional[torch.Tensor] = None,
        additional_values: Optional[torch.Tensor] = None,
        tile_shape: Optional[Sequence[int]] = None,
        dropout_p: float = 0.,
) -> torch.Tensor:
    """Blocked GNA in plain PyTorch (any rank, autograd); arguments normalized to per-axis tuples.

    Memory is O(tokens x window): each query tile of ``tile_shape`` (default: ``_default_tiles``' cost model) attends
    to a uniform key span holding its queries' windows, with an additive mask for the rest (and the rpb). ``dropout_p``
    drops attention probabilities (SDPA's dropout), for modules with ``attn_drop`` in training.
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return _gna_blocked_impl(
        query, key, value, tuple(kernel_size), tuple(stride), tuple(dilation), tuple(bool(c) for c in is_causal),
        rpb, scale, additional_keys, additional_values, None if tile_shape is None else tuple(tile_shape), dropout_p)


# ---------------------------------------------------------------------------------------------------------------------
# Custom op wrapper of the blocked backend (for torch.compile(fullgraph=True))
# ---------------------------------------------------------------------------------------------------------------------

def _gna_blocked_eager(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: List[int],
        stride: List[int],
        dilation: List[int],
        is_causal: List[bool],
        rpb: Optional[torch.Tensor],
        scale: float,
        additional_keys: Optional[torch.Tensor],
        additional_values: Optional[torch.Tensor],
) -> torch.Tensor:
    return gna_blocked(
        query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys, additional_values)


def _gna_blocked_fake(query, key, value, *args):
    return query.new_empty(query.shape[:-1] + (value.shape[-1],))


# gradients of (query, key, value, rpb, additional_keys, additional_values) by recomputation (op gna_blocked_backward)
_gna_blocked_op = recompute_custom_op('visionattn::gna_blocked', _gna_blocked_eager, _gna_blocked_fake)


def gna_blocked_backend(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
                     additional_values):
    if use_opaque_ops():
        return _gna_blocked_op(
            query, key, value, list(kernel_size), list(stride), list(dilation), list(is_causal), rpb, scale,
            additional_keys, additional_values)
    return gna_blocked(
        query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys, additional_values)
