"""NAT, DiNAT and DiNAT_s: hierarchical transformers over (dilated) neighborhood attention; isotropic NAT/DiNAT.

Papers:
    - `Neighborhood Attention Transformer` - https://arxiv.org/abs/2204.07143 (Hassani, Walton, Li, Li, Shi;
      CVPR 2023)
    - `Dilated Neighborhood Attention Transformer` - https://arxiv.org/abs/2209.15001 (Hassani, Shi; 2022)

Official code and weights: https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (MIT license;
``classification/nat.py``, ``dinat.py``, ``dinats.py``, ``isotropic.py``). The attention runs on visionattn's GNA op
(``visionattn.ops.neighborhood``) with the NAT relative positional bias, so NATTEN is not needed.

What this version adds over the official classification code: any input size, square or not (see ``small_input``
below), per-layer dilations as a constructor argument with the official downstream schedules by name
(``dilations='coco'``, ``'ade20k'``, ...), working gradient checkpointing, ``features_only`` /
``forward_intermediates`` returning NCHW stage maps (the maps before each downsampler, as the official detection and
segmentation backbones take them), and a ``checkpoint_filter_fn`` that reads official classification checkpoints,
mmdet/mmseg backbone checkpoints and the Hugging Face ``transformers`` NAT/DiNAT layout (separate q/k/v).

Strided GNA: every model takes ``stride`` (an int, a pair, per stage or per layer; ``resolve_strides``), so released
weights run with query groups sharing one window (GNA, arXiv 2504.16922): ``timm.create_model('nat_tiny', stride=7)``.
``python tools/benchmark.py models --models nat_tiny --strides sim`` times the strides that the GNA simulator finds
perfectly block-sparse for the blocked CPU backend. The isotropic models (``NATIsotropic``) are the DiNAT paper's
ViT-like variants: patch-16 stem, 12 layers at one resolution, NA with dilation 1 / 2 alternating for DiNAT.

Layout: NHWC inside the model; ``forward_features`` returns NHWC (``output_fmt = 'NHWC'``, like timm's Swin), the
intermediates are NCHW. Stage ``i > 0`` starts with the downsampler that the official code runs at the end of stage
``i - 1`` (timm's Swin convention), so a stage's output is the official pre-downsample map.
"""
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from timm.models import checkpoint, checkpoint_seq, generate_default_cfgs

from visionattn.layers import NeighborhoodAttention2d, check_image_input, drop_path_rates

from ._base import ModelApi, Stage, StagedModel, TokenModel
from ._convert import remap_stage_key, strip_prefix, unwrap_state_dict
from ._hub import build_model, default_cfg
from ._registry import register_variants

__all__ = ['NAT', 'NATIsotropic', 'NAT_DILATIONS', 'resolve_dilations', 'resolve_strides']

_NAT_PAPER = dict(paper_ids='arXiv:2204.07143', paper_name='Neighborhood Attention Transformer')
_DINAT_PAPER = dict(paper_ids='arXiv:2209.15001', paper_name='Dilated Neighborhood Attention Transformer')

# Official per-stage dilation patterns, by architecture ('conv' stem: NAT/DiNAT, 'patch' stem: DiNAT_s) and name.
# Each stage's pattern is repeated to the stage depth (the official lists are these patterns repeated, e.g.
# [1, 2] x 9 for an 18-layer stage). Sources: classification/dinat.py, dinats.py (ImageNet, 224 and 384),
# detection/configs/dinat*/ (COCO, 3x schedule), segmentation/configs/dinat*/ (ADE20K 512, DiNAT-L 640).
NAT_DILATIONS: Dict[str, Dict[str, Tuple[Tuple[int, ...], ...]]] = {
    'conv': {
        'in1k': ((1, 8, 1), (1, 4, 1, 4), (1, 2), (1,)),
        'in1k_384': ((1, 13, 1), (1, 6, 1, 6), (1, 3), (1,)),
        'coco': ((1, 28, 1), (1, 7, 1, 14), (1, 3, 1, 5, 1, 7), (1, 3, 1, 3, 1)),
        'ade20k': ((1, 16, 1), (1, 4, 1, 8), (1, 2, 1, 3, 1, 4), (1, 2, 1, 2, 1)),
        'ade20k_640': (
            (1, 20, 1), (1, 5, 1, 10), (1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5), (1, 2, 1, 2, 1)),
    },
    'patch': {
        'in1k': ((1, 8), (1, 4), (1, 2), (1,)),
        'in1k_384': ((1, 13), (1, 6), (1, 3), (1,)),
        'coco': ((1, 28), (1, 14), (1, 3, 1, 5, 1, 7), (1, 3)),
        'ade20k': ((1, 16), (1, 8), (1, 2, 1, 3, 1, 4), (1, 2)),
        'ade20k_640': ((1, 20), (1, 10), (1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5), (1, 2)),
    },
}
_SMALL_INPUT = ('pad', 'clamp')


