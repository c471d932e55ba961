"""TransNeXt: hierarchical transformer with aggregated attention (pixel-focused window + pooled tokens) and ConvGLU.

Paper: `TransNeXt: Robust Foveal Visual Perception for Vision Transformers` - https://arxiv.org/abs/2311.17132
(Dai Shi; CVPR 2024).

Official code and weights: https://github.com/DaiShiResearch/TransNeXt (Apache-2.0; ``classification/transnext.py``,
``attention_native.py``, the mm backbones ``segmentation/*/transnext_native.py``). The aggregated attention runs on
``visionattn.ops.aggregated_attention`` (zero-padded 3x3 window with padding mask + pooled keys in one softmax,
learnable-token weights added after the softmax), so neither the official CUDA extension nor unfold copies are needed.

What this version adds over the official classification model, which is built for one input size:

* Any input size. Pool size (``H // sr_ratio``, at least 1), length scale, border mask and the continuous position
  bias (CPB) index tables are functions of the input size, computed once per size and device and cached (constant
  for ``torch.compile``); at the training size ``img_size`` they equal the official buffers. At other sizes the
  position bias follows the official dense-prediction (mm) backbones, chosen by ``pos_bias``:
  ``'interpolate'`` (default, the mm backbones' default ``is_extrapolation=False``): the bias is computed on the
  ``img_size`` tables and bilinearly resized, first over the key grid, then over the query grid;
  ``'extrapolate'`` (mm ``is_extrapolation=True``, and what rebuilding the official classification model with
  ``img_size=<input>, pretrain_size=224`` gives): the tables are rebuilt for the input size.
  Maps smaller than the pooling ratio pool to 1x1 (the official code would pool to zero tokens and fail).
* Size semantics of pretrained weights: ``img_size`` is the size the position tables are built for (official
  ``img_size``; the downstream configs pass the crop, 512 or 800), ``pretrain_size`` the size that scales the
  relative coordinates the CPB MLP was trained on. The registered variants fix ``pretrain_size`` to the size their
  weights were pre-trained at (224; 256 for A-A-A-A; also 224 for the 384 fine-tunes, which the official
  ``main.py`` fine-tuned with ``--pretrain-size 224``), so ``timm.create_model('transnext_micro', pretrained=True,
  img_size=384)`` is the official model built with ``img_size=384, pretrain_size=224``, as the official
  fine-tuning and downstream backbones build it (tested in float64 against it). The class itself keeps the
  official default ``pretrain_size = img_size``.
* ``fixed_pool_size`` (the official "linear inference mode", ``--fixed-pool-size``).
* timm API: gradient checkpointing, ``features_only`` / ``forward_intermediates`` (the four stage maps after the
  in-trunk stage norms, NCHW, as the official mm backbones return them).

Layout: NHWC inside the model; ``forward_features`` returns the NHWC map after the last stage norm
(``output_fmt = 'NHWC'``).
"""
import math
from functools import lru_cache
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs

from visionattn.layers.helpers import head_dim_of
from visionattn.ops import aggregated_attention
from visionattn.ops._dispatch import is_exporting

from ._base import Stage, StagedModel, init_weights
from ._convert import strip_prefix, unwrap_state_dict
from ._hub import build_model, default_cfg
from ._registry import register_variants

__all__ = ['TransNeXt']

_PAPER = dict(
    paper_ids='arXiv:2311.17132', paper_name='TransNeXt: Robust Foveal Visual Perception for Vision Transformers',
    license='apache-2.0', origin_url='https://github.com/DaiShiResearch/TransNeXt')

POS_BIAS_MODES = ('interpolate', 'extrapolate')


