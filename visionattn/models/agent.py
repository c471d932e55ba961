"""Agent Attention on four hosts: Agent-DeiT, Agent-PVT, Agent-Swin, Agent-CSwin.

Paper: `Agent Attention: On the Integration of Softmax and Linear Attention`
    - https://arxiv.org/abs/2312.08874 (Han, Ye, Han, Xia, Pan, Wan, Song, Huang, ECCV 2024)

Official code and weights: https://github.com/LeapLabTHU/Agent-Attention. The repository has no top-level LICENSE
file and its README states none (only the vendored OpenMMLab trees carry licenses): the license is recorded as
'unknown'. The weights are on Tsinghua Cloud; the files are full training dicts (``'model'``, optimizer, a pickled
yacs ``CfgNode`` under ``'config'``), so loading them needs ``torch.load(..., weights_only=False)`` from a trusted
source; ``checkpoint_filter_fn`` receives the loaded dict and unwraps ``'model'``.

Agent attention (``visionattn.layers.AgentAttention`` over ``visionattn.ops.agent_attention``, one implementation for
the four hosts): agents pooled from the queries aggregate the values (softmax over the keys), then broadcast them back
(softmax over the agents), with the agent/position biases of the official code and a depthwise conv on V.

What this version changes:
    - Any input size. The official classification models fix the biases to the training grid (and Swin/CSwin/DeiT
      assert the size); here the biases are resized to the input grid (bilinear, as the official downstream
      backbones do at every forward), computed once per grid size and cached in inference. At the training size the
      outputs equal the official classification models; the agent grid is a constructor option (``agent_shape``,
      the official downstream ``downstream_agent_shape``), in which case the agent biases are resized as the
      official downstream backbones do.
    - Size semantics of pretrained weights. ``img_size`` is the training size the grid-shaped tensors (position
      embeddings, per-row/column agent biases ``ah/aw/ha/wa_bias``) are stored for. Loading weights into a model
      with another ``img_size`` (``create_model(..., pretrained=True, img_size=384)``) resamples them once, as the
      official classification fine-tuning does (``agent_transformer/utils.py::load_pretrained``: position
      embeddings bicubic, agent biases linear); ``an_bias``/``na_bias`` and the agent count do not depend on the
      size. The official downstream backbones instead keep ``img_size=224`` and resize the biases to every input
      (bilinear) with the agent grid ``downstream_agent_shapes``: the mm configs do the same (``img_size`` left at
      224, ``agent_shapes`` set; tested against the official downstream PVT and Swin backbones). Not handled: a
      changed Swin ``window_size`` (the official loader also resizes ``relative_position_bias_table`` bicubically).
    - Host rules at sizes the official classification code never sees: Agent-Swin "A" blocks attend over the whole
      stage map (the downstream rule; the released window sizes cover the map at the training size), "B" blocks
      are padded to whole windows and shifted as the downstream backbone, with the classification clamp for maps no
      larger than the window (``window_clamp``; False gives the downstream behaviour on small maps too); Agent-CSwin
      stripes are padded and padded keys masked; PVT/Swin/DeiT patch embeddings pad inputs to the stride (the
      official PVT/DeiT floor them).
    - Distinct names (``agent_deit_*``, ``agent_pvt_*``, ``agent_swin_*``, ``agent_cswin_*``) and pretrained cfgs
      that point at the Agent weights (the official ``agent_deit_*`` factories route to DeiT's cfgs and fail on
      timm 1.x).
    - The full timm API: ``features_only`` (stage maps NCHW; the usual ViT block intermediates for DeiT),
      ``forward_intermediates``, gradient checkpointing, classifier reset.
"""
import re
from functools import lru_cache, partial
from typing import Callable, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import (
    Attention,
    DropPath,
    Mlp,
    PatchEmbed,
    register_notrace_module,
    to_2tuple,
    trunc_normal_,
)
from timm.models import generate_default_cfgs
from timm.models.swin_transformer import PatchMerging
from torch.utils.checkpoint import checkpoint

from visionattn.layers import drop_path_rates
from visionattn.layers.agent import AgentAttention
from visionattn.ops._dispatch import is_exporting

from ._base import StagedModel, TokenModel, init_weights
from ._convert import remap_stage_key, resample_pos_embed, reshape_patch_embed, square_grid, unwrap_state_dict
from ._hub import build_model, default_cfg
from ._registry import register_variants

__all__ = ['AgentDeiT', 'AgentPVT', 'AgentSwin', 'AgentCSwin']

_PAPER = dict(
    paper_ids='arXiv:2312.08874',
    paper_name='Agent Attention: On the Integration of Softmax and Linear Attention',
    license='unknown')


def _per_block(value: Union[int, Sequence[int]], depth: int, name: str) -> List[int]:
    if isinstance(value, (int, float, str)):
        return [int(value)] * depth
    value = [int(v) for v in value]
    if len(value) != depth:
        raise ValueError(f'{name} has {len(value)} entries for {depth} blocks')
    return value


