"""LITv2: hierarchical vision transformer with HiLo attention and deformable token merging.

Paper: `Fast Vision Transformers with HiLo Attention` - https://arxiv.org/abs/2205.13213 (Pan, Cai, Zhuang;
NeurIPS 2022).

Official code and weights: https://github.com/ziplab/LITv2 (Apache-2.0; ``classification/models/*.py``, and the
mmdet/mmseg backbones ``detection/mmdet/models/backbones/litv2.py``, ``segmentation/mmseg/models/backbones/litv2.py``).

Architecture (as the official code): a 4x4 patch embedding with LayerNorm; stages 1-2 are MLP-only blocks
(``x + drop_path(ConvFFN(LN(x)))``, no attention); stage 3 uses HiLo attention (``visionattn.layers.HiLo``, window 2,
``alpha`` 0.9 Lo-Fi heads; the official detection variants use window 4: ``local_ws=(0, 0, 4, 1)``); stage 4 is
HiLo with window 1, i.e. global attention. The ConvFFN is ``fc1 -> 3x3 depthwise conv -> GELU -> fc2``. Between the
stages a deformable token merging (DTM) halves the map: a 2x2 stride-2 deformable convolution (DCNv1; offsets from a
2x2 stride-2 conv) -> BatchNorm -> GELU. The deformable convolution is ``torchvision.ops.deform_conv2d``, which
computes the official CUDA DCNv1 function (same offset layout ``[(dy, dx) per kernel tap]``, bilinear sampling with
zeros outside the map and no sampling at or beyond one pixel outside); like the official apex ``float_function`` it
runs in float32 under float16/bfloat16.

What this version adds over the official classification code: any input size, as the official detection and
segmentation backbones handle it (inputs padded bottom/right to a multiple of 4, HiLo maps zero-padded to a multiple
of the window and cropped, odd maps floored by the DTM convolution); maps of a single row or column are padded to two
before a DTM, where the official code would produce an empty map. Working gradient checkpointing, and
``features_only`` / ``forward_intermediates`` returning the four NCHW stage maps (before each DTM, as the official
det/seg backbones take them; those backbones add per-output LayerNorms ``norm{i}``: ``out_norms='mmdet'`` (stages
2-4) or ``'mmseg'`` (all four) adds them, so that their checkpoints reproduce the official backbone outputs).

Training note: the official recipe trains the offset convolutions' weights (``*.dconv.conv_offset.weight``) at 0.01x
the base learning rate (``OFFSET_LR_MULTI``); their biases use the base rate without weight decay.

Layout: NHWC inside the model; ``forward_features`` returns NHWC (``output_fmt = 'NHWC'``). Stage ``i > 0`` starts
with the DTM that the official code runs at the end of stage ``i - 1``.

Size semantics of pretrained weights: no tensor depends on the input size (HiLo windows and DTM offsets are
computed per map; there is no position table), so the 224 weights run unchanged at any input size, as the official
detection and segmentation backbones run them; ``litv2_base_384`` differs only in its pretrained cfg.
"""
from typing import List, Optional, Sequence, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision  # noqa: F401 - registers torch.ops.torchvision.deform_conv2d
from timm.layers import DropPath, register_notrace_function
from timm.models import generate_default_cfgs

from visionattn.layers import HiLo

from ._base import OutNormsArg, Stage, StagedModel, StageNorms, out_norm_stages
from ._convert import remap_stage_key, strip_prefix, unwrap_state_dict
from ._hub import build_model, default_cfg
from ._registry import register_variants

__all__ = ['LITv2', 'deform_conv2d']

_PAPER = dict(
    paper_ids='arXiv:2205.13213', paper_name='Fast Vision Transformers with HiLo Attention', license='apache-2.0',
    origin_url='https://github.com/ziplab/LITv2')
