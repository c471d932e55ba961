"""Pure-PyTorch backends of top-k attention (``visionattn.ops.topk``): ``sparse`` and ``masked_sdpa``.

* ``sparse``: the scores are a sampled dense-dense product (SDDMM over a CSR pattern), the softmax runs over the ``K``
  scores of each row, ``softmax @ V`` is ``F.embedding_bag`` with per-sample weights; the backward scatters the
  probabilities into the dense pattern and runs batched GEMMs (``sparse_forward`` / ``sparse_backward``, run through
  the ``visionattn::topk_attn_fwd`` / ``_bwd`` custom ops).
* ``masked_sdpa``: ``F.scaled_dot_product_attention`` with the additive mask of the index (dense work).
"""
import os
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['sparse_forward', 'sparse_backward', 'sparse_priority', 'sparse_unsupported', 'topk_masked_sdpa']


def _rows(t: Tensor, order: bool) -> Tuple[Tensor, int, int]:
    """A ``[rows, D]`` matrix view of ``t`` ``[B, N, H, D]`` whose row ``(b * sB + n * sN) / D + h`` is ``t[b, n, h]``
    (a strided view of a packed qkv projection needs no copy), with ``sB / D`` and ``sN / D``. With ``order`` the
    rows must increase with ``(b, n, h)``. Copies ``t`` when its strides do not allow such a view."""
    B, N, H, D = t.shape
    sB, sN, sH, sD = t.stride()
    ok = sD == 1 and sH == D and sB % D == 0 and sN % D == 0 and sB >= 0 and sN >= 0
    if ok and order:
        ok = (N == 1 or sN >= H * D) and (B == 1 or sB >= N * sN)
    if not ok:
        t = t.contiguous()
        sB, sN = N * H * D, H * D
    rows = ((B - 1) * sB + (N - 1) * sN) // D + H
    return t.as_strided((rows, D), (D, 1)), sB // D, sN // D


def _dense_rows(q: Tensor, k: Tensor, scale: float, num_dense: int) -> Tensor:
    """Softmax attention ``[B, H, nd, Nk]`` of the first ``num_dense`` query rows over all keys."""
    s = (q[:, :num_dense, None] * k[:, None]).sum(dim=-1) * scale  # [B, nd, Nk, H]
    return s.softmax(dim=2).permute(0, 3, 1, 2)