# ----------------------------------------------------------------------------------------------------------------
# Agent-DeiT
# ----------------------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm transformer block on ``[B, P + H*W, C]`` tokens whose mixer is agent attention or plain attention.

    The Agent-DeiT block (class token as a prefix token; plain blocks after ``agent_layers``), the Agent-PVT block
    (``q``/``kv`` projections) and the Agent-Swin "A" block (one global window).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Tuple[int, int],
            agent: bool = True,
            agent_num: int = 49,
            agent_shape: Optional[Sequence[int]] = None,
            qkv_layout: str = 'qkv',
            num_prefix_tokens: int = 0,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.agent = agent
        self.norm1 = norm_layer(dim)
        if agent:
            self.attn = AgentAttention(
                dim, num_heads, window_size, agent_num=agent_num, agent_shape=agent_shape, qkv_layout=qkv_layout,
                qkv_bias=qkv_bias, num_prefix_tokens=num_prefix_tokens, attn_drop=attn_drop, proj_drop=proj_drop)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        y = self.norm1(x)
        y = self.attn(y, feat_size) if self.agent else self.attn(y)
        x = x + self.drop_path1(y)
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class AgentDeiT(TokenModel):
    """DeiT with agent attention in its first ``agent_layers`` blocks (all for T/S, 4 for B)."""
    pos_interpolation = 'bilinear'  # the official run-time rule (``resize_pos_embed``)

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            agent_num: Union[int, Sequence[int]] = 49,
            agent_shape: Optional[Sequence[int]] = None,
            agent_layers: Optional[int] = None,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[Callable[[int], nn.Module]] = None,
            act_layer: Optional[Type[nn.Module]] = None,
    ):
        """
        Args:
            img_size: Training size: sets the position embedding grid and the bias shapes (the official
                ``window = img_size // patch_size``). Any input size runs (biases and position embedding resampled).
            patch_size: Patch size.
            in_chans: Input channels.
            num_classes: Classes of the head (0 for none).
            global_pool: ``'token'`` (class token, as the official model), ``'avg'`` or ``''``.
            embed_dim: Width.
            depth: Blocks.
            num_heads: Heads.
            mlp_ratio: MLP hidden width over embed_dim.
            qkv_bias: Bias of the qkv projection.
            agent_num: Agents per agent block (a square number), one value or one per block.
            agent_shape: Agent grid at run time for every agent block (default: the square grid of ``agent_num``);
                the agent biases are resized to it.
            agent_layers: The first ``agent_layers`` blocks use agent attention, the rest plain attention
                (None: all, the official ``agent_layer=-1``).
            drop_rate: Dropout before the head.
            pos_drop_rate: Dropout after the position embedding (the official ``drop_rate``).
            proj_drop_rate: Dropout after projections and in the MLP (the official ``drop_rate``).
            attn_drop_rate: Dropout on attention maps.
            drop_path_rate: Stochastic depth (linear over blocks).
            norm_layer: Norm (LayerNorm eps 1e-6 by default, as DeiT).
            act_layer: MLP activation (GELU).
        """
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        agent_layers = depth if agent_layers is None or agent_layers < 0 else agent_layers
        agent_nums = _per_block(agent_num, depth, 'agent_num')
        grid = self._init_embed(img_size, patch_size, in_chans, num_classes, global_pool, embed_dim, pos_drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            Block(
                embed_dim, num_heads, grid, agent=i < agent_layers, agent_num=agent_nums[i], agent_shape=agent_shape,
                num_prefix_tokens=1,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[i], act_layer=act_layer, norm_layer=norm_layer)
            for i in range(depth)])
        self._init_tail(norm_layer, patch_size, drop_rate)


# ----------------------------------------------------------------------------------------------------------------
# Agent-PVT
# ----------------------------------------------------------------------------------------------------------------


def _stage_drop_paths(drop_path_rate: float, depths: Sequence[int]) -> List[List[float]]:
    """Stochastic depth rates linear over all blocks, split into the stages' lists."""
    dpr = drop_path_rates(drop_path_rate, sum(depths))
    return [dpr[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]


class _Stage(nn.Module):
    """A hierarchical host's stage: ``_tokens`` (the NCHW input to ``[B, H*W, C]`` tokens and ``(H, W)``), then
    ``blocks``. NCHW in and out."""

    def __init__(self):
        super().__init__()
        self.grad_checkpointing = False

    def _tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, feat_size = self._tokens(x)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, feat_size, use_reentrant=False)
            else:
                x = blk(x, feat_size)
        B, _, C = x.shape
        return x.transpose(1, 2).reshape(B, C, feat_size[0], feat_size[1])


class PVTStage(_Stage):
    """Patch embedding (stride conv + LayerNorm; inputs padded to the stride), learned position embedding of the
    training grid (bilinearly resampled for other grids), agent-attention blocks. NCHW in and out."""

    def __init__(
            self,
            in_chs: int,
            dim: int,
            patch_size: int,
            grid: Tuple[int, int],
            depth: int,
            num_heads: int,
            mlp_ratio: float,
            qkv_bias: bool,
            agent_num: int,
            agent_shape: Optional[Sequence[int]],
            drop_path: Sequence[float],
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            pos_drop: float = 0.,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.grid = tuple(grid)
        # the official PatchEmbed norm is a default LayerNorm (eps 1e-5), unlike the blocks' (1e-6)
        self.patch_embed = PatchEmbed(
            img_size=None, patch_size=patch_size, in_chans=in_chs, embed_dim=dim, norm_layer=nn.LayerNorm,
            output_fmt='NHWC', strict_img_size=False, dynamic_img_pad=True)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        self.pos_drop = nn.Dropout(pos_drop)
        self.blocks = nn.ModuleList([
            Block(
                dim, num_heads, self.grid, agent_num=agent_num, agent_shape=agent_shape, qkv_layout='q_kv',
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop,
                drop_path=drop_path[j], norm_layer=norm_layer)
            for j in range(depth)])
        trunc_normal_(self.pos_embed, std=.02)

    def _tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.patch_embed(x)  # [B, H, W, C]
        feat_size = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2) + resample_pos_embed(self.pos_embed, feat_size, self.grid, 0, 'bilinear')
        return self.pos_drop(x), feat_size