# stages with a per-output LayerNorm in the official dense-prediction backbones
_OUT_NORMS = {'mmdet': (1, 2, 3), 'mmseg': (0, 1, 2, 3)}


@register_notrace_function  # reason: dtype and shape checks
def deform_conv2d(
        x: torch.Tensor,
        offset: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        stride: int = 1,
        padding: int = 0,
) -> torch.Tensor:
    """DCNv1 deformable convolution (one offset group, no modulation) by ``torchvision.ops.deform_conv2d``.

    Offsets are ``[B, 2 * kh * kw, Ho, Wo]`` ordered ``(dy, dx)`` per kernel tap, row-major over the taps (the
    official DCN layout). Half-precision inputs are computed in float32 (like the official apex ``float_function``)
    and the result is returned in ``x``'s dtype.
    """
    dtype = x.dtype
    cdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    mask = x.new_zeros((x.shape[0], 1), dtype=cdtype)  # unused (no modulation), as torchvision passes it
    out = torch.ops.torchvision.deform_conv2d(
        x.to(cdtype), weight.to(cdtype), offset.to(cdtype), mask, bias.to(cdtype),
        stride, stride, padding, padding, 1, 1, 1, 1, False)
    return out.to(dtype)


@register_notrace_function  # reason: pads depending on the map size
def pad_single_row_col(x: torch.Tensor) -> torch.Tensor:
    """Pad an NCHW map with one row/column of zeros where it is only one row/column high/wide."""
    return F.pad(x, (0, int(x.shape[-1] == 1), 0, int(x.shape[-2] == 1)))


class PatchEmbed(nn.Module):
    """``patch_size`` x ``patch_size`` patchify conv (input padded bottom/right to a multiple), LayerNorm; NHWC out."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, patch_size: int = 4,
                 norm_layer: Optional[Type[nn.Module]] = nn.LayerNorm):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = F.pad(x, (0, (p - x.shape[-1] % p) % p, 0, (p - x.shape[-2] % p) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class DeformConv2d(nn.Module):
    """DCNv1 with its offset branch (the official ``DeformConv2dPack``): offsets ``conv_offset(x)``, zero-initialised,
    so that a fresh module is an ordinary convolution."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 2, stride: int = 2, padding: int = 0):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(out_chans, in_chans, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_chans))
        self.conv_offset = nn.Conv2d(
            in_chans, 2 * kernel_size * kernel_size, kernel_size=kernel_size, stride=stride, padding=padding)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        bound = 1 / (self.weight[0].numel() ** 0.5)
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, self.conv_offset(x), self.weight, self.bias, self.stride, self.padding)


class DTM(nn.Module):
    """Deformable token merging ``C -> out_dim`` at stride 2: DCNv1 2x2/2 -> BatchNorm -> GELU; NHWC in and out."""

    def __init__(self, dim: int, out_dim: int, act_layer: Type[nn.Module] = nn.GELU):
        super().__init__()
        self.dconv = DeformConv2d(dim, out_dim, kernel_size=2, stride=2)
        self.norm = nn.BatchNorm2d(out_dim)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dconv(pad_single_row_col(x.permute(0, 3, 1, 2)))
        return self.act(self.norm(x)).permute(0, 2, 3, 1)