def resolve_dilations(
        dilations: Union[None, int, str, Sequence[Sequence[int]]],
        depths: Sequence[int],
        stem_type: str = 'conv',
) -> List[List[int]]:
    """Per-layer dilations ``[[d, ...] per stage]`` from None (all 1), an int, a schedule name or explicit lists.

    Names (``NAT_DILATIONS``): ``'in1k'`` (ImageNet 224), ``'in1k_384'``, ``'coco'`` (official detection),
    ``'ade20k'`` (official UPerNet 512), ``'ade20k_640'`` (DiNAT-L UPerNet 640); the DiNAT_s tables apply to the
    ``'patch'`` stem.
    """
    if dilations is None or isinstance(dilations, int):
        d = 1 if dilations is None else dilations
        if d < 1:
            raise ValueError(f'dilation must be >= 1, got {d}')
        return [[d] * n for n in depths]
    if isinstance(dilations, str):
        table = NAT_DILATIONS[stem_type]
        if dilations not in table:
            raise ValueError(f'unknown dilation schedule {dilations!r}; known: {sorted(table)}')
        patterns = table[dilations]
        if len(patterns) != len(depths):
            raise ValueError(f'schedule {dilations!r} has {len(patterns)} stages, the model {len(depths)}')
        return [[p[j % len(p)] for j in range(n)] for p, n in zip(patterns, depths)]
    out = [list(s) for s in dilations]
    if len(out) != len(depths) or any(len(s) != n for s, n in zip(out, depths)):
        raise ValueError(
            f'dilations {dilations} do not match depths {list(depths)} (one list per stage, one entry per layer)')
    if any(not isinstance(d, int) or d < 1 for s in out for d in s):
        raise ValueError(f'dilations must be ints >= 1, got {dilations}')
    return out


StrideArg = Union[None, int, Sequence[Union[int, Sequence[Union[int, Sequence[int]]]]]]


def _stride_leaf(s, kernel_size: int, where: str) -> Tuple[int, int]:
    """One layer's stride as ``(s_h, s_w)`` from an int or a pair; ValueError unless ``1 <= s <= kernel_size``."""
    t = (s, s) if isinstance(s, int) and not isinstance(s, bool) else tuple(s) if isinstance(s, (list, tuple)) else ()
    if len(t) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in t):
        raise ValueError(f'{where}: stride must be an int or a pair (s_h, s_w) of ints, got {s!r}')
    if not all(1 <= v <= kernel_size for v in t):
        raise ValueError(
            f'{where}: stride {s!r} out of range, GNA needs 1 <= stride <= kernel_size = {kernel_size} per axis')
    return t


def _is_pair(s) -> bool:
    return isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, int) for v in s)


def resolve_strides(stride: StrideArg, depths: Sequence[int], kernel_size: int = 7) -> List[List[Tuple[int, int]]]:
    """Per-layer GNA strides ``[[(s_h, s_w), ...] per stage]``.

    ``stride`` is None (1, plain neighborhood attention), an int or a pair ``(s_h, s_w)`` for every layer, or one
    entry per stage; a stage entry is an int or pair for the whole stage, or a list with one int or pair per layer.
    A sequence whose length equals the number of stages (of a stage: its depth) is read as per stage (per layer)
    before a pair; the per-layer form with pairs is never ambiguous. Each value must satisfy
    ``1 <= stride <= kernel_size`` (ValueError naming the values otherwise). ``stride == kernel_size`` is blocked
    (window) attention.
    """
    n = len(depths)
    if stride is None:
        stride = 1
    if isinstance(stride, int) or (_is_pair(stride) and len(stride) != n):
        leaf = _stride_leaf(stride, kernel_size, 'stride')
        return [[leaf] * d for d in depths]
    if not isinstance(stride, (list, tuple)) or len(stride) != n:
        raise ValueError(
            f'stride {stride!r} does not match depths {list(depths)}: give an int, a pair (s_h, s_w), one entry per '
            'stage or one list per stage with an entry per layer')
    out = []
    for i, (st, d) in enumerate(zip(stride, depths)):
        if isinstance(st, (list, tuple)) and len(st) == d:
            out.append([_stride_leaf(v, kernel_size, f'stride of stage {i} layer {j}') for j, v in enumerate(st)])
        elif isinstance(st, int) or _is_pair(st):
            out.append([_stride_leaf(st, kernel_size, f'stride of stage {i}')] * d)
        else:
            raise ValueError(f'stride of stage {i}: {st!r} is neither an int, a pair nor a list of {d} layer strides')
    return out