def sparse_forward(
        q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float, num_dense: int, dropout_p: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns the output ``[B, Nq, H, Dv]``, the probabilities of the listed rows ``[B, Nq - nd, H, K]`` (dense rows
    are recomputed in the backward), their dropped-out version and the dense rows' dropped-out probabilities
    ``[B, H, nd, Nk]`` (both empty without dropout).

    The listed rows are one CSR matrix over matrix views of q, k, v (``_rows``; no copies), ``K`` nonzeros per listed
    query row and none in other rows: the scores are its SDDMM with ``q k^T``, ``softmax @ V`` an ``embedding_bag``
    over the rows of ``V``, whose output is already in the ``[B, N, H, Dv]`` layout. The dense rows (class token) are a
    small dense attention.
    """
    B, Nq, H, D = q.shape
    Dv = v.shape[-1]
    K = index.shape[-1]
    Nr = Nq - num_dense
    dev = q.device
    outs = []
    cd = q.new_empty(0)
    if num_dense:  # a few rows: broadcast products (a matmul with one query row is slower on strided K/V)
        attn = _dense_rows(q, k, scale, num_dense)  # [B, H, nd, Nk]
        if dropout_p > 0:
            attn = cd = F.dropout(attn, dropout_p)
        outs.append((attn.permute(0, 2, 3, 1)[..., None] * v[:, None]).sum(dim=2))  # [B, nd, H, Dv]
    p = pd = q.new_empty(0)
    if Nr:
        R = B * Nr * H
        itype = torch.int32 if q.is_cuda else torch.int64  # cuSPARSE SDDMM takes int32 indices
        q2, qb, qn = _rows(q[:, num_dense:], True)
        k2, kb, kn = _rows(k, False)
        v2, vb, vn = _rows(v, False)
        b_ = torch.arange(B, device=dev).view(B, 1, 1, 1)
        h_ = torch.arange(H, device=dev).view(1, 1, H, 1)
        idx = index.permute(0, 2, 1, 3).to(itype)  # [B, Nr, H, K]
        col_k = (b_ * kb + idx * kn + h_).reshape(R, K)
        col_v = col_k if (vb, vn) == (kb, kn) else (b_ * vb + idx * vn + h_).reshape(R, K)  # rows of each view
        qrows = (b_ * qb + torch.arange(Nr, device=dev).view(1, Nr, 1, 1) * qn + h_).reshape(-1)
        counts = torch.zeros(q2.shape[0], dtype=itype, device=dev).index_fill_(0, qrows, K)
        crow = F.pad(counts.cumsum(0, dtype=itype), (1, 0))
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support is in beta')
            pattern = torch.sparse_csr_tensor(
                crow, col_k.reshape(-1), q.new_zeros(R * K), size=(q2.shape[0], k2.shape[0]), check_invariants=False)
        s = torch.sparse.sampled_addmm(pattern, q2, k2.t(), beta=0., alpha=scale)
        p = s.values().view(R, K).softmax(dim=-1)
        pd = F.dropout(p, dropout_p) if dropout_p > 0 else p
        outs.append(F.embedding_bag(col_v, v2, mode='sum', per_sample_weights=pd).view(B, Nr, H, Dv))
        p = p.view(B, Nr, H, K)
        pd = pd.view(B, Nr, H, K) if dropout_p > 0 else q.new_empty(0)
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    return out, p, pd, cd


def _probs(
        q: Tensor, k: Tensor, index: Tensor, p: Tensor, dense: Optional[Tensor], scale: float, num_dense: int,
) -> Tensor:
    """The attention probabilities as a dense ``[B, H, Nq, Nk]`` map (zeros off the pattern); the dense rows are
    recomputed from q, k unless given."""
    B, Nq, H, _ = q.shape
    Nk = k.shape[1]
    P = q.new_zeros((B, H, Nq, Nk))
    if num_dense:
        if dense is None:
            dense = _dense_rows(q, k, scale, num_dense)
        P[:, :, :num_dense] = dense
    if Nq > num_dense:
        P[:, :, num_dense:].scatter_(-1, index.long(), p.transpose(1, 2))
    return P


def sparse_backward(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, index: Tensor, p: Tensor, pd: Tensor, cd: Tensor,
        scale: float, num_dense: int, dropout_p: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Dense-pattern backward: the probabilities scattered into ``[B, H, Nq, Nk]``, then batched GEMMs."""
    qh, kh, vh, doh = (t.transpose(1, 2) for t in (q, k, v, dout))  # [B, H, N, .]
    P = _probs(q, k, index, p, None, scale, num_dense)
    dP = doh @ vh.transpose(-2, -1)  # [B, H, Nq, Nk]
    if dropout_p > 0:  # the dropped-out probabilities and the dropout factor (0 or 1 / (1 - p)) = Pd / P
        Pd = _probs(q, k, index, pd, cd if num_dense else None, scale, num_dense)
        dP = dP * torch.where(P > 0, Pd / P.clamp_min(torch.finfo(P.dtype).tiny), 0.)
    else:
        Pd = P
    dv = Pd.transpose(-2, -1) @ doh
    dS = P * (dP - (P * dP).sum(dim=-1, keepdim=True))  # zero off the pattern (P = 0 there)
    dq = (dS @ kh) * scale
    dk = (dS.transpose(-2, -1) @ qh) * scale
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


def topk_masked_sdpa(query, key, value, index, scale, num_dense=0, dropout_p=0.):
    """Dense ``F.scaled_dot_product_attention`` with the additive mask of ``index`` (0 / -inf)."""
    B, Nq, H, _ = query.shape
    mask = torch.full((B, H, Nq, key.shape[1]), float('-inf'), dtype=query.dtype, device=query.device)
    mask[:, :, :num_dense] = 0.
    mask[:, :, num_dense:].scatter_(-1, index.long(), 0.)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p,
        scale=scale)
    return out.transpose(1, 2)


# ``auto`` takes the sparse backend only up to this density ``K / Nk`` (env VISIONATTN_TOPK_SPARSE_DENSITY): above it
# dense SDPA with a mask is faster on CPU (measured, see the module docstring); asked for by name it runs at any density
_SPARSE_MAX_DENSITY = float(os.environ.get('VISIONATTN_TOPK_SPARSE_DENSITY', '0.15'))


def sparse_unsupported(query: Tensor, **kwargs) -> Optional[str]:
    if query.dtype in (torch.float16, torch.bfloat16) and not query.is_cuda:
        return f'{query.dtype}: no CPU sampled_addmm kernel'
    return None


def sparse_priority(key: Tensor, index: Tensor, **kwargs) -> int:
    # below the always-available reference above the density cap: ``auto`` never reaches it there
    return 15 if index.shape[-1] / max(key.shape[1], 1) <= _SPARSE_MAX_DENSITY else -10