class _StagedModel(StagedModel):
    """The hierarchical hosts (PVT, Swin, CSwin): ``stem`` (may be Identity), ``stages`` (NCHW in and out), ``norm``
    (on the channels of the last map), average pooling and ``head``."""
    stem_name = 'stem'
    output_fmts = ('NCHW',)
    global_pools = ('', 'avg')
    group_stem = r'^stem|^patch_embed|^stages\.0\.(?:patch_embed|pos_embed)'
    group_downsample = r'^stages\.(\d+)\.(?:downsample|patch_embed|pos_embed)'

    def _init_host(self, stages: List[nn.Module], norm: nn.Module, num_classes: int, in_chans: int, global_pool: str,
                   embed_dims: Sequence[int], stem_stride: int, drop_rate: float) -> None:
        """After the stem: the API attributes, the ``stages`` (each after the first halves the map), the final
        ``norm`` and the classifier; then the weight init."""
        self._init_api(in_chans, num_classes, global_pool, embed_dims[-1])
        self.grad_checkpointing = False
        self.stages = nn.ModuleList(stages)
        self.norm = norm
        self.feature_info = [
            dict(num_chs=c, reduction=stem_stride * 2 ** i, module=f'stages.{i}') for i, c in enumerate(embed_dims)]
        self._init_head(drop_rate)
        self.apply(init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters() if n.endswith(('pos_embed', 'relative_position_bias_table'))}

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, nn.Identity):
            return x
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class AgentPVT(_StagedModel):
    """Agent-PVT: PVTv1 with agent attention in every block (``AAAA``, no spatial reduction), no final norm."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            num_heads: Sequence[int] = (1, 2, 5, 8),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            depths: Sequence[int] = (2, 2, 2, 2),
            qkv_bias: bool = True,
            agent_num: Sequence[int] = (9, 16, 49, 49),
            agent_shapes: Optional[Sequence[Optional[Sequence[int]]]] = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[Callable[[int], nn.Module]] = None,
    ):
        """
        Args:
            img_size: Training size: sets the position-embedding grids and bias shapes; any input size runs.
            patch_size: Stride of the first patch embedding (then 2 per stage).
            in_chans: Input channels.
            num_classes: Classes of the head (0 for none).
            global_pool: ``'avg'`` or ``''``.
            embed_dims: Stage widths.
            num_heads: Stage heads.
            mlp_ratios: Stage MLP ratios.
            depths: Stage depths.
            qkv_bias: Bias of the q/kv projections.
            agent_num: Agents per stage (square numbers).
            agent_shapes: Agent grid per stage at run time (the official downstream ``downstream_agent_shapes``, e.g.
                ``((12, 12), (16, 16), (28, 28), (28, 28))``); None keeps the square grids of ``agent_num``.
            drop_rate: Dropout before the head and after the position embeddings (the official ``drop_rate``).
            proj_drop_rate: Dropout after projections and in the MLPs.
            attn_drop_rate: Dropout on attention maps.
            drop_path_rate: Stochastic depth (linear over all blocks).
            norm_layer: Block norm (LayerNorm eps 1e-6).
        """
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        img_size = to_2tuple(img_size)
        n = len(depths)
        agent_shapes = agent_shapes or [None] * n
        dpr = _stage_drop_paths(drop_path_rate, depths)
        self.stem = nn.Identity()
        stages = []
        grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        for i in range(n):
            if i:
                grid = (grid[0] // 2, grid[1] // 2)
            stages.append(PVTStage(
                in_chans if i == 0 else embed_dims[i - 1], embed_dims[i], patch_size if i == 0 else 2, grid, depths[i],
                num_heads[i], mlp_ratios[i], qkv_bias, int(agent_num[i]), agent_shapes[i],
                dpr[i], proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                pos_drop=drop_rate, norm_layer=norm_layer))
        self._init_host(stages, nn.Identity(), num_classes, in_chans, global_pool, embed_dims, patch_size, drop_rate)


# ----------------------------------------------------------------------------------------------------------------
# Agent-Swin
# ----------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _rel_index(wh: int, ww: int, table_side: int) -> torch.Tensor:
    """Swin's relative-position index of a ``wh x ww`` window into a ``(2 * table_side - 1) ** 2`` table (a window
    smaller than the table's uses the central part of the table)."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij')).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (table_side - 1)
    return rel[0] * (2 * table_side - 1) + rel[1]


@lru_cache(maxsize=64)
def _shift_mask(Hp: int, Wp: int, wh: int, ww: int, sh: int, sw: int) -> torch.Tensor:
    """The official shifted-window mask (0 within a region, -100 across) for a padded ``Hp x Wp`` map:
    ``[num_windows, wh * ww, wh * ww]``."""
    img = torch.zeros(Hp, Wp)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = img.reshape(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    mask = win[:, None, :] - win[:, :, None]
    return mask.masked_fill(mask != 0, -100.).masked_fill(mask == 0, 0.)


class WindowAttention(nn.Module):
    """Swin (shifted-)window attention with a relative position bias table (the official "B" mixer)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=.02)

    def forward(self, x: torch.Tensor, window: Tuple[int, int], mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``x`` ``[B, nW, wh * ww, C]`` window tokens, ``mask`` ``[nW, N, N]`` or None."""
        B, nW, N, C = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(B, nW, N, 3, h, C // h).permute(3, 0, 1, 4, 2, 5).unbind(0)
        # exporting: not through the cache (a tensor made while tracing is fake, it must not serve eager calls)
        rel_index = _rel_index.__wrapped__ if is_exporting() else _rel_index
        idx = rel_index(window[0], window[1], self.window_size).to(x.device)
        bias = self.relative_position_bias_table[idx.reshape(-1)].reshape(N, N, h).permute(2, 0, 1)
        if mask is not None:
            bias = bias + mask.to(bias.dtype)[:, None]  # [nW, h, N, N]
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.attn_drop if self.training else 0., scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(2, 3).reshape(B, nW, N, C)))