# ---------------------------------------------------------------------------------------------------------------------
# Size-dependent geometry (cached per size and device, constant under torch.compile)
# ---------------------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=256)
def _cpb_axis(q_len: int, k_len: int, pretrain_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """One axis of the official ``get_relative_position_cpb``: (log-spaced unique offsets [U], index [q_len, k_len]).

    Keys sit at the centres of ``adaptive_avg_pool1d`` cells over the query axis. The official 2-D ``torch.unique``
    over (dh, dw) pairs gives the row-major product of the per-axis unique offsets (every (query, key) pair of
    rows and columns occurs), so the table and index are the official ones, computed per axis in float32.
    """
    axis_q = torch.arange(q_len, dtype=torch.float32)
    axis_k = F.adaptive_avg_pool1d(axis_q.unsqueeze(0), k_len).squeeze(0)
    rel = (axis_q[:, None] - axis_k[None, :]) / (pretrain_len - 1) * 8
    table, idx = torch.unique(rel.reshape(-1), return_inverse=True)
    table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / torch.log2(torch.tensor(8, dtype=torch.float32))
    return table, idx.view(q_len, k_len)


@lru_cache(maxsize=256)
def _cpb_axis_values(q_len: int, k_len: int, pretrain_len: int) -> Tuple[Tuple[float, ...], Tuple[int, ...]]:
    """``_cpb_axis`` as Python values (float32 values are exact as Python floats)."""
    table, idx = _cpb_axis(q_len, k_len, pretrain_len)
    return tuple(table.tolist()), tuple(idx.reshape(-1).tolist())


@torch.compiler.assume_constant_result
def _cpb_axis_const(q_len: int, k_len: int, pretrain_len: int) -> Tuple[Tuple[float, ...], Tuple[int, ...]]:
    """``_cpb_axis_values`` as a constant for torch.compile (which cannot trace ``torch.unique`` into a graph with
    static shapes and would trace through an ``lru_cache``)."""
    return _cpb_axis_values(q_len, k_len, pretrain_len)


def _combine_axes(th: torch.Tensor, ih: torch.Tensor, tw: torch.Tensor, iw: torch.Tensor):
    coords = torch.stack(torch.meshgrid(th, tw, indexing='ij'), dim=-1).reshape(-1, 2)
    index = ih[:, None, :, None] * tw.shape[0] + iw[None, :, None, :]
    return coords, index


@lru_cache(maxsize=128)
def _cpb_tables_cached(
        query_size: Tuple[int, int],
        key_size: Tuple[int, int],
        pretrain_size: Tuple[int, int],
        device: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    dev = torch.device(device)
    th, ih = _cpb_axis(query_size[0], key_size[0], pretrain_size[0])
    tw, iw = _cpb_axis(query_size[1], key_size[1], pretrain_size[1])
    return tuple(t.to(dev) for t in _combine_axes(th, ih, tw, iw))


def _cpb_tables(
        query_size: Tuple[int, int],
        key_size: Tuple[int, int],
        pretrain_size: Tuple[int, int],
        device: torch.device,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """CPB inputs of a query grid over a key grid: coordinates ``[Uh * Uw, 2]`` (float32) and the index
    ``[Hq, Wq, Hk, Wk]`` into them (the official ``relative_coords_table`` and ``relative_pos_index``).

    Cached per sizes and device in eager mode; built from constants under torch.compile.
    """
    if is_exporting():  # the training grid's tables (constants): computed outside the trace, then lifted
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing
        with unset_fake_temporarily(), disable_proxy_modes_tracing():
            tables = _cpb_tables_cached(tuple(query_size), tuple(key_size), tuple(pretrain_size), 'cpu')
        return tuple(t.to(device) for t in tables)
    if not torch.compiler.is_compiling():
        return _cpb_tables_cached(tuple(query_size), tuple(key_size), tuple(pretrain_size), str(device))
    axes = []
    for q_len, k_len, p_len in zip(query_size, key_size, pretrain_size):
        table, idx = _cpb_axis_const(q_len, k_len, p_len)
        axes += [torch.tensor(table, dtype=torch.float32, device=device),
                 torch.tensor(idx, dtype=torch.long, device=device).view(q_len, k_len)]
    return _combine_axes(*axes)


def _length_scale(h: int, w: int, window_size: int, pool_len: int, device: torch.device) -> torch.Tensor:
    """``log(in-image window slots + pooled tokens)`` per query, ``[1, H, W, 1, 1]`` float32 (official buffer)."""
    r = window_size // 2
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    cy = (ys + r).clamp(max=h - 1) - (ys - r).clamp(min=0) + 1
    cx = (xs + r).clamp(max=w - 1) - (xs - r).clamp(min=0) + 1
    local = (cy[:, None] * cx[None, :]).float()
    return torch.log(local + pool_len).view(1, h, w, 1, 1)


def partial_layer_norm(dim: int) -> nn.LayerNorm:
    """The official block and stage norm: LayerNorm with eps 1e-6."""
    return nn.LayerNorm(dim, eps=1e-6)


class PosCfg:
    """Position geometry of one stage: training grid, pre-training grid, pooling and the bias mode."""

    def __init__(
            self,
            train_size: Tuple[int, int],
            pretrain_size: Tuple[int, int],
            sr_ratio: int,
            fixed_pool_size: Optional[int] = None,
            mode: str = 'interpolate',
    ):
        self.train_size = tuple(train_size)
        self.pretrain_size = tuple(pretrain_size)
        self.sr_ratio = sr_ratio
        self.fixed_pool_size = fixed_pool_size if sr_ratio > 1 else None
        self.mode = mode

    def pool_size(self, h: int, w: int) -> Tuple[int, int]:
        """Key grid of a ``H x W`` query map: pooled (``H // sr``, at least 1, or fixed), or the map (``sr == 1``)."""
        if self.sr_ratio == 1:
            return h, w
        if self.fixed_pool_size:
            return self.fixed_pool_size, self.fixed_pool_size
        return max(1, h // self.sr_ratio), max(1, w // self.sr_ratio)


class CpbMlp(nn.Module):
    """Continuous relative position bias: MLP ``2 -> 512 -> heads`` over log-spaced (query - key) offsets.

    ``forward(h, w, device)`` returns the bias ``[H, W, heads, P]`` of the ``H x W`` queries over the stage's keys
    (``P = Hk * Wk``, row-major), computed as the official mm backbones do (see the module docstring).
    """

    def __init__(self, num_heads: int, pos_cfg: PosCfg, hidden: int = 512):
        super().__init__()
        self.pos_cfg = pos_cfg
        self.cpb_fc1 = nn.Linear(2, hidden, bias=True)
        self.cpb_act = nn.ReLU(inplace=True)
        self.cpb_fc2 = nn.Linear(hidden, num_heads, bias=True)

    def forward(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        cfg = self.pos_cfg
        ph, pw = cfg.pool_size(h, w)
        # exporting (dynamic H and W): always the resize path, whose tables are constants of the training grid (at
        # the training size the bilinear resize is the identity, so the numbers are those of the direct path)
        exact = cfg.mode == 'extrapolate' or (not is_exporting() and (h, w) == cfg.train_size)
        if exact:
            qs, ks = (h, w), (ph, pw)
        else:
            qs, ks = cfg.train_size, cfg.pool_size(*cfg.train_size)
        coords, index = _cpb_tables(qs, ks, cfg.pretrain_size, device)
        table = self.cpb_fc2(self.cpb_act(self.cpb_fc1(coords.to(self.cpb_fc1.weight.dtype))))  # [U, heads]
        heads = table.shape[-1]
        bias = table.transpose(0, 1)[:, index]  # [heads, Hq, Wq, Hk, Wk]
        if not exact:
            # the mm backbones' bilinear resize: over the key grid, then over the query grid
            tq = qs[0] * qs[1]
            bias = F.interpolate(bias.reshape(heads, tq, ks[0], ks[1]), (ph, pw), mode='bilinear')
            bias = bias.reshape(heads, tq, ph * pw).transpose(-1, -2).reshape(heads, ph * pw, qs[0], qs[1])
            bias = F.interpolate(bias, (h, w), mode='bilinear')  # [heads, P, H, W]
            return bias.permute(2, 3, 0, 1)
        return bias.reshape(heads, h, w, ph * pw).permute(1, 2, 0, 3)


# ---------------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------------

class ConvGLU(nn.Module):
    """Convolutional GLU (NHWC): ``fc2(act(DWConv3x3(gate)) * value)`` with ``[gate; value] = fc1(x)``.

    The hidden width is ``int(2 * hidden_features / 3)`` as in the official code.
    """

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: type = nn.GELU,
            drop: float = 0.,
    ):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = int(2 * (hidden_features or in_features) / 3)
        self.fc1 = nn.Linear(in_features, hidden_features * 2)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, 1, 1, bias=True, groups=hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, v = self.fc1(x).chunk(2, dim=-1)
        x = self.act(self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)) * v
        x = self.drop(x)
        x = self.fc2(x)
        return self.drop(x)


def _temperature_init(num_heads: int) -> torch.Tensor:
    """Raw temperature with ``softplus(t) = 1 / 0.24``."""
    return torch.log((torch.ones(num_heads, 1, 1) / 0.24).exp() - 1)


@register_notrace_module  # reason: size-dependent geometry (pool size, cached tables) from the input shape
class AggregatedAttention(nn.Module):
    """Aggregated attention: pixel-focused ``k x k`` window + pooled tokens in one softmax (NHWC in and out).

    Queries and keys are L2-normalized per head; queries get the learnable query embedding, ``softplus``
    temperature and the length scale ``log(window slots in the image + pooled tokens)``. Pooled tokens are
    ``LN(AdaptiveAvgPool(GELU(Conv1x1(x))))`` projected by the same ``kv``; their bias comes from the CPB MLP, the
    window's from ``relative_pos_bias_local``. The learnable tokens add ``q_hat @ learnable_tokens + learnable_bias``
    to the window's attention weights after the softmax. Parameter names and shapes are the official ones.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            pos_cfg: PosCfg,
            window_size: int = 3,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
    ):
        super().__init__()
        self.head_dim = head_dim_of(dim, num_heads)
        if window_size % 2 != 1:
            raise ValueError(f'window_size must be odd, got {window_size}')
        self.num_heads = num_heads
        self.window_size = window_size
        self.local_len = window_size ** 2
        self.pos_cfg = pos_cfg
        self.temperature = nn.Parameter(_temperature_init(num_heads))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.query_embedding = nn.Parameter(torch.zeros(num_heads, 1, self.head_dim))
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr = nn.Conv2d(dim, dim, kernel_size=1, stride=1, padding=0)
        self.norm = nn.LayerNorm(dim)  # default eps 1e-5, as the official code
        self.act = nn.GELU()
        self.cpb = CpbMlp(num_heads, pos_cfg)
        self.relative_pos_bias_local = nn.Parameter(torch.zeros(num_heads, self.local_len))
        self.learnable_tokens = nn.Parameter(torch.zeros(num_heads, self.head_dim, self.local_len))
        self.learnable_bias = nn.Parameter(torch.zeros(num_heads, 1, self.local_len))
        trunc_normal_(self.query_embedding, std=.02)
        trunc_normal_(self.relative_pos_bias_local, std=.0004)
        trunc_normal_(self.learnable_tokens, std=.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        heads, d = self.num_heads, self.head_dim
        ph, pw = self.pos_cfg.pool_size(h, w)
        q_norm = F.normalize(self.q(x).view(b, h, w, heads, d), dim=-1)
        scale = F.softplus(self.temperature).view(heads, 1) * _length_scale(
            h, w, self.window_size, ph * pw, x.device).to(x.dtype)
        q = (q_norm + self.query_embedding.view(heads, d)) * scale
        k, v = self.kv(x).view(b, h, w, 2, heads, d).unbind(3)
        k = F.normalize(k, dim=-1)

        pooled = F.adaptive_avg_pool2d(self.act(self.sr(x.permute(0, 3, 1, 2))), (ph, pw))
        pooled = self.norm(pooled.flatten(2).transpose(1, 2))
        k_pool, v_pool = self.kv(pooled).view(b, ph * pw, 2, heads, d).unbind(2)
        k_pool = F.normalize(k_pool, dim=-1)

        local_weights = torch.einsum('bxyhd,hdj->bxyhj', q_norm, self.learnable_tokens) + \
            self.learnable_bias.view(heads, self.local_len)
        x = aggregated_attention(
            q, k, v, k_pool, v_pool, kernel_size=self.window_size, local_bias=self.relative_pos_bias_local,
            pool_bias=self.cpb(h, w, x.device).to(q.dtype), local_weights=local_weights,
            dropout_p=self.attn_drop if self.training else 0.)
        x = self.proj(x.reshape(b, h, w, c))
        return self.proj_drop(x)


@register_notrace_module  # reason: size-dependent length scale and cached position tables from the input shape
class Attention(nn.Module):
    """Length-scaled cosine attention over all tokens with query embedding and CPB bias (stage 4, ``sr_ratio=1``)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            pos_cfg: PosCfg,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim_of(dim, num_heads)
        self.pos_cfg = pos_cfg
        self.temperature = nn.Parameter(_temperature_init(num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.query_embedding = nn.Parameter(torch.zeros(num_heads, 1, self.head_dim))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.cpb = CpbMlp(num_heads, pos_cfg)
        trunc_normal_(self.query_embedding, std=.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # exporting: log(n) of the symbolic token count (math.log would bake the example size into the graph)
        log_n = torch.full((), n, dtype=torch.float64, device=x.device).log().to(x.dtype) if is_exporting() else \
            math.log(n)
        q = (F.normalize(q, dim=-1) + self.query_embedding) * F.softplus(self.temperature) * log_n
        bias = self.cpb(h, w, x.device).reshape(n, self.num_heads, n).transpose(0, 1).to(q.dtype)
        x = F.scaled_dot_product_attention(
            q, F.normalize(k, dim=-1), v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0., scale=1.)
        x = self.proj(x.transpose(1, 2).reshape(b, h, w, c))
        return self.proj_drop(x)


class Block(nn.Module):
    """Pre-norm block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(ConvGLU(norm2(x)))`` (NHWC)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            pos_cfg: PosCfg,
            window_size: int = 3,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: type = nn.GELU,
            norm_layer: type = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if pos_cfg.sr_ratio == 1:
            self.attn = Attention(
                dim, num_heads, pos_cfg, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        else:
            self.attn = AggregatedAttention(
                dim, num_heads, pos_cfg, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop,
                proj_drop=proj_drop)
        self.norm2 = norm_layer(dim)
        self.mlp = ConvGLU(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: ``Conv2d(k, stride, k // 2)`` then LayerNorm (eps 1e-5); NCHW in, NHWC out."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 7, stride: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


# ---------------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------------

class TransNeXtStage(Stage):
    """Patch embedding (stages > 0), ``depth`` blocks, then the stage norm (in the trunk); NHWC in and out."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            pos_cfg: PosCfg,
            downsample: bool = True,
            drop_path: Sequence[float] = (),
            norm_layer: type = nn.LayerNorm,
            **block_kwargs,
    ):
        super().__init__()
        self.downsample = OverlapPatchEmbed(dim, out_dim, patch_size=3, stride=2) if downsample else None
        self.blocks = nn.Sequential(*[
            Block(out_dim, num_heads, pos_cfg, drop_path=drop_path[i] if drop_path else 0., norm_layer=norm_layer,
                  **block_kwargs)
            for i in range(depth)])
        self.norm = norm_layer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2))
        return self.norm(self._blocks(x))


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------

class TransNeXt(StagedModel):
    """TransNeXt (official ``classification/transnext.py`` and mm backbones), any input size.

    Stage ``i`` (stride ``4 * 2 ** i``) uses aggregated attention when ``sr_ratios[i] > 1`` and full length-scaled
    cosine attention when ``sr_ratios[i] == 1``. Every stage ends with its norm (eps 1e-6) inside the trunk.
    """

    stage_fmt = 'NHWC'
    group_tail = (r'^stages\.(\d+)\.norm',)

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            pretrain_size: Optional[Union[int, Tuple[int, int]]] = None,
            pos_bias: str = 'interpolate',
            fixed_pool_size: Optional[int] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            depths: Sequence[int] = (3, 4, 6, 3),
            num_heads: Sequence[int] = (1, 2, 4, 8),
            mlp_ratios: Sequence[float] = (4, 4, 4, 4),
            sr_ratios: Sequence[int] = (8, 4, 2, 1),
            window_size: Union[int, Sequence[Optional[int]]] = 3,
            patch_size: int = 4,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: type = nn.GELU,
            norm_layer: Optional[type] = None,
    ):
        """
        Args:
            img_size: Training input size: the query grids of the position-bias tables (official ``img_size``;
                the mm configs use 512 for ADE20K and 800 for COCO).
            pretrain_size: Pre-training input size that scales the relative coordinates (official
                ``pretrain_size``; default ``img_size``).
            pos_bias: Position bias at input sizes other than ``img_size``: ``'interpolate'`` (bilinear resize of
                the ``img_size`` bias, the mm default) or ``'extrapolate'`` (tables rebuilt for the input size).
            fixed_pool_size: Pool every aggregated stage to this size (official linear inference mode).
            in_chans: Input image channels.
            num_classes: Classes of the head (0 for none).
            global_pool: ``'avg'`` or ``''`` (no pooling).
            embed_dims: Stage widths.
            depths: Blocks per stage.
            num_heads: Heads per stage.
            mlp_ratios: ConvGLU hidden ratio per stage (before the 2/3 factor).
            sr_ratios: Pooling ratio per stage (1: full attention).
            window_size: Aggregated-attention window (odd), one value or per stage.
            patch_size: Stem stride (kernel ``2 * patch_size - 1``).
            qkv_bias: Bias of the q/kv/qkv projections.
            drop_rate: Dropout before the classifier.
            proj_drop_rate: Dropout after the attention projection and in the ConvGLU (official ``drop_rate``).
            attn_drop_rate: Dropout on attention probabilities.
            drop_path_rate: Stochastic depth, increasing linearly over all blocks.
            act_layer: ConvGLU activation.
            norm_layer: Block and stage norm (default LayerNorm with eps 1e-6).
        """
        super().__init__()
        self._init_api(in_chans, num_classes, global_pool, embed_dims[-1])
        if pos_bias not in POS_BIAS_MODES:
            raise ValueError(f'pos_bias must be one of {POS_BIAS_MODES}, got {pos_bias!r}')
        num_stages = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(mlp_ratios) == len(sr_ratios) == num_stages):
            raise ValueError('embed_dims, num_heads, mlp_ratios, sr_ratios and depths must have one entry per stage')
        norm_layer = norm_layer or partial_layer_norm
        img_size = to_2tuple(img_size)
        pretrain_size = to_2tuple(pretrain_size or img_size)
        windows = window_size if isinstance(window_size, (list, tuple)) else (window_size,) * num_stages
        self.output_fmt = 'NHWC'
        self.pos_bias = pos_bias
        self.img_size, self.pretrain_size = img_size, pretrain_size

        def stage(i: int, drop_path: Sequence[float]) -> TransNeXtStage:
            stride = patch_size * 2 ** i
            pos_cfg = PosCfg(
                train_size=(img_size[0] // stride, img_size[1] // stride),
                pretrain_size=(pretrain_size[0] // stride, pretrain_size[1] // stride),
                sr_ratio=sr_ratios[i], fixed_pool_size=fixed_pool_size, mode=pos_bias)
            return TransNeXtStage(
                dim=embed_dims[max(i - 1, 0)],
                out_dim=embed_dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                pos_cfg=pos_cfg,
                downsample=i > 0,
                drop_path=drop_path,
                norm_layer=norm_layer,
                window_size=windows[i] or 3,
                mlp_ratio=mlp_ratios[i],
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                act_layer=act_layer,
            )

        self.patch_embed = OverlapPatchEmbed(in_chans, embed_dims[0], patch_size=2 * patch_size - 1, stride=patch_size)
        self._init_stages(stage, depths, embed_dims, drop_path_rate, stride=patch_size)
        self._init_head(drop_rate)
        for m in self.modules():
            self._init_weights(m)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        init_weights(m)  # Linear, LayerNorm
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        keys = ('query_embedding', 'relative_pos_bias_local', 'cpb', 'temperature')  # official keywords
        return {n for n, _ in self.named_parameters() if any(k in n for k in keys)}

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x  # every stage ends in its own norm


_BUFFERS = ('relative_pos_index', 'relative_coords_table', 'seq_length_scale', 'padding_mask')


def checkpoint_filter_fn(state_dict: dict, model: TransNeXt) -> dict:
    """Convert an official TransNeXt checkpoint (classification training dict with ``'model'`` and ``'args'``, raw
    state dict, or an mmseg/mmdet file whose backbone keys start with ``backbone.``) to this model.

    ``patch_embed1`` -> ``patch_embed``; ``patch_embed{i}`` -> ``stages.{i-1}.downsample``; ``block{i}.{j}`` ->
    ``stages.{i-1}.blocks.{j}``; ``norm{i}`` -> ``stages.{i-1}.norm``; ``mlp.dwconv.dwconv`` -> ``mlp.dwconv``;
    ``attn.cpb_fc*`` -> ``attn.cpb.cpb_fc*``. Non-persistent official buffers (index tables, length scale, padding
    mask), if present, are dropped: they are recomputed per input size.
    """
    state_dict = unwrap_state_dict(state_dict)
    state_dict = strip_prefix(state_dict)
    if any(k.startswith('stages.') for k in state_dict):
        return state_dict
    out = {}
    for k, v in state_dict.items():
        if any(b in k for b in _BUFFERS):
            continue
        head, _, rest = k.partition('.')
        if head == 'patch_embed1':
            k = f'patch_embed.{rest}'
        elif head.startswith('patch_embed') and head[11:].isdigit():
            k = f'stages.{int(head[11:]) - 1}.downsample.{rest}'
        elif head.startswith('block') and head[5:].isdigit():
            k = f'stages.{int(head[5:]) - 1}.blocks.{rest}'
            k = k.replace('.mlp.dwconv.dwconv.', '.mlp.dwconv.').replace('.attn.cpb_fc', '.attn.cpb.cpb_fc')
        elif head.startswith('norm') and head[4:].isdigit():
            k = f'stages.{int(head[4:]) - 1}.norm.{rest}'
        out[k] = v
    return out


def _create_transnext(variant: str, pretrained: bool = False, **kwargs) -> TransNeXt:
    return build_model(TransNeXt, variant, pretrained, checkpoint_filter_fn, default_out_indices=(0, 1, 2, 3), **kwargs)


def _cfg(url: str = '', **kwargs) -> dict:
    return default_cfg(url, {'pool_size': (7, 7), **_PAPER}, **kwargs)


_HF = 'https://huggingface.co/DaiShiResearch/'
# the official evaluation warps (resizes without cropping) at 384
_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, crop_mode='squash')

default_cfgs = generate_default_cfgs({
    'transnext_micro.in1k': _cfg(url=_HF + 'transnext-micro-224-1k/resolve/main/transnext_micro_224_1k.pth'),
    'transnext_tiny.in1k': _cfg(url=_HF + 'transnext-tiny-224-1k/resolve/main/transnext_tiny_224_1k.pth'),
    'transnext_small.in1k': _cfg(url=_HF + 'transnext-small-224-1k/resolve/main/transnext_small_224_1k.pth'),
    'transnext_base.in1k': _cfg(url=_HF + 'transnext-base-224-1k/resolve/main/transnext_base_224_1k.pth'),
    'transnext_small_384.in1k_ft_384': _cfg(
        url=_HF + 'transnext-small-384-1k-ft-1k/resolve/main/transnext_small_384_1k_ft_1k.pth', **_384),
    'transnext_base_384.in1k_ft_384': _cfg(
        url=_HF + 'transnext-base-384-1k-ft-1k/resolve/main/transnext_base_384_1k_ft_1k.pth', **_384),
    'transnext_micro_aaaa.in1k': _cfg(
        url=_HF + 'transnext-micro-AAAA-256-1k/resolve/main/transnext_micro_AAAA_256_1k.pth',
        input_size=(3, 256, 256), pool_size=(8, 8)),
})

_MICRO = dict(embed_dims=(48, 96, 192, 384), num_heads=(2, 4, 8, 16), depths=(2, 2, 15, 2))
_TINY = dict(embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), depths=(2, 2, 15, 2))
_SMALL = dict(embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), depths=(5, 5, 22, 5))
_BASE = dict(embed_dims=(96, 192, 384, 768), num_heads=(4, 8, 16, 32), depths=(5, 5, 23, 5))
# pretrain_size is the resolution the released weights' position coordinates were trained at (224 for every release,
# the 384 fine-tunes included; 256 for A-A-A-A): an img_size override keeps it, as the official fine-tuning
# (main.py --pretrain-size 224) and every official downstream backbone (pretrain_size=224, img_size=crop) do
_COMMON = dict(
    mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), window_size=(3, 3, 3, None), qkv_bias=True, pretrain_size=224)


