"""Sparsifiner: learned instance-dependent sparse attention on DeiT.

Paper: `Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers`
    - https://arxiv.org/abs/2303.13755 (Wei, Duke, Jiang, Aarabi, Taylor, Shkurti, CVPR 2023)

Official code: https://github.com/lim142857/Sparsifiner (``src/models/sparsifiner.py``; the repository has no license
file: the code is read and reproduced here, not copied). **No Sparsifiner checkpoints were released**: the official
training starts from the DeiT weights (``deit_small_patch16_224-cd65a155.pth``), which are this family's pretrained
weights. Loaded that way, the backbone is DeiT and the connectivity predictor is at its initialisation: train the
predictor with the attention-reconstruction loss (``aux_loss``) before using the sparse attention for anything.

Mechanism (as the official code, default config ``sparsifiner_default_config.yaml``): every block is a DeiT block
whose attention holds a low-rank *connectivity predictor* (``MaskPredictor``) fed with the block's own per-head
``q, k`` (``[B, H, N, d]``):

1. channel down-projection shared by the heads: ``q' = proj_c_q(q)``, ``k' = proj_c_k(k)`` (``d -> d / 2``);
2. token down-projection of the keys (Linformer style): ``K' = k'^T proj_n`` with ``proj_n`` ``[N, N // 6]``;
3. ``coef = softmax((q' K') * num_heads ** -0.5)`` without the class-token query row (the scale is the official
   ``num_heads ** -0.5``, not ``head_dim ** -0.5``);
4. sparse mode: only the top-8 coefficients of each row are kept, and the up-projection basis is
   ``|proj_back_n^T|`` with entries ``<= 0.02`` zeroed; reconstruction mode: dense coefficients, signed basis;
5. ``approx_attn = coef @ basis`` (``[B, H, N - 1, N]``); each query row keeps its top ``ceil(keep_rate * N)``
   keys (25%: 50 of 197), the class-token row stays dense; the mask carries no gradient;
6. the attention is the block's dense ``q k^T / sqrt(d)`` softmax restricted to the mask.

Training (official two phases): first the *attention-reconstruction* phase (``set_attn_recon(True)``, train mode):
attention runs dense, only the predictor is trained, with ``0.01 * mean_layers MSE_sum(approx_attn, teacher_attn)``
(``aux_loss``; the teacher is DeiT with the same weights, which is the model's own dense attention while the backbone
is frozen); then the backbone is fine-tuned in sparse mode with the predictor frozen, with CE + 0.5 KL distillation of
the dense teacher's logits + 0.5 MSE to its final patch tokens (``SparsifinerLoss``; ``forward_dense`` is the teacher,
``forward_distill`` the student's outputs). In mmpretrain: ``visionattn.mm.sparsifiner.SparsifinerClassifier`` with
``visionattn.mm.hooks.SparsifinerPhaseHook`` (configs/sparsifiner/*_2phase_*.py, ``tools/train.py``). Optional token
pruning (off by
default, ``token_pruning_loc``) zeroes and masks the least cls-attended tokens at the given blocks (EViT-like, the
tokens stay in place, so the patch grid is kept).

What this version changes: distinct names (``sparsifiner_deit_*``); any input size (the official model is fixed to
N = 197, see ``resample_token_proj``: ``proj_n`` and ``proj_back_n`` are resampled along the token axis like the
position embedding); with the top-k budget the attention runs through ``visionattn.ops.topk_attention`` on the kept
keys of every query row (the class-token row dense) instead of the official dense softmax + masked softmax (the
official code also keeps an unmasked softmax for every layer; here it is computed only by ``forward_sparsifiner``);
the official ``attn_drop`` (never applied by the official code) is applied; the official predictor stores the token
budget across calls (``self.attn_budget``), here it is recomputed per call (the same value at a fixed size);
``features_only``/``forward_intermediates`` give NCHW maps of the patch tokens of every block.

On the sparse attention kernel: each query row keeps its own set of keys, so the attention is
``visionattn.ops.topk_attention`` (per-row key lists; ``set_attn_backend`` / ``attn_backend``): ``triton`` on GPU (a
fused kernel reading the kept keys and values by index), ``cpu`` on CPU (a C kernel computing only the kept pairs,
reading keys and values through the index), ``sparse`` (CSR SDDMM + ``embedding_bag``, any device), ``masked_sdpa``
(dense SDPA with the mask). The predictor's two top-k selections (top-8 of the basis coefficients, top-K of the N
keys) go through ``visionattn.ops.topk_indices`` (the exact sets of ``torch.topk``). Measured on
this project's CPU (2-core AMD EPYC, AVX2, 1 thread on an isolated core; ``tools/benchmark.py sparsifiner``,
benchmarks/sparsifiner_evit_cpu_2026-11-23.md) against DeiT-S with the same weights: the attention op at keep rate 0.25
takes 0.64-0.69x (batch 1) / 0.72-0.74x (batch 32) of DeiT's dense SDPA, 1.2-1.3x at 0.5; the attention layer with its
predictor 1.6x DeiT's layer and the whole model 1.2x DeiT-S at both rates: attention is a small share of DeiT-S at
N = 197, and the predictor (its projections, ``coef @ basis`` and the top-k over N keys per row) costs more than the
attention saves.

Size semantics of pretrained weights: the position embedding and the mask predictor's token-axis projections
(``proj_n``/``proj_back_n``, whose reduced width follows the token count) belong to the training size ``img_size``
(224 for the released DeiT-based weights). Keep ``img_size`` at that size: other inputs resample both at run time
(bicubic, the DeiT rule); loading the weights into a model built for another ``img_size`` is refused with the
shapes, since the reduced width would change. The official code has no other-size path.
"""
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    Mlp,
    register_notrace_function,
    register_notrace_module,
    trunc_normal_,
)
from timm.models import generate_default_cfgs
from torch.utils.checkpoint import checkpoint