class ConvFFN(nn.Module):
    """``fc1 -> 3x3 depthwise conv (with bias) -> act -> drop -> fc2 -> drop`` on NHWC maps (official ``DWMlp``)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: Type[nn.Module] = nn.GELU, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1, groups=hidden_dim)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)
        nn.init.normal_(self.dwconv.weight, 0., (2. / 9.) ** 0.5)  # official: fan_out = k * k * C / groups
        nn.init.zeros_(self.dwconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.drop1(self.act(x))
        return self.drop2(self.fc2(x))


class ConvFFNBlock(nn.Module):
    """MLP-only block of stages 1-2: ``x + drop_path(mlp(norm2(x)))`` (official names, no ``norm1``)."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            **kwargs,
    ):
        super().__init__()
        self.norm2 = norm_layer(dim)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HiLoBlock(nn.Module):
    """``x + drop_path(hilo(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))`` with the ConvFFN."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int = 2,
            alpha: float = 0.9,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = HiLo(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, window_size=window_size, alpha=alpha)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class LITv2Stage(Stage):
    """Optional DTM (from the previous stage's width), then ``depth`` blocks; NHWC in and out."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            window_size: int,
            downsample: bool = True,
            drop_path: Sequence[float] = (),
            act_layer: Type[nn.Module] = nn.GELU,
            **block_kwargs,
    ):
        super().__init__()
        self.downsample = DTM(dim, out_dim, act_layer=act_layer) if downsample else nn.Identity()
        if window_size > 0:
            blocks = [
                HiLoBlock(out_dim, num_heads, window_size=window_size, drop_path=drop_path[i], act_layer=act_layer,
                          **block_kwargs)
                for i in range(depth)]
        else:
            blocks = [ConvFFNBlock(out_dim, drop_path=drop_path[i], act_layer=act_layer, **block_kwargs)
                      for i in range(depth)]
        self.blocks = nn.Sequential(*blocks)


