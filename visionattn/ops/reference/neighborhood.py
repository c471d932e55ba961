"""Reference (oracle) of generalized neighborhood attention (GNA): the dense mask from the definition.

NATTEN >= 0.20 semantics (see ``visionattn.ops.neighborhood``); O(tokens^2) memory, for tests and small inputs.

``gna_gather`` computes the same result by gathering each query's ``prod(kernel_size)`` keys with index tensors built
from the (possibly symbolic) axis lengths, O(tokens x window) memory: the formulation the reference backend exports
(the dense ``[N, N]`` mask does not export with symbolic sizes); tested against ``gna_reference`` in float64.
"""
import math
from typing import Optional, Sequence, Tuple

import torch

__all__ = ['gna_axis_mask', 'gna_mask', 'gna_reference', 'gna_axis_index', 'gna_gather']


def gna_axis_mask(
        length: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        is_causal: bool = False,
        device: Optional[torch.device] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """GNA neighbourhood along one axis, from the definition (NATTEN's reference mask).

    A query and a key are neighbours iff they are in the same dilation group (``coord % dilation``) and, in in-group
    coordinates ``c = coord // dilation`` over the group's length ``L_g``:

    * non-causal: the stride group leader is ``min((c_q // s) * s + s // 2, L_g - 1)`` (the centre query of the
      group, the right-hand one when ``s`` is even); the window centre is the leader clamped to
      ``[k // 2, L_g - 1 - (k // 2 + k % 2 - 1)]`` and covers ``k // 2`` keys left of the centre and
      ``k // 2 + k % 2 - 1`` right of it, so every query sees exactly ``k`` keys (windows move inward at borders).
    * causal: the leader is the last query of the stride group, ``min((c_q // s) * s + s - 1, L_g - 1)``; keys
      ``c_k`` with ``leader - k < c_k <= c_q``.

    Returns:
        ``mask`` bool ``[L, L]`` (query, key) and ``rel`` long ``[L, L]``, the relative position bias index
        ``(key - query) / dilation + kernel_size - 1`` (clamped into ``[0, 2k - 2]`` where ``mask`` is False).
    """
    pos = torch.arange(length, device=device)
    group = pos % dilation
    c = pos // dilation
    group_len = (length - group + dilation - 1) // dilation  # number of coords in each position's dilation group
    cq, ck = c[:, None], c[None, :]
    lq = group_len[:, None]
    same_group = group[:, None] == group[None, :]
    if is_causal:
        leader = torch.minimum((cq // stride) * stride + stride - 1, lq - 1)
        in_window = (ck <= cq) & (ck > leader - kernel_size)
    else:
        left = kernel_size // 2
        right = kernel_size // 2 + kernel_size % 2 - 1
        leader = torch.minimum((cq // stride) * stride + stride // 2, lq - 1)
        centre = torch.maximum(torch.minimum(leader, lq - 1 - right), torch.full_like(leader, left))
        in_window = (ck >= centre - left) & (ck <= centre + right)
    mask = same_group & in_window
    rel = ((pos[None, :] - pos[:, None]) // dilation + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    return mask, rel


def gna_mask(
        shape: Sequence[int],
        kernel_size: Sequence[int],
        stride: Sequence[int],
        dilation: Sequence[int],
        is_causal: Sequence[bool],
        device: Optional[torch.device] = None,
) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """Dense GNA mask over row-major flattened tokens: bool ``[N, N]`` and per-axis rpb indices, each ``[N, N]``."""
    n = len(shape)
    mask = None
    rels = []
    for i in range(n):
        m, r = gna_axis_mask(shape[i], kernel_size[i], stride[i], dilation[i], is_causal[i], device=device)
        # broadcast axis i's [L_i, L_i] to [..., L_i, ..., L_i, ...] over (query coords, key coords)
        view = [1] * (2 * n)
        view[i] = shape[i]
        view[n + i] = shape[i]
        m = m.view(view)
        rels.append(r.view(view))
        mask = m if mask is None else mask & m
    full = list(shape) + list(shape)
    num = math.prod(shape)
    mask = mask.expand(full).reshape(num, num)
    rels = tuple(r.expand(full).reshape(num, num) for r in rels)
    return mask, rels


def gna_reference(
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
) -> torch.Tensor:
    """GNA of any rank by dense masked attention; arguments already normalized to per-axis tuples.

    Layout heads-last: ``query``/``key`` ``[B, *spatial, heads, D]``, ``value`` ``[B, *spatial, heads, Dv]``.
    ``rpb`` ``[heads, 2k_0 - 1, ..., 2k_{n-1} - 1]`` is added to the scaled logits. Additional keys/values
    ``[B, n_extra, heads, D or Dv]`` are attended by every query in the same softmax, without bias.
    Computes in the input dtype. Under ``torch.export`` it runs ``gna_gather`` (the same result, no ``[N, N]`` mask).
    """
    if _is_exporting():
        return gna_gather(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
                          additional_values)
    b, heads, dim = query.shape[0], query.shape[-2], query.shape[-1]
    shape = tuple(query.shape[1:-2])
    num = math.prod(shape)
    scale = dim ** -0.5 if scale is None else scale
    q = query.reshape(b, num, heads, dim)
    k = key.reshape(b, num, heads, dim)
    v = value.reshape(b, num, heads, value.shape[-1])
    mask, rels = gna_mask(shape, kernel_size, stride, dilation, is_causal, device=query.device)
    logits = torch.einsum('bqhd,bkhd->bhqk', q, k) * scale  # [B, H, N, N]
    if rpb is not None:
        logits = logits + rpb[(slice(None),) + rels]  # [H, N, N]
    logits = logits.masked_fill(~mask, float('-inf'))
    if additional_keys is not None:
        extra = torch.einsum('bqhd,bkhd->bhqk', q, additional_keys) * scale
        logits = torch.cat([logits, extra], dim=-1)
        v = torch.cat([v, additional_values], dim=1)
    attn = logits.softmax(dim=-1)
    out = torch.einsum('bhqk,bkhd->bqhd', attn, v)
    return out.reshape(query.shape[:-1] + (value.shape[-1],))


def _is_exporting() -> bool:
    return not torch.jit.is_scripting() and torch.compiler.is_exporting()


def _minimum(a: torch.Tensor, b) -> torch.Tensor:
    return torch.minimum(a, b) if isinstance(b, torch.Tensor) else a.clamp_max(b)


def gna_axis_index(
        length,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        is_causal: bool = False,
        device: Optional[torch.device] = None,
        extent=None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Each query's ``kernel_size`` neighbours along one axis, as indices (the rule of ``gna_axis_mask``).

    ``length`` may be a symbolic size: everything is tensor arithmetic on ``arange(length)``. ``extent`` (default
    ``length``) is the length of the axis the windows are laid out on, for the first ``length`` queries of a longer
    (padded) axis; it and ``dilation`` may be 0-d tensors (computed from a symbolic size).

    Returns:
        ``index`` long ``[L, k]``, the keys' positions; ``valid`` bool ``[L, k]`` (causal only, where fewer than ``k``
        keys exist; None otherwise: non-causal windows always hold exactly ``k`` keys); ``rel`` long ``[L, k]``, the
        rpb index ``(key - query) / dilation + k - 1`` clamped into ``[0, 2k - 2]`` as in ``gna_axis_mask``.
    """
    pos = torch.arange(length, device=device)
    extent = length if extent is None else extent
    plain = isinstance(dilation, int) and dilation == 1  # (the common cases in fewer graph nodes)
    group = None if plain else pos % dilation
    c = pos if plain else pos // dilation
    group_len = extent if plain else (extent - group + dilation - 1) // dilation
    taps = torch.arange(kernel_size, device=device)
    valid = None
    if is_causal:
        leader = c if stride == 1 else _minimum((c // stride) * stride + stride - 1, group_len - 1)
        ck = (leader - kernel_size + 1)[:, None] + taps  # the k coords ending at the leader
        valid = (ck >= 0) & (ck <= c[:, None])
        ck = ck.clamp_min(0)
    else:
        left = kernel_size // 2  # (and k // 2 + k % 2 - 1 keys right of the centre)
        # stride 1: the leader is the query itself (c < group_len)
        leader = c if stride == 1 else _minimum((c // stride) * stride + stride // 2, group_len - 1)
        start = _minimum(leader - left, group_len - kernel_size).clamp_min(0)  # the centre clamped inward
        ck = start[:, None] + taps
    index = ck if plain else ck * dilation + group[:, None]
    rel = (ck - c[:, None] + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    return index, valid, rel


def gna_gather(
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
        extent: Optional[Sequence] = None,
) -> torch.Tensor:
    """GNA by gathering each query's window: ``gna_reference``'s result and arguments, O(tokens x window) memory and
    no shape-dependent Python control flow, so it exports with dynamic sizes.

    The per-axis window indices combine into one flat index of each query's ``prod(kernel_size)`` keys, so the window
    is one Gather of the head-major keys (and values) straight into ``[B, heads, N, K, D]`` (no transpose of the
    gathered window), and the rpb one Gather of the flattened table.

    With ``extent`` (per axis: an int, symbolic size or 0-d tensor, at least ``kernel_size * dilation``), the windows
    are those of an axis of that length, for the queries at its start: ``key``/``value`` then have one position more
    than ``query`` on each axis, which stands for every position past the end (NAT's zero padding: all its tokens
    have the same keys and values). ``dilation`` entries may then be 0-d tensors.
    """
    n = query.dim() - 3
    dim = query.shape[-1]
    shape = query.shape[1:-2]
    key_shape = key.shape[1:-2]
    scale = dim ** -0.5 if scale is None else scale
    win = math.prod(kernel_size)
    axes = [gna_axis_index(shape[i], kernel_size[i], stride[i], dilation[i], is_causal[i], device=query.device,
                           extent=None if extent is None else extent[i]) for i in range(n)]

    def grid(t, i):  # axis i's [L_i, k_i] table broadcast to [L_0, ..., L_{n-1}, k_0, ..., k_{n-1}]
        view = [1] * (2 * n)
        view[i], view[n + i] = t.shape
        return t.view(view)
    # row-major flat key position of each (query, tap): [*L, *k] -> [N * K]
    flat = None
    for i, (index, _, _) in enumerate(axes):
        if extent is not None:  # positions past the query axis: its one padding position
            index = index.clamp_max(shape[i])
        flat = grid(index, i) if flat is None else flat * key_shape[i] + grid(index, i)
    flat = flat.reshape(-1)

    def heads_first(t):  # [B, *L, h, D] -> [B, h, N, D]
        return t.flatten(1, n).transpose(1, 2)
    q = heads_first(query) * scale
    kg = heads_first(key).index_select(2, flat).unflatten(2, (-1, win))  # [B, h, N, K, D]
    vg = heads_first(value).index_select(2, flat).unflatten(2, (-1, win))
    logits = (q.unsqueeze(-2) * kg).sum(-1)  # [B, h, N, K]
    if rpb is not None:
        rel = None
        for i, (_, _, r) in enumerate(axes):
            rel = grid(r, i) if rel is None else rel * (2 * kernel_size[i] - 1) + grid(r, i)
        logits = logits + rpb.flatten(1).index_select(1, rel.reshape(-1)).unflatten(1, (-1, win))  # [h, N, K]
    if any(is_causal):
        valid = None
        for i, (index, v, _) in enumerate(axes):
            v = grid(torch.ones_like(index, dtype=torch.bool) if v is None else v, i)
            valid = v if valid is None else valid & v
        logits = logits.masked_fill(~valid.reshape(-1, win), float('-inf'))  # every query sees itself
    if additional_keys is not None:
        extra = q @ additional_keys.permute(0, 2, 3, 1)  # [B, h, N, n_extra]
        attn = torch.cat([logits, extra], dim=-1).softmax(dim=-1)
        out = (attn[..., :win, None] * vg).sum(-2) + attn[..., win:] @ additional_values.transpose(1, 2)
    else:
        out = (logits.softmax(dim=-1).unsqueeze(-1) * vg).sum(-2)  # [B, h, N, Dv]
    return out.transpose(1, 2).unflatten(1, shape)