from visionattn.layers import drop_path_rates
from visionattn.layers.helpers import QkvAttention
from visionattn.ops._dispatch import is_exporting
from visionattn.ops.topk import topk_attention, topk_indices

from ._base import TokenModel
from ._convert import resample_pos_embed, reshape_patch_embed, square_grid, unwrap_state_dict
from ._hub import build_model, default_cfg
from ._registry import register_variants

__all__ = ['Sparsifiner', 'MaskPredictor', 'SparsifinerLoss', 'attn_recon_loss', 'resample_token_proj']

_logger = logging.getLogger(__name__)

_PAPER = dict(
    paper_ids='arXiv:2303.13755',
    paper_name='Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers',
    # the official repository has no license file; the weights are DeiT's (Apache-2.0)
    license='apache-2.0')


@register_notrace_function  # reason: the grid sizes decide whether to resample
def resample_token_proj(
        proj: torch.Tensor,
        feat_size: Tuple[int, int],
        base_size: Tuple[int, int],
        sum_normalize: bool = False,
) -> torch.Tensor:
    """A ``[1 + H*W, r]`` token-axis projection of a ``base_size`` grid resampled to ``feat_size``.

    The official predictor's ``proj_n`` / ``proj_back_n`` have one row per token (class token first, then the patch
    grid row-major), so they are tied to the training size like the position embedding, and are resampled the same
    way: the class-token row is kept, the grid rows are interpolated bicubically (``align_corners=False``, as the
    position embedding). With ``sum_normalize`` the grid rows are also scaled by ``base_tokens / new_tokens``:
    ``proj_n`` *sums* over the tokens (``K' = k'^T proj_n``), and the scaling keeps that sum (a Riemann sum over the
    image) at the magnitude the predictor was trained with, so the softmax over its logits keeps its temperature.
    ``proj_back_n`` is not normalised: it scores keys, the per-row top-k is invariant to a common scale, and its
    0.02 threshold keeps its meaning. At the training size both are returned unchanged.
    """
    if not is_exporting() and tuple(feat_size) == tuple(base_size):  # exporting: no size baked in
        return proj
    out = resample_pos_embed(proj.unsqueeze(0), feat_size, base_size, num_prefix_tokens=1)[0]
    if sum_normalize:
        ratio = (base_size[0] * base_size[1]) / (feat_size[0] * feat_size[1])
        out = torch.cat([out[:1], out[1:] * ratio], dim=0)
    return out