class ConvTokenizer(nn.Module):
    """NAT stem: two 3x3 stride-2 convolutions (``in -> C/2 -> C``), then LayerNorm; returns NHWC."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 64, norm_layer: Type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchEmbed(nn.Module):
    """DiNAT_s stem: a ``patch_size`` x ``patch_size`` patchify convolution (inputs padded bottom/right to a multiple
    of it), then LayerNorm; returns NHWC."""

    def __init__(
            self,
            in_chans: int = 3,
            embed_dim: int = 96,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            patch_size: int = 4,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = F.pad(x, (0, (p - x.shape[-1] % p) % p, 0, (p - x.shape[-2] % p) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """NAT downsampler: 3x3 stride-2 convolution ``C -> 2C`` without bias, then LayerNorm (NHWC in and out)."""

    def __init__(self, dim: int, out_dim: int, norm_layer: Type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """DiNAT_s (Swin) downsampler: concatenate 2x2 neighbours (odd maps padded), LayerNorm, Linear ``4C -> 2C``."""

    def __init__(self, dim: int, out_dim: int, norm_layer: Type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        # official channel order: (0, 0), (1, 0), (0, 1), (1, 1) as (row, col) offsets
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def _check_small_input(small_input: str) -> None:
    if small_input not in _SMALL_INPUT:
        raise ValueError(f'small_input must be one of {_SMALL_INPUT}, got {small_input!r}')


@torch.jit.ignore
def _rpb_no_weight_decay(self: nn.Module) -> set:
    """``no_weight_decay`` of the NAT models: the relative positional biases."""
    return {n for n, _ in self.named_parameters() if n.endswith('.rpb')}


class NATBlock(nn.Module):
    """Pre-norm transformer layer: ``x + drop_path(ls1(attn(norm1(x))))``, then the same with the MLP."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 7,
            dilation: int = 1,
            stride: Union[int, Tuple[int, int]] = 1,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            layer_scale: Optional[float] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            small_input: str = 'pad',
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = NeighborhoodAttention2d(
            dim, num_heads, kernel_size=kernel_size, stride=stride, dilation=dilation, qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            rel_pos_bias=True, attn_drop=attn_drop, proj_drop=proj_drop, small_input=small_input)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class NATStage(Stage):
    """Optional downsampler (from the previous stage's width), then ``depth`` NAT blocks; NHWC in and out."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            dilations: Sequence[int],
            strides: Optional[Sequence[Union[int, Tuple[int, int]]]] = None,
            downsample: Optional[Callable[..., nn.Module]] = None,
            drop_path: Sequence[float] = (),
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            **block_kwargs,
    ):
        super().__init__()
        self.downsample = downsample(dim, out_dim, norm_layer=norm_layer) if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*[
            NATBlock(
                out_dim, num_heads, dilation=dilations[i], stride=strides[i] if strides else 1,
                drop_path=drop_path[i] if drop_path else 0.,
                norm_layer=norm_layer, **block_kwargs)
            for i in range(depth)])


class NAT(StagedModel):
    """NAT / DiNAT / DiNAT_s.

    ``stem_type='conv'`` gives NAT and DiNAT (overlapping conv tokenizer, conv downsamplers); ``'patch'`` gives
    DiNAT_s (Swin-style 4x4 patch embedding and patch merging). DiNAT is NAT with per-layer ``dilations``.

    Small feature maps (NAT issue #106: ``kernel_size * dilation`` larger than a stage's map, e.g. the detection
    dilation 28 under multi-scale resizing): ``small_input='pad'`` (default) zero-pads such maps to
    ``kernel_size * dilation`` and crops the result, which is what NATTEN <= 0.14.6 did when the official detection
    and segmentation models were trained, so their checkpoints see the same function; ``small_input='clamp'`` lowers
    the dilation of the short axis to the largest valid value (``size // kernel_size``, at least 1) instead, and pads
    only maps smaller than the kernel itself. Either way every input size of at least 1x1 runs.
    """

    stage_fmt = 'NHWC'

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 64,
            depths: Sequence[int] = (3, 4, 6, 5),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            kernel_size: int = 7,
            dilations: Union[None, int, str, Sequence[Sequence[int]]] = None,
            stride: StrideArg = None,
            mlp_ratio: float = 3.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            layer_scale: Optional[float] = None,
            stem_type: str = 'conv',
            small_input: str = 'pad',
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.2,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
    ):
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classes of the head (0 for none).
            global_pool: ``'avg'`` or ``''`` (no pooling).
            embed_dim: Width of the first stage; stage ``i`` is ``embed_dim * 2 ** i`` wide.
            depths: Layers per stage.
            num_heads: Attention heads per stage.
            kernel_size: Neighborhood size (7 for all releases but the DiNAT-L 11x11 variants).
            dilations: Per-layer dilations: None (NAT), an int, a schedule name of ``NAT_DILATIONS`` (``'in1k'``,
                ``'in1k_384'``, ``'coco'``, ``'ade20k'``, ``'ade20k_640'``) or one list per stage.
            stride: GNA stride (``resolve_strides``): None or 1 (the released models), an int or ``(s_h, s_w)`` for
                every layer, or per stage / per layer. Strides ``1 < s <= kernel_size`` make query groups of ``s``
                share one window, which blocked backends compute with less masking: a speed/accuracy trade on
                pretrained weights without fine-tuning (GNA, arXiv 2504.16922).
            mlp_ratio: MLP hidden width over the block width.
            qkv_bias: Bias of the qkv projection.
            qk_scale: Logit scale (default ``head_dim ** -0.5``).
            layer_scale: Initial value of per-channel layer scale on both branches (None: no layer scale).
            stem_type: ``'conv'`` (NAT/DiNAT) or ``'patch'`` (DiNAT_s).
            small_input: ``'pad'`` (old NATTEN) or ``'clamp'``: handling of maps smaller than kernel x dilation.
            drop_rate: Dropout before the classifier.
            proj_drop_rate: Dropout after the stem, the attention projection and in the MLP (official ``drop_rate``).
            attn_drop_rate: Dropout on attention probabilities.
            drop_path_rate: Stochastic depth, increasing linearly over all layers.
            act_layer: MLP activation.
            norm_layer: Norm layer.
        """
        super().__init__()
        dims = [int(embed_dim * 2 ** i) for i in range(len(depths))]
        self._init_api(in_chans, num_classes, global_pool, dims[-1])
        if stem_type not in ('conv', 'patch'):
            raise ValueError(f"stem_type must be 'conv' or 'patch', got {stem_type!r}")
        _check_small_input(small_input)
        if len(num_heads) != len(depths):
            raise ValueError(f'num_heads {list(num_heads)} and depths {list(depths)} differ in length')
        self.output_fmt = 'NHWC'
        self.dilations = resolve_dilations(dilations, depths, stem_type)
        self.strides = resolve_strides(stride, depths, kernel_size)

        if stem_type == 'conv':
            self.patch_embed = ConvTokenizer(in_chans, embed_dim, norm_layer=norm_layer)
            downsample = ConvDownsampler
        else:
            self.patch_embed = PatchEmbed(in_chans, embed_dim, norm_layer=norm_layer)
            downsample = PatchMerging
        self.pos_drop = nn.Dropout(p=proj_drop_rate)
        self._init_stages(lambda i, dpr: NATStage(
            dim=dims[max(i - 1, 0)],
            out_dim=dims[i],
            depth=depths[i],
            num_heads=num_heads[i],
            dilations=self.dilations[i],
            strides=self.strides[i],
            downsample=downsample if i > 0 else None,
            drop_path=dpr,
            norm_layer=norm_layer,
            kernel_size=kernel_size,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            proj_drop=proj_drop_rate,
            attn_drop=attn_drop_rate,
            layer_scale=layer_scale,
            act_layer=act_layer,
            small_input=small_input,
        ), depths, dims, drop_path_rate)
        self.norm = norm_layer(self.num_features)
        self._init_head(drop_rate)
        self.apply(self._init_weights)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(super()._stem(x))

    no_weight_decay = _rpb_no_weight_decay


class NATIsotropic(ModelApi):
    """Isotropic NAT / DiNAT (DiNAT paper, the ViT-like ablation models; official ``classification/isotropic.py``).

    A ViT layout without class token or position embedding: a ``patch_size`` patchify convolution with LayerNorm
    (inputs padded bottom/right to a multiple of it), ``depth`` NAT blocks at one resolution, LayerNorm, average pool,
    linear head. The official ``dilation`` argument alternates per layer: layers 0, 2, 4, ... use dilation 1, the
    others ``dilation`` (NAT-iso: 1, DiNAT-iso: 2). The official model is fixed to 224 x 224; this one takes any size
    (``small_input`` as in ``NAT``). Features: every block's map (stride ``patch_size``), as timm's ViTs.
    """

    stage_fmt = 'NHWC'  # for the StagedModel head it borrows
    global_pools = ('avg', '')

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            patch_size: int = 16,
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 12,
            kernel_size: int = 7,
            dilation: int = 1,
            dilations: Optional[Sequence[int]] = None,
            stride: StrideArg = None,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            small_input: str = 'pad',
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
    ):
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classes of the head (0 for none).
            global_pool: ``'avg'`` or ``''`` (no pooling).
            patch_size: Patch size of the stem (16 for the releases).
            embed_dim: Width.
            depth: Layers.
            num_heads: Attention heads.
            kernel_size: Neighborhood size.
            dilation: Dilation of the odd layers (the official rule: even layers 1, odd layers ``dilation``).
            dilations: Explicit per-layer dilations (overrides ``dilation``).
            stride: GNA stride: None or 1 (the released models), an int or ``(s_h, s_w)`` for every layer, or one
                entry per layer; ``1 <= stride <= kernel_size``.
            mlp_ratio: MLP hidden width over the width.
            qkv_bias: Bias of the qkv projection.
            qk_scale: Logit scale (default ``head_dim ** -0.5``).
            small_input: ``'pad'`` or ``'clamp'`` for maps smaller than kernel x dilation (see ``NAT``).
            drop_rate: Dropout before the classifier.
            proj_drop_rate: Dropout after the stem, the attention projection and in the MLP (official ``drop_rate``).
            attn_drop_rate: Dropout on attention probabilities.
            drop_path_rate: Stochastic depth, increasing linearly over the layers.
            act_layer: MLP activation.
            norm_layer: Norm layer.
        """
        super().__init__()
        self._init_api(in_chans, num_classes, global_pool, embed_dim)
        _check_small_input(small_input)
        self.output_fmt = 'NHWC'
        self.grad_checkpointing = False
        self.dilations = list(dilations) if dilations is not None else [
            1 if i % 2 == 0 else dilation for i in range(depth)]
        if len(self.dilations) != depth or any(not isinstance(d, int) or d < 1 for d in self.dilations):
            raise ValueError(f'dilations must be {depth} ints >= 1 (one per layer), got {self.dilations}')
        per_layer = isinstance(stride, (list, tuple)) and len(stride) == depth and depth != 2
        self.strides = resolve_strides([list(stride)] if per_layer else stride, (depth,), kernel_size)[0]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, norm_layer=norm_layer, patch_size=patch_size)
        self.pos_drop = nn.Dropout(p=proj_drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            NATBlock(
                embed_dim, num_heads, kernel_size=kernel_size, dilation=self.dilations[i], stride=self.strides[i],
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[i], act_layer=act_layer, norm_layer=norm_layer,
                small_input=small_input)
            for i in range(depth)])
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=patch_size, module=f'blocks.{i}') for i in range(depth)]
        self.norm = norm_layer(embed_dim)
        self._init_head(drop_rate)
        self.apply(NAT._init_weights)

    no_weight_decay = _rpb_no_weight_decay

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    set_grad_checkpointing = TokenModel.set_grad_checkpointing  # the token models' (no token)

    def _intermediates(
            self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool, norm: bool,
            output_fmt: str) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The selected blocks' maps (``'NCHW'`` or ``'NHWC'``)."""
        x = self.pos_drop(self.patch_embed(check_image_input(x, self.in_chans)))
        blocks = self.blocks if not stop_early and not torch.jit.is_scripting() else self.blocks[:max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else y)
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(check_image_input(x, self.in_chans)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    forward_head = StagedModel.forward_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # defined here, not inherited: FX autowraps this module's ``check_image_input`` only in the root forward's
        return self.forward_head(self.forward_features(x))


def _split_hf_key(k: str, v: torch.Tensor, out: dict, pending: dict) -> None:
    """Map one Hugging Face ``transformers`` Nat/Dinat key; q/k/v wait in ``pending`` to be fused."""
    k = k.replace('embeddings.patch_embeddings.projection.', 'patch_embed.proj.')
    k = k.replace('embeddings.norm.', 'patch_embed.norm.')
    if k.startswith('encoder.levels.'):
        parts = k.split('.')
        i = int(parts[2])
        rest = '.'.join(parts[3:])
        if rest.startswith('downsample.'):
            out[f'stages.{i + 1}.{rest}'] = v
            return
        _, j, name = rest.split('.', 2)  # layers.{j}.{name}
        prefix = f'stages.{i}.blocks.{j}.'
        if name == 'layer_scale_parameters':
            out[prefix + 'ls1.gamma'], out[prefix + 'ls2.gamma'] = v[0], v[1]
            return
        for a, b in (('layernorm_before.', 'norm1.'), ('layernorm_after.', 'norm2.'),
                     ('attention.output.dense.', 'attn.proj.'), ('intermediate.dense.', 'mlp.fc1.'),
                     ('output.dense.', 'mlp.fc2.'), ('attention.self.rpb', 'attn.rpb')):
            if name.startswith(a):
                out[prefix + b + name[len(a):]] = v
                return
        for qkv in ('query', 'key', 'value'):
            if name.startswith(f'attention.self.{qkv}.'):
                pending.setdefault(prefix + 'attn.qkv.' + name.rsplit('.', 1)[1], {})[qkv] = v
                return
        raise KeyError(f'unexpected Hugging Face key {k!r}')
    if k.startswith('layernorm.'):
        k = 'norm.' + k[len('layernorm.'):]
    elif k.startswith('classifier.'):
        k = 'head.' + k[len('classifier.'):]
    out[k] = v


def checkpoint_filter_fn(state_dict: dict, model: Union[NAT, NATIsotropic]) -> dict:
    """Convert an official NAT/DiNAT/DiNAT_s (or isotropic NAT/DiNAT) checkpoint to this model.

    Accepts raw state dicts and training dicts (``'model'``/``'state_dict'``/``'model_ema'``), official
    classification keys (``levels.i`` for NAT/DiNAT, ``layers.i`` for DiNAT_s, ``gamma1``/``gamma2`` layer scale),
    mmdet/mmseg checkpoints (``backbone.`` prefix; their per-output ``norm{i}`` are dropped) and the Hugging Face
    ``transformers`` NAT/DiNAT layout (``nat.``/``dinat.`` prefix, separate q/k/v fused here, ``layer_scale_parameters``
    split). A relative positional bias saved for another kernel size is resized bicubically (how the official 11x11
    DiNAT-L weights were made from the 7x7 ones).
    """
    state_dict = unwrap_state_dict(state_dict)
    if isinstance(model, NATIsotropic):  # official isotropic.py: layers.{i} -> blocks.{i}
        return {('blocks.' + k[len('layers.'):] if k.startswith('layers.') else k): v for k, v in state_dict.items()}
    state_dict = strip_prefix(state_dict)
    hf = any(k.startswith(('nat.', 'dinat.', 'embeddings.patch_embeddings.')) for k in state_dict)
    out, pending = {}, {}
    for k, v in state_dict.items():
        if hf:
            k = k.removeprefix('dinat.').removeprefix('nat.')
            if k.startswith('hidden_states_norms.'):
                continue
            _split_hf_key(k, v, out, pending)
            continue
        parts = k.split('.')
        if parts[0] in ('levels', 'layers') and len(parts) > 2:
            k = remap_stage_key(k, parts[0])
            if parts[2] != 'downsample':
                k = k.replace('.gamma1', '.ls1.gamma').replace('.gamma2', '.ls2.gamma')
        elif parts[0].startswith('norm') and parts[0][4:].isdigit():
            continue  # per-output norms of the mmdet/mmseg backbones
        out[k] = v
    for k, qkv in pending.items():
        if set(qkv) != {'query', 'key', 'value'}:
            raise KeyError(f'incomplete q/k/v for {k}: {sorted(qkv)}')
        out[k] = torch.cat([qkv['query'], qkv['key'], qkv['value']], dim=0)
    own = model.state_dict()
    for k, v in out.items():
        if k.endswith('.rpb') and k in own and v.shape != own[k].shape:
            out[k] = F.interpolate(
                v[None].float(), size=own[k].shape[-2:], mode='bicubic', align_corners=False)[0].to(v.dtype)
    return out


def _create_nat(variant: str, pretrained: bool = False, **kwargs) -> NAT:
    return build_model(NAT, variant, pretrained, checkpoint_filter_fn, default_out_indices=(0, 1, 2, 3), **kwargs)


def _create_nat_isotropic(variant: str, pretrained: bool = False, **kwargs) -> NATIsotropic:
    return build_model(NATIsotropic, variant, pretrained, checkpoint_filter_fn, default_out_indices=3, **kwargs)


def _cfg(url: str = '', paper: Optional[dict] = None, **kwargs) -> dict:
    return default_cfg(url, {
        'pool_size': (7, 7),
        'first_conv': 'patch_embed.proj.0',
        'license': 'mit',
        'origin_url': 'https://github.com/SHI-Labs/Neighborhood-Attention-Transformer',
        **(paper or _DINAT_PAPER),
    }, **kwargs)


_NAT_URL = 'https://shi-labs.com/projects/nat/checkpoints/CLS/'
_DINAT_URL = 'https://shi-labs.com/projects/dinat/checkpoints/'
_in22k = dict(num_classes=21841)
_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)
_nat_cfg = partial(_cfg, paper=_NAT_PAPER)
# DiNAT_s: patch stem. The code's URLs are used; classification/DiNAT.md links the same files without 'in'
# (dinat_s_*_1k_224.pth).
_dinat_s_cfg = partial(_cfg, first_conv='patch_embed.proj')
# isotropic NAT/DiNAT (DiNAT paper): patch 16 stem, 14x14 maps at 224
_iso_cfg = partial(_cfg, first_conv='patch_embed.proj', pool_size=(14, 14))
_ISO_URL = _DINAT_URL + 'isotropic/'