class LITv2(StagedModel):
    """LITv2: MLP-only early stages, HiLo attention later, deformable token merging in between."""

    stage_fmt = 'NHWC'
    group_tail = (r'^norm', r'^out_norms')

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            local_ws: Sequence[int] = (0, 0, 2, 1),
            alpha: float = 0.9,
            patch_size: int = 4,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.2,
            out_norms: OutNormsArg = (),
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
    ):
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classes of the head (0 for none).
            global_pool: ``'avg'`` or ``''`` (no pooling).
            embed_dim: Width of the first stage; stage ``i`` is ``embed_dim * 2 ** i`` wide.
            depths: Blocks per stage.
            num_heads: Attention heads per stage (unused by MLP-only stages).
            local_ws: Per stage: 0 for MLP-only blocks, else the HiLo window (1: global attention). Official:
                ``(0, 0, 2, 1)`` for classification and segmentation, ``(0, 0, 4, 1)`` for the ``ws_4`` detectors.
            alpha: Fraction of Lo-Fi heads in HiLo (0.9 in every release).
            patch_size: Stem patch size.
            mlp_ratio: ConvFFN hidden width over the block width.
            qkv_bias: Bias of the q/k/v projections.
            qk_scale: Logit scale (default ``head_dim ** -0.5``).
            drop_rate: Dropout before the classifier.
            proj_drop_rate: Dropout in the ConvFFN (official ``drop_rate``).
            drop_path_rate: Stochastic depth, increasing linearly over all blocks.
            out_norms: Stages whose ``forward_intermediates`` maps get a LayerNorm of their own, as the official
                dense-prediction backbones (``'mmdet'``: stages 1-3, ``'mmseg'``: 0-3, or indices); their weights are
                the ``norm{i}`` of those checkpoints; True: every stage. Default: none (classification).
            act_layer: Activation of the ConvFFN and the DTM.
            norm_layer: Norm layer of the blocks, the stem and the head.
        """
        super().__init__()
        num_stages = len(depths)
        dims = [int(embed_dim * 2 ** i) for i in range(num_stages)]
        self._init_api(in_chans, num_classes, global_pool, dims[-1])
        if not len(depths) == len(num_heads) == len(local_ws):
            raise ValueError(f'depths {list(depths)}, num_heads {list(num_heads)} and local_ws {list(local_ws)} '
                             'must have one entry per stage')
        self.output_fmt = 'NHWC'
        self.local_ws = tuple(local_ws)

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size=patch_size, norm_layer=norm_layer)
        self._init_stages(lambda i, dpr: LITv2Stage(
            dim=dims[max(i - 1, 0)],
            out_dim=dims[i],
            depth=depths[i],
            num_heads=num_heads[i],
            window_size=local_ws[i],
            downsample=i > 0,
            drop_path=dpr,
            act_layer=act_layer,
            norm_layer=norm_layer,
            alpha=alpha,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            proj_drop=proj_drop_rate,
        ), depths, dims, drop_path_rate, stride=patch_size)
        # per-output norms of the official det/seg backbones (applied to the intermediates only)
        self.out_norms = StageNorms(out_norm_stages(out_norms, num_stages, _OUT_NORMS), lambda i: norm_layer(dims[i]))
        self.norm = norm_layer(self.num_features)
        self._init_head(drop_rate)
        self.apply(self._init_weights)

    def _prune_out_norms(self, max_index: int, take_indices: List[int]) -> None:
        self.out_norms.prune(lambda i: i in take_indices)


def checkpoint_filter_fn(state_dict: dict, model: LITv2) -> dict:
    """Convert an official LITv2 checkpoint to this model.

    Accepts raw state dicts and training dicts (``'model'``, as the released classification files), and mmdet/mmseg
    checkpoints (``backbone.`` prefix; their per-output ``norm{i}`` LayerNorms become ``out_norms.{i}`` where the model
    has them, see ``LITv2(out_norms=...)``, and are dropped otherwise). Official names map as
    ``layers.i.blocks`` -> ``stages.i.blocks``, ``layers.i.downsample`` -> ``stages.{i+1}.downsample`` (its
    ``norm_layer`` -> ``norm``), ``mlp.dwconv.dwconv`` -> ``mlp.dwconv``; HiLo's names are unchanged.
    """
    state_dict = unwrap_state_dict(state_dict)
    state_dict = strip_prefix(state_dict)
    own = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        parts = k.split('.')
        if parts[0] == 'layers' and len(parts) > 2:
            k = remap_stage_key(k)
            if parts[2] == 'downsample':
                k = k.replace('.norm_layer.', '.norm.')
            else:
                k = k.replace('.mlp.dwconv.dwconv.', '.mlp.dwconv.')
        elif parts[0].startswith('norm') and parts[0][4:].isdigit():
            # per-output norms of the mmdet/mmseg backbones: kept where the model has them (``out_norms``)
            k = f'out_norms.{parts[0][4:]}.' + '.'.join(parts[1:])
            if k not in own:
                continue
        out[k] = v
    return out


def _create_litv2(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    return build_model(LITv2, variant, pretrained, checkpoint_filter_fn, default_out_indices=(0, 1, 2, 3), **kwargs)


def _cfg(url: str = '', **kwargs) -> dict:
    return default_cfg(url, {'pool_size': (7, 7), **_PAPER}, **kwargs)


_URL = 'https://github.com/ziplab/LITv2/releases/download/v1.0/'

default_cfgs = generate_default_cfgs({
    'litv2_small.in1k': _cfg(url=_URL + 'litv2_s.pth'),
    'litv2_medium.in1k': _cfg(url=_URL + 'litv2_m.pth'),
    'litv2_base.in1k': _cfg(url=_URL + 'litv2_b.pth'),
    # fine-tuned at 384 and evaluated without a center crop (TEST.CROP False)
    'litv2_base_384.in1k': _cfg(
        url=_URL + 'litv2_b_384.pth', input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
})


register_variants(__name__, _create_litv2, {
    'litv2_small': ('LITv2-S: 96 wide, depths 2-2-6-2 (28M params, 82.0% top-1).', dict(
        embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)),
    'litv2_medium': ('LITv2-M: 96 wide, depths 2-2-18-2 (49M params, 83.3% top-1).', dict(
        embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)),
    'litv2_base': ('LITv2-B: 128 wide, depths 2-2-18-2 (87M params, 83.6% top-1).', dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)),
    'litv2_base_384': ('LITv2-B fine-tuned at 384 (84.7% top-1).', dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)),
}, returns=LITv2)