def _sym_mod(x: torch.Tensor, m) -> torch.Tensor:
    """``x % m`` (floor modulo) for a symbolic ``m``, through floor division: the ONNX exporter has no translation of
    a tensor remainder by a symbolic scalar (``aten.remainder.Scalar``)."""
    return x - (x // m) * m


@register_notrace_module  # reason: window, shift and padding follow the input size
class SwinBlock(nn.Module):
    """Swin "B" block: (shifted) window attention, padded to whole windows as the official downstream backbone.

    With ``window_clamp`` (the classification rule), a map no larger than the window on its short side is one window
    of that size with no shift; without it (the downstream rule), the window and shift are kept and the map padded.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int = 7,
            shift: bool = False,
            window_clamp: bool = True,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        self.window_clamp = window_clamp
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def _attn_export(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        """``_attn`` for symbolic ``H``, ``W`` (export): the window stays ``window_size`` (the export range has maps
        of at least one window), the classification clamp only turns the shift off (``sym_ite``, no guard). Padding,
        roll and window partition are one gather by index arithmetic (zeros where the padded map is), the shift mask
        comes from region ids (for shift 0 every window lies in one region, so the mask is 0), and the output is
        gathered back: no pad, slice or window reshape whose no-op case (no padding, one window) the exporter would
        specialize the graph on. One all-zero window more than the map has (discarded) keeps the window count >= 2
        for every size, so the graph is not specialized to one window either (PyTorch's 0/1 specialization)."""
        B, L, C = x.shape
        H, W = feat_size
        ws = self.window_size
        torch._check(H >= ws)
        torch._check(W >= ws)
        shift = self.shift_size
        if shift and self.window_clamp:
            shift = torch.sym_ite(torch.sym_min(H, W) <= ws, 0, shift)
        nh, nw = (H + ws - 1) // ws, (W + ws - 1) // ws
        Hp, Wp = nh * ws, nw * ws
        win = torch.arange(nh * nw + 1, device=x.device)[:, None]  # [nW + 1, 1], the last one all zeros
        tok = torch.arange(ws * ws, device=x.device)[None]  # [1, N]
        py, px = (win // nw) * ws + tok // ws, _sym_mod(win, nw) * ws + tok % ws  # in the rolled padded map
        sy, sx = _sym_mod(py + shift, Hp), _sym_mod(px + shift, Wp)  # its position before the roll
        valid = ((sy < H) & (sx < W) & (win < nh * nw)).to(x.dtype)
        src = torch.clamp(sy, max=H - 1) * W + torch.clamp(sx, max=W - 1)
        xw = x[:, src] * valid[None, :, :, None]  # [B, nW + 1, N, C]
        mask = None
        if self.shift_size:
            region = ((py >= Hp - ws).long() + (py >= Hp - shift).long()) * 3 + \
                (px >= Wp - ws).long() + (px >= Wp - shift).long()
            mask = (region[:, None, :] != region[:, :, None]).to(x.dtype) * -100.
        xw = self.attn(xw, (ws, ws), mask)
        qy = _sym_mod(torch.arange(H, device=x.device) - shift, Hp)
        qx = _sym_mod(torch.arange(W, device=x.device) - shift, Wp)
        dst_win = ((qy[:, None] // ws) * nw + qx[None] // ws).flatten()
        dst_tok = ((qy[:, None] % ws) * ws + qx[None] % ws).flatten()
        return xw[:, dst_win, dst_tok]

    def _attn(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        if is_exporting():
            return self._attn_export(x, feat_size)
        B, L, C = x.shape
        H, W = feat_size
        ws, shift = self.window_size, self.shift_size
        if self.window_clamp and min(H, W) <= ws:
            ws, shift = min(H, W), 0
        x = x.reshape(B, H, W, C)
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = _shift_mask(Hp, Wp, ws, ws, shift, shift).to(x.device)
        x = x.reshape(B, Hp // ws, ws, Wp // ws, ws, C).transpose(2, 3).reshape(B, -1, ws * ws, C)
        x = self.attn(x, (ws, ws), mask)
        x = x.reshape(B, Hp // ws, Wp // ws, ws, ws, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x[:, :H, :W].reshape(B, L, C)

    def forward(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self._attn(self.norm1(x), feat_size))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def _parse_attn_types(attn_type: str, depths: Sequence[int]) -> List[List[bool]]:
    """The official per-stage type string (``'AAAB'``, ``'AABB'``, ``'AAMB2'``: ``M`` = the first k blocks agent,
    k given after the stage letters) as per-block ``is_agent`` flags."""
    n = len(depths)
    if len(attn_type) < n or any(c not in 'ABM' for c in attn_type[:n]):
        raise ValueError(f'attn_type {attn_type!r}: expected one of A, B, M per stage ({n} stages)')
    out = []
    for i, d in enumerate(depths):
        c = attn_type[i]
        if c == 'M':
            k = int(attn_type[n:])
            out.append([j < k for j in range(d)])
        else:
            out.append([c == 'A'] * d)
    return out


class SwinStage(_Stage):
    """Optional patch merging (timm's: pads odd maps, norm then reduction, the official order) and A/B blocks.
    NCHW in and out."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            downsample: bool,
            grid: Tuple[int, int],
            depth: int,
            num_heads: int,
            agent_flags: Sequence[bool],
            window_size: int,
            window_clamp: bool,
            mlp_ratio: float,
            qkv_bias: bool,
            agent_num: int,
            agent_shape: Optional[Sequence[int]],
            drop_path: Sequence[float],
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.downsample = PatchMerging(in_dim, dim, norm_layer=norm_layer) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([
            Block(
                dim, num_heads, grid, agent_num=agent_num, agent_shape=agent_shape, qkv_layout='qkv',
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop,
                drop_path=drop_path[j], norm_layer=norm_layer)
            if agent_flags[j] else
            SwinBlock(
                dim, num_heads, window_size, shift=j % 2 == 1, window_clamp=window_clamp, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop, drop_path=drop_path[j],
                norm_layer=norm_layer)
            for j in range(depth)])

    def _tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.downsample(x.permute(0, 2, 3, 1))  # NHWC
        return x.flatten(1, 2), (x.shape[1], x.shape[2])


class AgentSwin(_StagedModel):
    """Agent-Swin: Swin with agent attention ("A", one global window) or shifted-window attention ("B") per stage."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_size: int = 56,
            attn_type: str = 'AAAB',
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            agent_num: Sequence[int] = (9, 16, 49, 49),
            agent_shapes: Optional[Sequence[Optional[Sequence[int]]]] = None,
            window_clamp: bool = True,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            norm_layer: Optional[Callable[[int], nn.Module]] = None,
    ):
        """
        Args:
            img_size: Training size: sets the agent-bias grids (the stage resolutions); any input size runs.
            patch_size: Patch size of the stem.
            in_chans: Input channels.
            num_classes: Classes of the head (0 for none).
            global_pool: ``'avg'`` or ``''``.
            embed_dim: Stage-1 width (doubled per stage).
            depths: Stage depths.
            num_heads: Stage heads.
            window_size: The official agent window (56 at 224, 72 at 288, 96 at 384): agent blocks attend over the
                whole stage map; the "B" blocks use ``max(7, window_size // 8)``, shifted on odd blocks.
            attn_type: Official per-stage types, e.g. ``'AAAB'``, ``'AABB'``, ``'AAMB2'``.
            mlp_ratio: MLP ratio.
            qkv_bias: Bias of the qkv projections.
            agent_num: Agents per stage (square numbers).
            agent_shapes: Agent grid per stage at run time (the official downstream ``downstream_agent_shapes``, e.g.
                ``((9, 9), (12, 12), (14, 14), (7, 7))``); None keeps the square grids of ``agent_num``.
            window_clamp: The classification rule for "B" blocks on maps no larger than their window (one window, no
                shift); False: the downstream rule (keep window and shift, pad).
            drop_rate: Dropout before the head and after the stem.
            proj_drop_rate: Dropout after projections and in the MLPs.
            attn_drop_rate: Dropout on attention maps.
            drop_path_rate: Stochastic depth (linear over all blocks).
            norm_layer: Norm (LayerNorm eps 1e-5, as the official Swin).
        """
        super().__init__()
        norm_layer = norm_layer or nn.LayerNorm
        img_size = to_2tuple(img_size)
        n = len(depths)
        flags = _parse_attn_types(attn_type, depths)
        agent_shapes = agent_shapes or [None] * n
        dpr = _stage_drop_paths(drop_path_rate, depths)
        dims = [embed_dim * 2 ** i for i in range(n)]
        self.patch_embed = PatchEmbed(
            img_size=None, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, norm_layer=norm_layer,
            output_fmt='NHWC', strict_img_size=False, dynamic_img_pad=True)
        self.pos_drop = nn.Dropout(drop_rate)
        self.stem = nn.Identity()
        grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        stages = []
        for i in range(n):
            g = (grid[0] // 2 ** i, grid[1] // 2 ** i)
            stages.append(SwinStage(
                dims[i - 1] if i else dims[0], dims[i], i > 0, g, depths[i], num_heads[i], flags[i],
                max(7, window_size // 8), window_clamp, mlp_ratio, qkv_bias, int(agent_num[i]), agent_shapes[i],
                dpr[i], proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                norm_layer=norm_layer))
        self._init_host(stages, norm_layer(dims[-1]), num_classes, in_chans, global_pool, dims, patch_size, drop_rate)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(super()._stem(x))).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------------------------
# Agent-CSwin
# ----------------------------------------------------------------------------------------------------------------


def _windows(x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """``[B, Hp, Wp, C]`` -> ``[B * nW, sh * sw, C]``, windows and tokens row-major (the official ``img2windows``)."""
    B, Hp, Wp, C = x.shape
    return x.reshape(B, Hp // sh, sh, Wp // sw, sw, C).transpose(2, 3).reshape(-1, sh * sw, C)


class LePEAttention(nn.Module):
    """CSWin stripe attention with a locally-enhanced positional encoding (depthwise 3x3 conv of V within each
    stripe): the official "B" branch. ``idx`` 0: stripes of ``split_size`` columns, 1: of ``split_size`` rows,
    -1: the whole map. Maps not divisible by the stripe are padded; padded keys are masked."""

    def __init__(self, dim: int, num_heads: int, split_size: int, idx: int, attn_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.split_size = split_size
        self.idx = idx
        self.scale = (dim // num_heads) ** -0.5
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)
        self.attn_drop = attn_drop

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        B, L, C = q.shape
        H, W = feat_size
        sh, sw = (H, W) if self.idx == -1 else (H, self.split_size) if self.idx == 0 else (self.split_size, W)
        exporting = is_exporting()
        if exporting:  # whole stripes by ceil-div (simple symbolic sizes); the key mask is always built (no guard)
            Hp = H if self.idx != 1 else (H + sh - 1) // sh * sh
            Wp = W if self.idx != 0 else (W + sw - 1) // sw * sw
            pad_b, pad_r = Hp - H, Wp - W
        else:
            pad_b, pad_r = (sh - H % sh) % sh, (sw - W % sw) % sw
            Hp, Wp = H + pad_b, W + pad_r
        if exporting:  # padded by a gather (zeros outside the map): no pad whose zero case the graph specializes on
            rows, cols = torch.arange(Hp, device=q.device), torch.arange(Wp, device=q.device)
            inside = ((rows[:, None] < H) & (cols[None] < W))[None, :, :, None]
            rows, cols = torch.clamp(rows, max=H - 1)[:, None], torch.clamp(cols, max=W - 1)[None]
            q, k, v = (t.reshape(B, H, W, C)[:, rows, cols] * inside for t in (q, k, v))
        else:
            q, k, v = (F.pad(t.reshape(B, H, W, C), (0, 0, 0, pad_r, 0, pad_b)) for t in (q, k, v))
        N, h = sh * sw, self.num_heads
        v = _windows(v, sh, sw)
        lepe = self.get_v(v.transpose(1, 2).reshape(-1, C, sh, sw)).flatten(2).transpose(1, 2)
        mask = None
        if (exporting and self.idx != -1) or (not exporting and (pad_b or pad_r)):
            if exporting:
                valid = inside[0, :, :, 0]
            else:
                valid = torch.zeros(Hp, Wp, dtype=torch.bool, device=q.device)
                valid[:H, :W] = True
            valid = _windows(valid[None, :, :, None], sh, sw)[:, :, 0]  # [nW, N]
            mask = valid[:, None, None, :].repeat(B, 1, 1, 1)  # [B * nW, 1, 1, N]
        x = F.scaled_dot_product_attention(
            _windows(q, sh, sw).reshape(-1, N, h, C // h).transpose(1, 2),
            _windows(k, sh, sw).reshape(-1, N, h, C // h).transpose(1, 2),
            v.reshape(-1, N, h, C // h).transpose(1, 2),
            attn_mask=mask, dropout_p=self.attn_drop if self.training else 0., scale=self.scale)
        x = x.transpose(1, 2).reshape(-1, N, C) + lepe
        x = x.reshape(B, Hp // sh, Wp // sw, sh, sw, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        if exporting:  # cropped by a gather (no slice whose no-op case the graph specializes on)
            return x[:, torch.arange(H, device=x.device)[:, None], torch.arange(W, device=x.device)[None]].reshape(
                B, L, C)
        return x[:, :H, :W].reshape(B, L, C)


@register_notrace_module  # reason: stripe padding follows the input size
class CSwinBlock(nn.Module):
    """CSWin block: one qkv projection split over the branches (channels ``[:C/2]`` and ``[C/2:]`` of each of q, k,
    v), an output projection. Agent ("A") blocks are one global agent-attention branch whose depthwise conv on V is
    the official ``get_v``; "B" blocks are the two CSWin stripe branches, or one global branch in the last stage (or
    where the stripe covers the training map, the official rule)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            grid: Tuple[int, int],
            agent: bool,
            split_size: int,
            last_stage: bool = False,
            agent_num: int = 49,
            agent_shape: Optional[Sequence[int]] = None,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.agent = agent
        if agent:
            # the released models use agent attention only where the official la_split_size covers the whole map
            self.attns = nn.ModuleList([AgentAttention(
                dim, num_heads, grid, agent_num=agent_num, agent_shape=agent_shape, qkv_layout='none', proj=False,
                attn_drop=attn_drop)])
        elif last_stage or grid[0] == split_size:
            self.attns = nn.ModuleList([LePEAttention(dim, num_heads, split_size, -1, attn_drop)])
        else:
            self.attns = nn.ModuleList([
                LePEAttention(dim // 2, num_heads // 2, split_size, i, attn_drop) for i in range(2)])
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, L, 3, C).unbind(2)
        if self.agent:
            y = self.attns[0].attend(q, k, v, feat_size)
        elif len(self.attns) == 1:
            y = self.attns[0](q, k, v, feat_size)
        else:
            c = C // 2
            y = torch.cat([
                self.attns[0](q[..., :c], k[..., :c], v[..., :c], feat_size),
                self.attns[1](q[..., c:], k[..., c:], v[..., c:], feat_size)], dim=-1)
        x = x + self.drop_path(self.proj_drop(self.proj(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvNorm(nn.Module):
    """Strided conv then LayerNorm over channels (the CSWin stem and ``Merge_Block``). NCHW in and out."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding)
        self.norm = norm_layer(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CSwinStage(_Stage):
    """Optional merge (3x3 stride-2 conv + LayerNorm) and CSWin/agent blocks. NCHW in and out."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            downsample: bool,
            grid: Tuple[int, int],
            depth: int,
            num_heads: int,
            agent_flags: Sequence[bool],
            split_size: int,
            last_stage: bool,
            mlp_ratio: float,
            qkv_bias: bool,
            agent_num: int,
            agent_shape: Optional[Sequence[int]],
            drop_path: Sequence[float],
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.downsample = ConvNorm(in_dim, dim, 3, 2, 1, norm_layer) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([
            CSwinBlock(
                dim, num_heads, grid, agent_flags[j], split_size, last_stage=last_stage, agent_num=agent_num,
                agent_shape=agent_shape, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop,
                attn_drop=attn_drop, drop_path=drop_path[j], norm_layer=norm_layer)
            for j in range(depth)])

    def _tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.downsample(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class AgentCSwin(_StagedModel):
    """Agent-CSwin: CSWin with one global agent-attention branch in the "A" stages (``AABB`` as released)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 64,
            depths: Sequence[int] = (2, 4, 18, 1),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            split_size: Sequence[int] = (1, 2, 7, 7),
            attn_type: str = 'AABB',
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            agent_num: Sequence[int] = (9, 16, 49, 49),
            agent_shapes: Optional[Sequence[Optional[Sequence[int]]]] = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[Callable[[int], nn.Module]] = None,
    ):
        """
        Args:
            img_size: Training size: sets the agent-bias grids and the single-branch rule; any input size runs.
            in_chans: Input channels.
            num_classes: Classes of the head (0 for none).
            global_pool: ``'avg'`` or ``''``.
            embed_dim: Stage-1 width (doubled per stage).
            depths: Stage depths.
            num_heads: Stage heads.
            split_size: Stripe width of the "B" stages.
            attn_type: Official per-stage types (``'AABB'``; ``M`` as in Agent-Swin).
            mlp_ratio: MLP ratio.
            qkv_bias: Bias of the qkv projections.
            agent_num: Agents per stage (square numbers).
            agent_shapes: Agent grid per stage at run time; None keeps the square grids of ``agent_num``.
            drop_rate: Dropout before the head.
            proj_drop_rate: Dropout after projections and in the MLPs.
            attn_drop_rate: Dropout on attention maps.
            drop_path_rate: Stochastic depth (linear over all blocks).
            norm_layer: Norm (LayerNorm eps 1e-5, as the official CSWin).
        """
        super().__init__()
        norm_layer = norm_layer or nn.LayerNorm
        img_size = to_2tuple(img_size)
        n = len(depths)
        flags = _parse_attn_types(attn_type, depths)
        agent_shapes = agent_shapes or [None] * n
        dpr = _stage_drop_paths(drop_path_rate, depths)
        dims = [embed_dim * 2 ** i for i in range(n)]
        self.stem = ConvNorm(in_chans, embed_dim, 7, 4, 2, norm_layer)
        stages = []
        for i in range(n):
            g = (img_size[0] // 2 ** (i + 2), img_size[1] // 2 ** (i + 2))
            stages.append(CSwinStage(
                dims[i - 1] if i else dims[0], dims[i], i > 0, g, depths[i], num_heads[i], flags[i], split_size[i],
                i == n - 1, mlp_ratio, qkv_bias, int(agent_num[i]), agent_shapes[i],
                dpr[i], proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                norm_layer=norm_layer))
        self._init_host(stages, norm_layer(dims[-1]), num_classes, in_chans, global_pool, dims, 4, drop_rate)


# ----------------------------------------------------------------------------------------------------------------
# checkpoint conversion, builders, cfgs, registrations
# ----------------------------------------------------------------------------------------------------------------

# persistent buffers of the official Swin blocks, recomputed here
_DROP_SUFFIXES = ('relative_position_index', 'attn_mask')


def _submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _resize_grid_bias(name: str, v: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """An ``ah/aw`` ``[1, h, n, H, W]`` or ``ha/wa`` ``[1, h, H, W, n]`` bias of another training grid resized
    (bilinear, the official downstream rule) to ``shape``, e.g. to fine-tune at a new size."""
    if name.endswith(('ah_bias', 'aw_bias')):
        return F.interpolate(v[0], size=tuple(shape[3:]), mode='bilinear', align_corners=False)[None]
    x = F.interpolate(v[0].permute(0, 3, 1, 2), size=tuple(shape[2:4]), mode='bilinear', align_corners=False)
    return x.permute(0, 2, 3, 1)[None]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Convert an official Agent-DeiT/PVT/Swin/CSwin checkpoint (already loaded; a training dict with ``'model'`` or
    a raw state dict) to this model.

    Strips ``module.``, drops the official Swin persistent buffers (``relative_position_index``, ``attn_mask``),
    maps the PVT/Swin/CSwin layouts onto ``stem``/``stages`` (CSwin's agent ``get_v`` is ``dwc``), and resamples
    tensors saved for another training grid as the official fine-tuning loader (``utils.load_pretrained``) does:
    position embeddings bicubic, per-row/column agent biases linear along their grid axis.
    """
    state_dict = unwrap_state_dict(state_dict)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    out = {}
    for k, v in state_dict.items():
        if k.endswith(_DROP_SUFFIXES):
            continue
        if isinstance(model, AgentDeiT):
            if k == 'patch_embed.proj.weight':
                v = reshape_patch_embed(v, model.patch_embed.proj.weight.shape)
            elif k == 'pos_embed' and v.shape != model.pos_embed.shape:
                v = resample_pos_embed(v, tuple(model.patch_embed.grid_size), square_grid(v.shape[1] - 1, k), 1)
        elif isinstance(model, AgentPVT):
            k = re.sub(r'^patch_embed(\d)\.', lambda m: f'stages.{int(m[1]) - 1}.patch_embed.', k)
            k = re.sub(r'^pos_embed(\d)$', lambda m: f'stages.{int(m[1]) - 1}.pos_embed', k)
            k = re.sub(r'^block(\d)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.', k)
            if k.endswith('.pos_embed'):
                stage = model.stages[int(k.split('.')[1])]
                if v.shape != stage.pos_embed.shape:
                    v = resample_pos_embed(v, stage.grid, square_grid(v.shape[1], k), 0)
        elif isinstance(model, AgentSwin):
            k = remap_stage_key(k)
        elif isinstance(model, AgentCSwin):
            k = re.sub(r'^stage1_conv_embed\.0\.', 'stem.conv.', k)
            k = re.sub(r'^stage1_conv_embed\.2\.', 'stem.norm.', k)
            k = re.sub(r'^merge(\d)\.', r'stages.\1.downsample.', k)
            k = re.sub(r'^stage(\d)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.', k)
            if '.get_v.' in k and isinstance(_submodule(model, k.rsplit('.', 2)[0]), AgentAttention):
                k = k.replace('.get_v.', '.dwc.')
        if k.endswith(('ah_bias', 'aw_bias', 'ha_bias', 'wa_bias')) and k in shapes and v.shape != shapes[k]:
            v = _resize_grid_bias(k, v, shapes[k])
        out[k] = v
    return out


def _create_agent(model_cls: Type[nn.Module], variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    # DeiT hosts give the last block by default (as timm's ViTs), the hierarchical hosts their four stages
    out_indices = 3 if model_cls is AgentDeiT else (0, 1, 2, 3)
    return build_model(model_cls, variant, pretrained, checkpoint_filter_fn, default_out_indices=out_indices, **kwargs)


_create_agent_deit = partial(_create_agent, AgentDeiT)
_create_agent_pvt = partial(_create_agent, AgentPVT)
_create_agent_swin = partial(_create_agent, AgentSwin)
_create_agent_cswin = partial(_create_agent, AgentCSwin)


def _cfg(file_id: str = '', **kwargs) -> dict:
    return default_cfg(f'https://cloud.tsinghua.edu.cn/f/{file_id}/?dl=1' if file_id else '', {
        'crop_mode': 'squash',
        'origin_url': 'https://github.com/LeapLabTHU/Agent-Attention',
        'notes': ('Tsinghua Cloud training dict (weights under "model", pickled yacs config): pretrained=True and '
                  'tools/convert_checkpoint.py read it safely (the yacs config as plain data, weights_only)',),
        **_PAPER,
    }, **kwargs)


def _hcfg(file_id: str, size: int = 224, **kwargs) -> dict:
    """A hierarchical host's cfg: stride-32 final map."""
    return _cfg(file_id, input_size=(3, size, size), pool_size=(size // 32, size // 32), **kwargs)


_CSWIN_CFG = dict(
    first_conv='stem.conv',
    notes=('Tsinghua Cloud training dict (pickled yacs config, read safely as plain data by pretrained=True and '
           'tools/convert_checkpoint.py); trained with EMA: the filter takes "model", pass the EMA weights '
           '("state_dict_ema") as a raw state dict to use them instead',))

default_cfgs = generate_default_cfgs({
    'agent_deit_tiny.in1k': _cfg('57e0904221824ee7b7af'),
    'agent_deit_small.in1k': _cfg('fdd43304372541db8ea7'),
    'agent_deit_small_448.in1k': _cfg('a228f86241c445f1969b', input_size=(3, 448, 448)),
    'agent_deit_base.in1k': _cfg('5115f15fdd7e4ab58fbc'),
    'agent_pvt_tiny.in1k': _hcfg('13fdf0e0a7c5498c934f', first_conv='stages.0.patch_embed.proj'),
    'agent_pvt_small.in1k': _hcfg('36b8be9a8863456685a3', first_conv='stages.0.patch_embed.proj'),
    'agent_pvt_medium.in1k': _hcfg('4d00ecacf18b45f9b88c', first_conv='stages.0.patch_embed.proj'),
    'agent_pvt_medium_256.in1k': _hcfg(
        '654df734121643b19c52', first_conv='stages.0.patch_embed.proj', size=256),
    'agent_pvt_large.in1k': _hcfg('040cfe0cfbbe4762ad09', first_conv='stages.0.patch_embed.proj'),
    'agent_swin_tiny.in1k': _hcfg('a2ddc1190c224f768a41'),
    'agent_swin_small.in1k': _hcfg('f607172c9fea4d6e99bb'),
    'agent_swin_small_288.in1k': _hcfg('09760394e93b4046a25e', size=288),
    'agent_swin_base.in1k': _hcfg('4fcd2d0114bb490483c3'),
    'agent_swin_base_384.in1k': _hcfg('bb84ee9058954706a557', size=384),
    'agent_cswin_tiny.in1k': _hcfg('8c562a74441e46d5902b', **_CSWIN_CFG),
    'agent_cswin_small.in1k': _hcfg('30eb8af675bc4b7a8747', **_CSWIN_CFG),
    'agent_cswin_base.in1k': _hcfg('c8035b0839b2410c8c9f', **_CSWIN_CFG),
    'agent_cswin_base_384.in1k': _hcfg('1239be0df44b47719432', size=384, **_CSWIN_CFG),
})


register_variants(__name__, _create_agent_deit, {
    'agent_deit_tiny': (
        'Agent-DeiT-T: 192 wide, 3 heads, agent attention (49 agents) in all 12 blocks (74.9% top-1).',
        dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, agent_num=49)),
    'agent_deit_small': (
        'Agent-DeiT-S: 384 wide, 6 heads, agent attention (49 agents) in all 12 blocks (80.5% top-1).',
        dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, agent_num=49)),
    'agent_deit_small_448': ('Agent-DeiT-S at 448 (28x28 bias grid, 49 agents; 83.1% top-1).', dict(
        img_size=448, patch_size=16, embed_dim=384, depth=12, num_heads=6, agent_num=49)),
    'agent_deit_base': (
        'Agent-DeiT-B: 768 wide, 12 heads, agent attention (81 agents) in blocks 0-3, plain attention after (82.0%).',
        dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, agent_num=81, agent_layers=4)),
}, returns=AgentDeiT)


_PVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), agent_num=(9, 16, 49, 49))


register_variants(__name__, _create_agent_pvt, {
    'agent_pvt_tiny': ('Agent-PVT-T: depths 2-2-2-2, agent attention everywhere (78.4% top-1).', dict(
        depths=(2, 2, 2, 2), **_PVT)),
    'agent_pvt_small': ('Agent-PVT-S: depths 3-4-6-3 (82.2% top-1).', dict(depths=(3, 4, 6, 3), **_PVT)),
    'agent_pvt_medium': ('Agent-PVT-M: depths 3-4-18-3 (83.4% top-1).', dict(depths=(3, 4, 18, 3), **_PVT)),
    'agent_pvt_medium_256': ('Agent-PVT-M trained at 256 (64x64 stage-1 grid; 83.8% top-1).', dict(
        img_size=256, depths=(3, 4, 18, 3), **_PVT)),
    'agent_pvt_large': ('Agent-PVT-L: depths 3-8-27-3 (the official ``agent_pvt_b.yaml``; 83.7% top-1).', dict(
        depths=(3, 8, 27, 3), **_PVT)),
}, returns=AgentPVT)


register_variants(__name__, _create_agent_swin, {
    'agent_swin_tiny': ('Agent-Swin-T: depths 2-2-6-2, stages AAAB (82.6% top-1).', dict(
        embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=56, attn_type='AAAB')),
    'agent_swin_small': ('Agent-Swin-S: depths 2-2-18-2, stages AABB (83.7% top-1).', dict(
        embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=56, attn_type='AABB')),
    'agent_swin_small_288': ('Agent-Swin-S at 288: agent window 72, "B" window 9 (84.1% top-1).', dict(
        img_size=288, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=72, attn_type='AABB')),
    'agent_swin_base': (
        'Agent-Swin-B: width 128, stages AAMB2 (stage 3: 2 agent blocks, then 16 Swin blocks; 84.0% top-1).',
        dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=56, attn_type='AAMB2')),
    'agent_swin_base_384': ('Agent-Swin-B at 384 (fine-tuned): agent window 96, "B" window 12 (84.9% top-1).', dict(
        img_size=384, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=96,
        attn_type='AAMB2')),
}, returns=AgentSwin)


_CSWIN = dict(attn_type='AABB', agent_num=(9, 16, 49, 49))


register_variants(__name__, _create_agent_cswin, {
    'agent_cswin_tiny': ('Agent-CSwin-T: width 64, depths 2-4-18-1, stages AABB (83.1% top-1).', dict(
        embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7), **_CSWIN)),
    'agent_cswin_small': ('Agent-CSwin-S: width 64, depths 3-6-29-2 (83.9% top-1).', dict(
        embed_dim=64, depths=(3, 6, 29, 2), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7), **_CSWIN)),
    'agent_cswin_base': ('Agent-CSwin-B: width 96, depths 3-6-29-2 (84.7% top-1).', dict(
        embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 7, 7), **_CSWIN)),
    'agent_cswin_base_384': ('Agent-CSwin-B at 384 (stripes of 12 in stage 3; 85.8% top-1).', dict(
        img_size=384, embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 12, 12),
        **_CSWIN)),
}, returns=AgentCSwin)