default_cfgs = generate_default_cfgs({
    'nat_mini.in1k': _nat_cfg(url=_NAT_URL + 'nat_mini.pth'),
    'nat_tiny.in1k': _nat_cfg(url=_NAT_URL + 'nat_tiny.pth'),
    'nat_small.in1k': _nat_cfg(url=_NAT_URL + 'nat_small.pth'),
    'nat_base.in1k': _nat_cfg(url=_NAT_URL + 'nat_base.pth'),
    'dinat_mini.in1k': _cfg(url=_DINAT_URL + 'imagenet1k/dinat_mini_in1k_224.pth'),
    'dinat_tiny.in1k': _cfg(url=_DINAT_URL + 'imagenet1k/dinat_tiny_in1k_224.pth'),
    'dinat_small.in1k': _cfg(url=_DINAT_URL + 'imagenet1k/dinat_small_in1k_224.pth'),
    'dinat_base.in1k': _cfg(url=_DINAT_URL + 'imagenet1k/dinat_base_in1k_224.pth'),
    'dinat_large.in22k_ft_in1k': _cfg(url=_DINAT_URL + 'imagenet1k/dinat_large_in22k_in1k_224.pth'),
    'dinat_large.in22k': _cfg(url=_DINAT_URL + 'imagenet22k/dinat_large_in22k_224.pth', **_in22k),
    'dinat_large_384.in22k_ft_in1k': _cfg(url=_DINAT_URL + 'imagenet1k/dinat_large_in22k_in1k_384.pth', **_384),
    'dinat_large_11x11_384.in22k_ft_in1k': _cfg(
        url=_DINAT_URL + 'imagenet1k/dinat_large_in22k_in1k_384_11x11.pth', **_384),
    # the 22K weights of dinat_large with the rpb resized to 11x11 (the start of the 11x11 384 fine-tuning)
    'dinat_large_11x11_384.in22k': _cfg(
        url=_DINAT_URL + 'imagenet22k/dinat_large_in22k_224_11x11interp.pth', **_in22k,
        input_size=(3, 224, 224), pool_size=(7, 7)),
    'nat_isotropic_small.in1k': _iso_cfg(url=_ISO_URL + 'nat_isotropic_small_in1k_224.pth'),
    'nat_isotropic_base.in1k': _iso_cfg(url=_ISO_URL + 'nat_isotropic_base_in1k_224.pth'),
    'dinat_isotropic_small.in1k': _iso_cfg(url=_ISO_URL + 'dinat_isotropic_small_in1k_224.pth'),
    'dinat_isotropic_base.in1k': _iso_cfg(url=_ISO_URL + 'dinat_isotropic_base_in1k_224.pth'),
    'dinat_s_tiny.in1k': _dinat_s_cfg(url=_DINAT_URL + 'imagenet1k/dinat_s_tiny_in1k_224.pth'),
    'dinat_s_small.in1k': _dinat_s_cfg(url=_DINAT_URL + 'imagenet1k/dinat_s_small_in1k_224.pth'),
    'dinat_s_base.in1k': _dinat_s_cfg(url=_DINAT_URL + 'imagenet1k/dinat_s_base_in1k_224.pth'),
    'dinat_s_large.in22k_ft_in1k': _dinat_s_cfg(url=_DINAT_URL + 'imagenet1k/dinat_s_large_in1k_224.pth'),
    'dinat_s_large.in22k': _dinat_s_cfg(url=_DINAT_URL + 'imagenet22k/dinat_s_large_in22k_224.pth', **_in22k),
    'dinat_s_large_384.in22k_ft_in1k': _dinat_s_cfg(
        url=_DINAT_URL + 'imagenet1k/dinat_s_large_in1k_384.pth', **_384),
})