@register_notrace_module  # reason: the attention budget is computed from the token count
class MaskPredictor(nn.Module):
    """The connectivity predictor: low-rank attention scores ``approx_attn`` and the top-k sparse attention mask."""

    def __init__(
            self,
            head_dim: int,
            num_heads: int,
            num_tokens: int,
            grid_size: Tuple[int, int],
            attn_keep_rate: float = 0.25,
            reduce_n_factor: float = 6,
            reduce_c_factor: int = 2,
            share_inout_proj: bool = False,
            basis_threshold: float = 2e-2,
            basis_topk: Optional[int] = 8,
            basis_coef_threshold: float = 5e-2,
            attn_score_topk: bool = True,
            attn_score_threshold: float = 1e-4,
            prune_attn_rows: bool = False,
            prev_token_keep_rate: Optional[float] = None,
    ):
        """
        Args:
            head_dim: Per-head width of q and k.
            num_heads: Attention heads (the low-rank logits are scaled by ``num_heads ** -0.5``, as the official code).
            num_tokens: Tokens at the training size (class token included); rows of ``proj_n`` / ``proj_back_n``.
            grid_size: Patch grid at the training size (``num_tokens == 1 + H * W``).
            attn_keep_rate: Each query row keeps ``ceil(attn_keep_rate * N)`` keys (official ``ATTN_KEEP_RATE``).
            reduce_n_factor: ``proj_n`` has ``int(num_tokens // reduce_n_factor)`` columns (``REDUCE_N_FACTOR``).
            reduce_c_factor: q, k are projected to ``head_dim // reduce_c_factor`` channels (``REDUCE_C_FACTOR``).
            share_inout_proj: Use ``proj_n`` as ``proj_back_n`` (``SHARE_INOUT_PROJ``).
            basis_threshold: Sparse mode: basis entries ``|.| <= basis_threshold`` are zeroed (``BASIS_THRESHOLD``).
            basis_topk: Sparse mode: keep the top-k coefficients per row (``BASIS_COEF.TOPK``); None to threshold them
                at ``basis_coef_threshold`` instead (``BASIS_COEF.USE_TOPK False``; 0 keeps them dense).
            basis_coef_threshold: See ``basis_topk``.
            attn_score_topk: Keep the top ``ceil(attn_keep_rate * N)`` keys per row (``ATTN_SCORE.USE_TOPK``); False
                to keep the keys whose score is above ``attn_score_threshold``.
            attn_score_threshold: See ``attn_score_topk``.
            prune_attn_rows: With token pruning, pruned tokens' query rows are masked too (``PRUNE_ATTN_MATRIX_ROW``).
            prev_token_keep_rate: Keep rate of the last token-pruning block before this one (None: no pruning yet);
                the attention budget is capped at the number of tokens it left, as the official code.
        """
        super().__init__()
        if not 0 < attn_keep_rate <= 1:
            raise ValueError(f'attn_keep_rate must be in (0, 1], got {attn_keep_rate}')
        self.num_heads = num_heads
        self.num_tokens = num_tokens
        self.grid_size = tuple(grid_size)
        self.reduced_c = head_dim // reduce_c_factor
        self.reduced_n = int(num_tokens // reduce_n_factor)
        if self.reduced_n < 1 or self.reduced_c < 1:
            raise ValueError(f'reduce factors leave {self.reduced_n} tokens x {self.reduced_c} channels')
        if basis_topk is not None and basis_topk > self.reduced_n:
            raise ValueError(f'basis_topk {basis_topk} > the {self.reduced_n} reduced tokens (num_tokens {num_tokens}'
                             f' // reduce_n_factor {reduce_n_factor})')
        self.scale = num_heads ** -0.5
        self.attn_keep_rate = attn_keep_rate
        self.basis_threshold = basis_threshold
        self.basis_topk = basis_topk
        self.basis_coef_threshold = basis_coef_threshold
        self.attn_score_topk = attn_score_topk
        self.attn_score_threshold = attn_score_threshold
        self.prune_attn_rows = prune_attn_rows
        self.prev_token_keep_rate = prev_token_keep_rate
        self.share_inout_proj = share_inout_proj

        self.proj_c_q = nn.Linear(head_dim, self.reduced_c)
        self.proj_c_k = nn.Linear(head_dim, self.reduced_c)
        self.proj_n = nn.Parameter(torch.zeros(num_tokens, self.reduced_n))
        trunc_normal_(self.proj_n, std=.02)
        if share_inout_proj:
            self.proj_back_n = self.proj_n
        else:
            self.proj_back_n = nn.Parameter(torch.zeros(num_tokens, self.reduced_n))
            trunc_normal_(self.proj_back_n, std=.02)

    def attn_budget(self, num_tokens: int) -> int:
        """Keys kept per query row for ``num_tokens`` tokens (class token included)."""
        budget = math.ceil(self.attn_keep_rate * num_tokens)
        if self.prev_token_keep_rate is not None:
            budget = min(budget, math.ceil(self.prev_token_keep_rate * (num_tokens - 1)))
        return budget

    def forward(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            token_mask: Optional[torch.Tensor] = None,
            feat_size: Optional[Tuple[int, int]] = None,
            recon: bool = False,
            need_mask: bool = True,
            additive: bool = False,
            return_index: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """Predict the connectivity.

        Args:
            q: Queries ``[B, H, N, d]`` (class token first).
            k: Keys ``[B, H, N, d]``.
            token_mask: ``[B, N - 1]`` bool, False for pruned tokens (token pruning), or None.
            feat_size: Patch grid of the input (the training grid if None).
            recon: Reconstruction mode: dense coefficients and the signed basis (the official training with
                ``USE_ATTN_RECON``).
            need_mask: Compute the mask (the reconstruction phase does not use it).
            additive: Return the mask as an additive float mask (0: attend, -inf: not) in q's dtype.
            return_index: Return the kept keys of the query rows after the class token, ``[B, H, N - 1, budget]``
                (top-k mode only), instead of the mask (for ``visionattn.ops.topk_attention``).

        Returns:
            ``approx_attn`` ``[B, H, N - 1, N]``, the mask ``[B, H, N, N]`` (bool, True: attend, or additive; None
            unless ``need_mask``) and the basis coefficients ``[B, H, N - 1, r]``.
        """
        B, H, N, _ = q.shape
        feat_size = self.grid_size if feat_size is None else tuple(feat_size)
        if N != 1 + feat_size[0] * feat_size[1]:
            raise ValueError(f'{N} tokens for a {feat_size[0]}x{feat_size[1]} grid plus a class token')
        proj_n = resample_token_proj(self.proj_n, feat_size, self.grid_size, sum_normalize=True)
        proj_back_n = resample_token_proj(self.proj_back_n, feat_size, self.grid_size)
        q, k = self.proj_c_q(q), self.proj_c_k(k)  # [B, H, N, c]
        if token_mask is not None:
            keep = F.pad(token_mask, (1, 0), value=True)[:, None, :, None]
            q, k = q.masked_fill(~keep, 0.), k.masked_fill(~keep, 0.)
        k = k.transpose(-2, -1) @ proj_n.to(k.dtype)  # [B, H, c, r]
        basis = proj_back_n.t().to(q.dtype)  # [r, N]
        coef = ((q[:, :, 1:] @ k) * self.scale).softmax(dim=-1)  # [B, H, N - 1, r], no class-token row
        if not recon:
            basis = F.threshold(basis.abs(), self.basis_threshold, 0.)
            if self.basis_topk is not None:
                idx = topk_indices(coef.detach(), self.basis_topk)
                coef = torch.zeros_like(coef).scatter(-1, idx, coef.gather(-1, idx))
            elif self.basis_coef_threshold > 0:
                coef = F.threshold(coef, self.basis_coef_threshold, 0.)
        approx_attn = coef @ basis  # [B, H, N - 1, N]
        if not need_mask:
            return approx_attn, None, coef

        score = approx_attn.detach()
        if token_mask is not None:
            score = score.masked_fill(~F.pad(token_mask, (1, 0), value=True)[:, None, None, :], float('-inf'))
        if return_index:
            if not self.attn_score_topk:
                raise ValueError('return_index needs the top-k attention budget (attn_score_topk=True)')
            return approx_attn, topk_indices(score, self.attn_budget(N)), coef
        # additive: 0 where attended, -inf elsewhere (SDPA takes it at the speed of no mask; a bool mask costs ~2x
        # there, measured on CPU at N = 197); the class-token row stays dense
        if additive:
            mask = torch.full((B, H, N, N), float('-inf'), dtype=q.dtype, device=q.device)
            keep, drop = 0., float('-inf')
        else:
            mask = torch.zeros((B, H, N, N), dtype=torch.bool, device=q.device)
            keep, drop = True, False
        mask[:, :, 0] = keep
        if self.attn_score_topk:
            mask[:, :, 1:].scatter_(-1, topk_indices(score, self.attn_budget(N)), keep)
        elif self.attn_score_threshold > 0:
            mask[:, :, 1:].masked_fill_(score > self.attn_score_threshold, keep)
        else:
            raise ValueError('attn_score_topk=False needs attn_score_threshold > 0')
        if token_mask is not None and self.prune_attn_rows:
            mask[:, :, 1:].masked_fill_(~token_mask[:, None, :, None], drop)
        return approx_attn, mask, coef


@register_notrace_function  # reason: the token budget is computed from the token count
def select_tokens(cls_attn: torch.Tensor, token_mask: Optional[torch.Tensor], keep_rate: float) -> torch.Tensor:
    """Token pruning: the ``[B, N - 1]`` mask of the ``ceil(keep_rate * (N - 1))`` tokens that the class token attends
    to most (``cls_attn`` ``[B, H, N - 1]``, averaged over heads), among those still active."""
    score = cls_attn.mean(dim=1)
    if token_mask is not None:
        score = score.masked_fill(~token_mask, float('-inf'))
    idx = score.topk(math.ceil(keep_rate * score.shape[-1]), dim=-1, sorted=False)[1]
    return torch.zeros(score.shape, dtype=torch.bool, device=score.device).scatter(-1, idx, True)


class Attention(QkvAttention):
    """DeiT multi-head self-attention restricted to the connectivity predictor's mask."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            num_tokens: int,
            grid_size: Tuple[int, int],
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            token_keep_rate: Optional[float] = None,
            attn_backend: str = 'auto',
            **predictor_kwargs,
    ):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.attn_recon = False
        self.token_keep_rate = token_keep_rate  # not None: this block prunes tokens
        self.attn_backend = attn_backend  # of visionattn.ops.topk_attention
        self.mask_predictor = MaskPredictor(
            self.head_dim, num_heads, num_tokens, grid_size, **predictor_kwargs)

    def forward(
            self,
            x: torch.Tensor,
            token_mask: Optional[torch.Tensor] = None,
            feat_size: Optional[Tuple[int, int]] = None,
            need_info: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[Dict[str, torch.Tensor]]]:
        q, k, v = self.split_qkv(x)
        if token_mask is not None and not self.attn_recon:
            keep = F.pad(token_mask, (1, 0), value=True)[:, None, :, None]
            q, k, v = q.masked_fill(~keep, 0.), k.masked_fill(~keep, 0.), v.masked_fill(~keep, 0.)
        recon = self.training and self.attn_recon
        explicit = need_info or not self.fused_attn or (self.prune_rows_active(token_mask) and not recon)
        # top-k budget: the attention of the listed keys only (visionattn.ops.topk_attention); the class-token row is
        # dense; the threshold mode (a varying number of keys per row) runs dense SDPA with the mask
        use_index = not explicit and not recon and self.mask_predictor.attn_score_topk
        approx_attn, mask, coef = self.mask_predictor(
            q, k, token_mask, feat_size, recon, need_info or not recon, not explicit, use_index)
        prune = self.token_keep_rate is not None and not self.attn_recon
        drop = self.attn_drop.p if self.training else 0.
        info = None
        cls_attn = None
        if explicit:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            unmasked = attn.softmax(dim=-1)
            if recon:
                attn = unmasked
            else:
                attn = attn.masked_fill(~mask, float('-inf')).softmax(dim=-1).nan_to_num()  # pruned rows: zeros
            if prune:
                cls_attn = attn[:, :, 0, 1:]
            if need_info:
                info = dict(approx_attn=approx_attn, attn_mask=mask, basis_coef=coef, unmasked_attn=unmasked,
                            masked_attn=attn)
            x = self.attn_drop(attn) @ v
        else:
            if use_index:  # mask holds the kept keys [B, H, N - 1, budget]
                x = topk_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, self.scale, num_dense=1,
                    dropout_p=drop, backend=self.attn_backend).transpose(1, 2)
            else:
                x = F.scaled_dot_product_attention(q, k, v, attn_mask=None if recon else mask, dropout_p=drop)
            if prune:  # the class-token row is dense: recompute just that row for the ranking
                cls_attn = ((q[:, :, :1] @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)[:, :, 0, 1:]
        x = self.project(x)
        if prune:
            token_mask = select_tokens(cls_attn, token_mask, self.token_keep_rate)
        if need_info:
            info['token_mask'] = token_mask
        return x, token_mask, info

    def forward_dense(self, x: torch.Tensor, need_attn: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The plain DeiT attention of the same weights (the official dense teacher): no predictor, no mask.

        Returns the output and, with ``need_attn``, the softmax attention ``[B, H, N, N]``."""
        q, k, v = self.split_qkv(x)
        attn = None
        if need_attn or not self.fused_attn:
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        return self.project(x), attn

    def prune_rows_active(self, token_mask: Optional[torch.Tensor]) -> bool:
        # a query row can be fully masked only when pruned rows are masked: SDPA would give NaN there
        return token_mask is not None and self.mask_predictor.prune_attn_rows


class Block(nn.Module):
    """Pre-norm DeiT block with Sparsifiner attention; after token pruning the pruned tokens are zeroed."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            num_tokens: int,
            grid_size: Tuple[int, int],
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            **attn_kwargs,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim, num_heads, num_tokens, grid_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
            **attn_kwargs)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(
            self,
            x: torch.Tensor,
            token_mask: Optional[torch.Tensor] = None,
            feat_size: Optional[Tuple[int, int]] = None,
            need_info: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[Dict[str, torch.Tensor]]]:
        y, token_mask, info = self.attn(self.norm1(x), token_mask, feat_size, need_info)
        x = x + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        if token_mask is not None and not self.attn.attn_recon:
            x = torch.cat([x[:, :1], x[:, 1:].masked_fill(~token_mask.unsqueeze(-1), 0.)], dim=1)
        return x, token_mask, info

    def forward_dense(self, x: torch.Tensor, need_attn: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The DeiT block of the same weights (dense attention, no token pruning)."""
        y, attn = self.attn.forward_dense(self.norm1(x), need_attn)
        x = x + self.drop_path1(y)
        return x + self.drop_path2(self.mlp(self.norm2(x))), attn


def attn_recon_loss(
        approx_attn: Sequence[torch.Tensor],
        teacher_attn: Sequence[torch.Tensor],
        weight: float = 0.01,
) -> torch.Tensor:
    """The official attention-reconstruction loss: ``weight * mean_layers sum((approx - teacher[..., 1:, :]) ** 2)``.

    Args:
        approx_attn: Per layer ``[B, H, N - 1, N]`` predictor scores (``forward_sparsifiner(x)['approx_attn']``).
        teacher_attn: Per layer the teacher's softmax attention, ``[B, H, N, N]`` (class-token row included, dropped
            here) or ``[B, H, N - 1, N]``.
        weight: The official ``LOSS.ATTN_RECON.WEIGHT``.
    """
    if len(approx_attn) != len(teacher_attn):
        raise ValueError(f'{len(approx_attn)} predicted vs {len(teacher_attn)} teacher attention maps')
    loss = 0.
    for a, t in zip(approx_attn, teacher_attn):
        t = t[..., 1:, :] if t.shape[-2] == a.shape[-2] + 1 else t
        loss = loss + F.mse_loss(a, t.to(a.dtype), reduction='sum')
    return weight * loss / len(approx_attn)


class SparsifinerLoss(nn.Module):
    """The official training losses of the two phases (``losses.NewLoss`` with the default config), without the
    classification term (the trainer's own criterion, with its label smoothing / mixup targets).

    * ``'recon'`` (phase 1, ``set_attn_recon(True)``, only the predictors train): ``attn_recon_loss`` of the student's
      ``approx_attn`` against the dense teacher's attention (``recon_weight``, official 0.01);
    * ``'distill'`` (phase 2, sparse attention, predictors frozen): ``cls_distill_weight * KL(student || teacher)`` over
      the logits (log-softmax both sides, ``batchmean``, official 0.5) and ``token_distill_weight * MSE`` of the final
      normed patch tokens (official 0.5; only the tokens kept by token pruning, if any).
    """

    def __init__(self, recon_weight: float = 0.01, cls_distill_weight: float = 0.5, token_distill_weight: float = 0.5):
        super().__init__()
        self.recon_weight = recon_weight
        self.cls_distill_weight = cls_distill_weight
        self.token_distill_weight = token_distill_weight

    def forward(
            self,
            student: Dict[str, Union[torch.Tensor, List]],
            teacher: Dict[str, Union[torch.Tensor, List]],
            phase: str,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            student: ``Sparsifiner.forward_sparsifiner`` (phase ``'recon'``: ``approx_attn``) or
                ``Sparsifiner.forward_distill`` (``'distill'``: ``logits``, ``features``, ``token_mask``).
            teacher: ``Sparsifiner.forward_dense`` of the frozen dense teacher (``attn`` for ``'recon'``; ``logits`` and
                ``features`` for ``'distill'``), computed without gradient. For ``'recon'`` an empty dict uses the
                student's own dense attention (``unmasked_attn``, detached), which is the teacher's while the
                backbone is frozen and no stochastic depth / dropout runs.
            phase: ``'recon'`` or ``'distill'``.

        Returns:
            The weighted loss terms: ``loss_attn_recon`` or ``loss_cls_distill`` and ``loss_token_distill``.
        """
        if phase == 'recon':
            target = teacher.get('attn') or [a.detach() for a in student['unmasked_attn']]
            return dict(loss_attn_recon=attn_recon_loss(student['approx_attn'], target, self.recon_weight))
        if phase != 'distill':
            raise ValueError(f"phase must be 'recon' or 'distill', got {phase!r}")
        s, t = student['logits'], teacher['logits'].detach()
        kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t.to(s.dtype), dim=-1), reduction='batchmean',
                      log_target=True)
        fs, ft = student['features'], teacher['features'].detach().to(student['features'].dtype)
        token_mask = student.get('token_mask')
        if token_mask is not None:
            fs, ft = fs[token_mask], ft[token_mask]
        return dict(loss_cls_distill=self.cls_distill_weight * kl,
                    loss_token_distill=self.token_distill_weight * F.mse_loss(fs, ft))


class Sparsifiner(TokenModel):
    """DeiT with Sparsifiner attention: per-instance top-k attention masks from a low-rank connectivity predictor."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 6,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            attn_keep_rate: Union[float, Sequence[float]] = 0.25,
            reduce_n_factor: float = 6,
            reduce_c_factor: int = 2,
            share_inout_proj: bool = False,
            basis_threshold: float = 2e-2,
            basis_topk: Optional[int] = 8,
            basis_coef_threshold: float = 5e-2,
            attn_score_topk: bool = True,
            attn_score_threshold: float = 1e-4,
            token_pruning_loc: Sequence[int] = (),
            token_keep_rate: Union[float, Sequence[float]] = 1.,
            prune_attn_rows: bool = False,
            attn_recon: bool = False,
            attn_backend: str = 'auto',
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[Type[nn.Module]] = None,
            act_layer: Optional[Type[nn.Module]] = None,
    ):
        """
        Args:
            img_size: Training image size: sets the token count of the position embedding and of the predictor's
                ``proj_n``/``proj_back_n`` (both are resampled for other input sizes).
            patch_size: Patch size of the stem.
            in_chans: Number of input channels.
            num_classes: Number of classes of the head (0 for none).
            global_pool: ``'token'`` (class token, as DeiT), ``'avg'`` (mean of the patch tokens) or ``''``.
            embed_dim: Embedding width.
            depth: Number of blocks.
            num_heads: Attention heads.
            mlp_ratio: MLP hidden width over embed_dim.
            qkv_bias: Bias on the q/k/v projection.
            attn_keep_rate: Fraction of keys each query keeps (official ``ATTN_KEEP_RATE``), or one per block
                (``ATTN_KEEP_RATE_LIST``).
            reduce_n_factor: Token reduction of the predictor (``REDUCE_N_FACTOR``: 197 // 6 = 32).
            reduce_c_factor: Channel reduction of the predictor (``REDUCE_C_FACTOR``).
            share_inout_proj: ``proj_back_n`` is ``proj_n`` (``SHARE_INOUT_PROJ``).
            basis_threshold: ``BASIS_THRESHOLD``.
            basis_topk: ``BASIS_COEF.TOPK`` (None: ``BASIS_COEF.USE_TOPK False``, threshold instead).
            basis_coef_threshold: ``BASIS_COEF.THRESHOLD``.
            attn_score_topk: ``ATTN_SCORE.USE_TOPK``.
            attn_score_threshold: ``ATTN_SCORE.THRESHOLD``.
            token_pruning_loc: Blocks that prune tokens after their attention (``TOKEN_PRUNING_LOC``; the paper's
                token-sparsity setting uses (3, 6, 9)).
            token_keep_rate: Base token keep rate ``b`` (``TOKEN_KEEP_RATE_BASE``): block ``i`` keeps
                ``b ** (i // 3)`` of the ``N - 1`` tokens when it prunes (the official list for 12 blocks), or one rate
                per block.
            prune_attn_rows: ``PRUNE_ATTN_MATRIX_ROW``.
            attn_recon: Attention-reconstruction mode (``LOSS.USE_ATTN_RECON``); see ``set_attn_recon``.
            attn_backend: Backend of the top-k attention (``visionattn.ops.topk_attention``): ``'auto'``,
                ``'sparse'`` (only the kept query-key pairs), ``'masked_sdpa'`` (dense SDPA with the mask), ``'triton'``
                or ``'reference'``; see ``set_attn_backend``.
            drop_rate: Head dropout.
            pos_drop_rate: Dropout after the position embedding.
            proj_drop_rate: Dropout after projections.
            attn_drop_rate: Dropout on attention maps.
            drop_path_rate: Stochastic depth rate (linear over blocks).
            norm_layer: Norm layer (LayerNorm with eps 1e-6 by default, as DeiT).
            act_layer: MLP activation (GELU by default).
        """
        super().__init__()
        attn_rates = [float(attn_keep_rate)] * depth if isinstance(attn_keep_rate, (int, float)) \
            else [float(r) for r in attn_keep_rate]
        token_rates = [float(token_keep_rate) ** (i // 3) for i in range(depth)] \
            if isinstance(token_keep_rate, (int, float)) else [float(r) for r in token_keep_rate]
        if len(attn_rates) != depth or len(token_rates) != depth:
            raise ValueError(f'per-block keep rates need {depth} entries, got {len(attn_rates)} and {len(token_rates)}')
        bad = [i for i in token_pruning_loc if not 0 <= i < depth]
        if bad:
            raise ValueError(f'token_pruning_loc {tuple(token_pruning_loc)} has blocks outside [0, depth={depth})')
        norm_layer = norm_layer or (lambda d: nn.LayerNorm(d, eps=1e-6))
        act_layer = act_layer or nn.GELU
        grid_size = self._init_embed(img_size, patch_size, in_chans, num_classes, global_pool, embed_dim, pos_drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        blocks = []
        prev_rate = None
        for i in range(depth):
            blocks.append(Block(
                dim=embed_dim,
                num_heads=num_heads,
                num_tokens=grid_size[0] * grid_size[1] + 1,
                grid_size=grid_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                act_layer=act_layer,
                norm_layer=norm_layer,
                token_keep_rate=token_rates[i] if i in token_pruning_loc else None,
                attn_backend=attn_backend,
                attn_keep_rate=attn_rates[i],
                reduce_n_factor=reduce_n_factor,
                reduce_c_factor=reduce_c_factor,
                share_inout_proj=share_inout_proj,
                basis_threshold=basis_threshold,
                basis_topk=basis_topk,
                basis_coef_threshold=basis_coef_threshold,
                attn_score_topk=attn_score_topk,
                attn_score_threshold=attn_score_threshold,
                prune_attn_rows=prune_attn_rows,
                prev_token_keep_rate=prev_rate,
            ))
            if i in token_pruning_loc:
                prev_rate = token_rates[i]
        self.blocks = nn.Sequential(*blocks)
        self._init_tail(norm_layer, patch_size, drop_rate)
        self.set_attn_recon(attn_recon)

    def set_attn_recon(self, enable: bool = True) -> None:
        """Attention-reconstruction mode (the official ``cfg.LOSS.USE_ATTN_RECON``, the first training phase).

        In train mode the attention is then dense and the predictor gives dense coefficients over the signed basis
        (``approx_attn`` for ``aux_loss``); token pruning is off in this mode (train and eval), as the official code.
        """
        self.attn_recon = enable
        for blk in self.blocks:
            blk.attn.attn_recon = enable

    def set_attn_backend(self, backend: str = 'auto') -> None:
        """Backend of the sparse attention of every block (``visionattn.ops.topk_attention``; e.g. ``'sparse'`` to
        compute only the kept query-key pairs, ``'masked_sdpa'`` for dense SDPA with the mask)."""
        for blk in self.blocks:
            blk.attn.attn_backend = backend

    @property
    def aux_loss_params(self) -> List[str]:
        """Parameters trained only by the auxiliary loss (``aux_loss``): the connectivity predictors. The main loss
        gives them no gradient (the attention mask is discrete and detached, as the official code)."""
        return [n for n, _ in self.named_parameters() if '.mask_predictor.' in n]

    def predictor_parameters(self) -> List[nn.Parameter]:
        """The connectivity predictors' parameters (the official first phase optimises only these)."""
        return [p for n, p in self.named_parameters() if '.mask_predictor.' in n]

    def _block(
            self,
            i: int,
            x: torch.Tensor,
            token_mask: Optional[torch.Tensor],
            feat_size: Tuple[int, int],
            need_info: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[Dict[str, torch.Tensor]]]:
        blk = self.blocks[i]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x, token_mask, feat_size, need_info, use_reentrant=False)
        return blk(x, token_mask, feat_size, need_info)

    def _intermediates(
            self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool, norm: bool,
            output_fmt: str) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The selected blocks' patch tokens as maps (``'NCHW'``) or ``[B, H*W, C]`` (``'NLC'``).

        Token pruning zeroes pruned tokens in place, so every block's patch tokens are a full grid.
        """
        x, feat_size = self._embed(x)
        token_mask = None
        intermediates = []
        last = max_index if stop_early else len(self.blocks) - 1
        for i in range(last + 1):
            x, token_mask, _ = self._block(i, x, token_mask, feat_size)
            if i in take_indices:
                y = x[:, 1:]
                intermediates.append(self._token_map(self.norm(y) if norm else y, feat_size, output_fmt))
        return x, intermediates

    def _forward_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The normed tokens after all blocks and the last token mask (None without token pruning)."""
        x, feat_size = self._embed(x)
        token_mask = None
        for i in range(len(self.blocks)):
            x, token_mask, _ = self._block(i, x, token_mask, feat_size)
        return self.norm(x), token_mask

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_tokens(x)[0]

    @torch.jit.ignore
    def forward_dense(self, x: torch.Tensor, need_attn: bool = False) -> Dict[str, Union[torch.Tensor, List]]:
        """The dense DeiT with the same weights: the official teacher (the predictors are not used).

        Returns ``logits``, ``features`` (normed patch tokens) and, with ``need_attn``, ``attn``: per block the softmax
        attention ``[B, H, N, N]`` (the reconstruction target).
        """
        x, _ = self._embed(x)
        attn = []
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, a = checkpoint(blk.forward_dense, x, need_attn, use_reentrant=False)
            else:
                x, a = blk.forward_dense(x, need_attn)
            attn.append(a)
        x = self.norm(x)
        out = dict(logits=self.forward_head(x), features=x[:, 1:])
        if need_attn:
            out['attn'] = attn
        return out

    @torch.jit.ignore
    def forward_distill(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The sparse model's outputs for the official second training phase: ``logits``, ``features`` (normed patch
        tokens, the token-distillation input) and ``token_mask`` (the last ``[B, N - 1]`` token mask, or None)."""
        x, token_mask = self._forward_tokens(x)
        return dict(logits=self.forward_head(x), features=x[:, 1:], token_mask=token_mask)

    @torch.jit.ignore
    def forward_sparsifiner(self, x: torch.Tensor) -> Dict[str, Union[torch.Tensor, List]]:
        """The official model's output dict, for training losses and analysis.

        Returns:
            ``logits``; ``features`` (normed patch tokens, the official token-distillation target); and per block
            lists ``approx_attn`` ``[B, H, N-1, N]``, ``attn_mask`` (bool ``[B, H, N, N]``; None in the
            reconstruction phase, which does not use it), ``basis_coef``, ``unmasked_attn`` (dense softmax),
            ``masked_attn`` (the attention used) and ``token_mask`` (``[B, N-1]`` or None).
        """
        x, feat_size = self._embed(x)
        token_mask = None
        out: Dict[str, Union[torch.Tensor, List]] = {
            k: [] for k in ('approx_attn', 'attn_mask', 'basis_coef', 'unmasked_attn', 'masked_attn', 'token_mask')}
        for i in range(len(self.blocks)):
            x, token_mask, info = self._block(i, x, token_mask, feat_size, True)
            for k in info:
                out[k].append(info[k])
        x = self.norm(x)
        out['features'] = x[:, 1:]
        out['logits'] = self.forward_head(x)
        return out

    @torch.jit.ignore
    def aux_loss(
            self,
            x: torch.Tensor,
            teacher_attn: Optional[Sequence[torch.Tensor]] = None,
            weight: float = 0.01,
    ) -> torch.Tensor:
        """The attention-reconstruction loss of the official first training phase, for input ``x``.

        Runs ``x`` in reconstruction mode (dense attention; the mode is restored afterwards) and returns
        ``attn_recon_loss(approx_attn, teacher_attn, weight)``. Without ``teacher_attn`` the target is the model's
        own dense attention, detached: the official teacher is DeiT with the same weights, which is exactly that
        while the backbone is frozen (the official first phase optimises only ``predictor_parameters()``).
        """
        prev = self.attn_recon
        self.set_attn_recon(True)
        try:
            out = self.forward_sparsifiner(x)
        finally:
            self.set_attn_recon(prev)
        target = teacher_attn if teacher_attn is not None else [a.detach() for a in out['unmasked_attn']]
        return attn_recon_loss(out['approx_attn'], target, weight)


def checkpoint_filter_fn(state_dict: dict, model: Sparsifiner) -> dict:
    """Convert an official Sparsifiner training checkpoint or a plain DeiT/timm ViT checkpoint to this model.

    Official checkpoints have the DeiT keys plus ``blocks.i.attn.mask_predictor.{proj_c_q,proj_c_k}.{weight,bias}``,
    ``proj_n`` and ``proj_back_n`` (``[N, N // 6]``), under ``'model'`` in a training dict. A DeiT checkpoint has no
    predictor: its predictor tensors are taken from ``model`` (its initialisation) and a warning names how many.
    Linear patch-embedding weights are reshaped; a position embedding or predictor projection saved for another
    grid is resampled (``resample_token_proj``). A ``SparsifinerClassifier`` training checkpoint's ``teacher.`` tensors
    (the dense teacher) are dropped.
    """
    state_dict = unwrap_state_dict(state_dict)
    own = model.state_dict()
    grid = tuple(model.patch_embed.grid_size)
    out = {}
    for k, v in state_dict.items():
        if k.startswith('teacher.'):  # the frozen dense teacher of a two-phase training checkpoint (visionattn.mm)
            continue
        if k in ('dist_token', 'head_dist.weight', 'head_dist.bias'):
            raise ValueError(f'{k!r}: distilled DeiT checkpoints (a second prefix token) are not supported')
        if k == 'patch_embed.proj.weight':
            v = reshape_patch_embed(v, model.patch_embed.proj.weight.shape)
        elif k == 'pos_embed' and v.shape != model.pos_embed.shape:
            v = resample_pos_embed(v, grid, square_grid(v.shape[1] - 1, k))
        elif k.endswith(('mask_predictor.proj_n', 'mask_predictor.proj_back_n')) and k in own \
                and v.shape[0] != own[k].shape[0]:
            if v.shape[1] != own[k].shape[1]:
                raise ValueError(f'{k}: {v.shape[1]} reduced tokens, the model has {own[k].shape[1]}')
            v = resample_token_proj(v, grid, square_grid(v.shape[0] - 1, k), sum_normalize=k.endswith('proj_n'))
        out[k] = v
    missing = [k for k in own if '.mask_predictor.' in k and k not in out]
    if missing:
        _logger.warning(
            f'{len(missing)} connectivity-predictor tensors are not in the checkpoint (a plain DeiT checkpoint?): '
            'they keep their initialisation; train them with aux_loss() before using the sparse attention')
        out.update({k: own[k] for k in missing})
    return out


def _create_sparsifiner(variant: str, pretrained: bool = False, **kwargs) -> Sparsifiner:
    return build_model(Sparsifiner, variant, pretrained, checkpoint_filter_fn, default_out_indices=3, **kwargs)


def _cfg(url: str = '', **kwargs) -> dict:
    return default_cfg(url, {'origin_url': 'https://github.com/lim142857/Sparsifiner', **_PAPER}, **kwargs)


def _deit(name: str, **kwargs) -> dict:
    return _cfg(
        url=f'https://dl.fbaipublicfiles.com/deit/{name}.pth',
        hf_hub_id=f'timm/{name.rsplit("-", 1)[0]}.fb_in1k',
        notes=('DeiT weights, the official Sparsifiner training starting point: no Sparsifiner checkpoints were '
               'released. The connectivity predictor stays at its initialisation (train it with aux_loss first).',),
        **kwargs)


default_cfgs = generate_default_cfgs({
    'sparsifiner_deit_small_patch16_224.fb_in1k': _deit('deit_small_patch16_224-cd65a155'),
    'sparsifiner_deit_base_patch16_224.fb_in1k': _deit('deit_base_patch16_224-b5f2ef4d'),
})


register_variants(__name__, _create_sparsifiner, {
    'sparsifiner_deit_small_patch16_224': (
        'Sparsifiner-S: DeiT-S with 25% attention connectivity (the official default config).',
        dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, attn_keep_rate=0.25)),
    'sparsifiner_deit_base_patch16_224': (
        'Sparsifiner on DeiT-B with 25% attention connectivity (no official config; the official predictor settings).',
        dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, attn_keep_rate=0.25)),
}, returns=Sparsifiner)