register_variants(__name__, _create_transnext, {
    'transnext_micro': ('TransNeXt-Micro: 48-96-192-384 wide, depths 2-2-15-2 (12.8M, 82.5% top-1).', dict(
        **_MICRO, **_COMMON, drop_path_rate=0.15)),
    'transnext_micro_aaaa': (
        'TransNeXt-Micro A-A-A-A at 256: aggregated attention in every stage, sr 16-8-4-2 (13.1M, 82.6% top-1).',
        dict(
            **_MICRO, mlp_ratios=(8, 8, 4, 4), sr_ratios=(16, 8, 4, 2), window_size=3, qkv_bias=True, img_size=256,
            pretrain_size=256, drop_path_rate=0.15)),
    'transnext_tiny': ('TransNeXt-Tiny: 72-144-288-576 wide, depths 2-2-15-2 (28.2M, 84.0% top-1).', dict(
        **_TINY, **_COMMON, drop_path_rate=0.25)),
    'transnext_small': ('TransNeXt-Small: 72-144-288-576 wide, depths 5-5-22-5 (49.7M, 84.7% top-1).', dict(
        **_SMALL, **_COMMON, drop_path_rate=0.45)),
    'transnext_small_384': (
        'TransNeXt-Small fine-tuned at 384 (tables for 384, coordinates scaled by the 224 pre-training; 86.0%).',
        dict(**_SMALL, **_COMMON, img_size=384, drop_path_rate=0.7)),
    'transnext_base': ('TransNeXt-Base: 96-192-384-768 wide, depths 5-5-23-5 (89.7M, 84.8% top-1).', dict(
        **_BASE, **_COMMON, drop_path_rate=0.6)),
    'transnext_base_384': (
        'TransNeXt-Base fine-tuned at 384 (tables for 384, coordinates scaled by the 224 pre-training; 86.2%).',
        dict(**_BASE, **_COMMON, img_size=384, drop_path_rate=0.8)),
}, returns=TransNeXt)