register_variants(__name__, _create_nat, {
    'nat_mini': ('NAT-Mini: depths 3-4-6-5, 64 wide (81.8% top-1).', dict(
        depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3, drop_path_rate=0.2)),
    'nat_tiny': ('NAT-Tiny: depths 3-4-18-5, 64 wide (83.2% top-1).', dict(
        depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3, drop_path_rate=0.2)),
    'nat_small': ('NAT-Small: depths 3-4-18-5, 96 wide, layer scale (83.7% top-1).', dict(
        depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2, drop_path_rate=0.3,
        layer_scale=1e-5)),
    'nat_base': ('NAT-Base: depths 3-4-18-5, 128 wide, layer scale (84.3% top-1).', dict(
        depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2, drop_path_rate=0.5,
        layer_scale=1e-5)),
    'dinat_mini': ('DiNAT-Mini: NAT-Mini with NA/DiNA alternating (81.8% top-1).', dict(
        depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3, drop_path_rate=0.2, dilations='in1k')),
    'dinat_tiny': ('DiNAT-Tiny (82.7% top-1).', dict(
        depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3, drop_path_rate=0.2,
        dilations='in1k')),
    'dinat_small': ('DiNAT-Small (83.8% top-1).', dict(
        depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2, drop_path_rate=0.3,
        dilations='in1k')),
    'dinat_base': ('DiNAT-Base, layer scale (84.4% top-1).', dict(
        depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2, drop_path_rate=0.5,
        layer_scale=1e-5, dilations='in1k')),
    'dinat_large': ('DiNAT-Large, ImageNet-22K pre-trained (86.6% top-1 at 224 after 1K fine-tuning).', dict(
        depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2, drop_path_rate=0.35,
        dilations='in1k')),
    'dinat_large_384': ('DiNAT-Large at 384 with the 384 dilations 13/6/3 (87.4% top-1).', dict(
        depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2, drop_path_rate=0.35,
        dilations='in1k_384')),
    'dinat_large_11x11_384': (
        'DiNAT-Large with 11x11 neighborhoods at 384, the 224 dilations as released (87.5% top-1).',
        dict(
            depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2, drop_path_rate=0.35,
            kernel_size=11, dilations='in1k')),
    'dinat_s_tiny': ('DiNAT_s-Tiny: Swin-T layout with NA/DiNA in place of (shifted) windows (81.8% top-1).', dict(
        depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=4, drop_path_rate=0.2, dilations='in1k',
        stem_type='patch')),
    'dinat_s_small': ('DiNAT_s-Small (83.5% top-1).', dict(
        depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=4, drop_path_rate=0.3, dilations='in1k',
        stem_type='patch')),
    'dinat_s_base': ('DiNAT_s-Base (83.8% top-1).', dict(
        depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=4, drop_path_rate=0.5,
        dilations='in1k', stem_type='patch')),
    'dinat_s_large': ('DiNAT_s-Large, ImageNet-22K pre-trained (86.5% top-1 at 224 after 1K fine-tuning).', dict(
        depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=4, drop_path_rate=0.35,
        dilations='in1k', stem_type='patch')),
    'dinat_s_large_384': ('DiNAT_s-Large at 384 with the 384 dilations 13/6/3 (87.4% top-1).', dict(
        depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=4, drop_path_rate=0.35,
        dilations='in1k_384', stem_type='patch')),
}, returns=NAT)


register_variants(__name__, _create_nat_isotropic, {
    'nat_isotropic_small': (
        'NAT-iso-Small: ViT-S layout (patch 16, 384 wide, 12 layers, 12 heads) with 7x7 NA (80.0% top-1).',
        dict(
            patch_size=16, embed_dim=384, depth=12, num_heads=12, mlp_ratio=4, kernel_size=7, dilation=1,
            drop_path_rate=0.1)),
    'nat_isotropic_base': ('NAT-iso-Base: ViT-B width (768, 12 layers) with 24 heads and 7x7 NA (81.6% top-1).', dict(
        patch_size=16, embed_dim=768, depth=12, num_heads=24, mlp_ratio=4, kernel_size=7, dilation=1,
        drop_path_rate=0.4)),
    'dinat_isotropic_small': ('DiNAT-iso-Small: NAT-iso-Small with every odd layer dilated by 2 (80.8% top-1).', dict(
        patch_size=16, embed_dim=384, depth=12, num_heads=12, mlp_ratio=4, kernel_size=7, dilation=2,
        drop_path_rate=0.1)),
    'dinat_isotropic_base': ('DiNAT-iso-Base: NAT-iso-Base with every odd layer dilated by 2 (82.1% top-1).', dict(
        patch_size=16, embed_dim=768, depth=12, num_heads=24, mlp_ratio=4, kernel_size=7, dilation=2,
        drop_path_rate=0.4)),
}, returns=NATIsotropic)
