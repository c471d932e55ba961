"""BiFormer: vision transformer with bi-level routing attention.

Paper: `BiFormer: Vision Transformer with Bi-Level Routing Attention` - https://arxiv.org/abs/2303.08810
    (Zhu, Wang, Ke, Zhang, Lau; CVPR 2023)

Official code and weights: https://github.com/rayleizhu/BiFormer (MIT license; ``models/biformer.py``,
``models/biformer_stl.py``, ``models/_common.py``, ``ops/bra_legacy.py``, ``semantic_segmentation/models_mm`` and
``object_detection/models_mm/biformer_mm.py``). The routing attention runs on visionattn's bi-level routing attention
layer (``visionattn.layers.BiLevelRoutingAttention`` over the block-sparse op), which never materialises the
``topk``-times gathered keys and values of the official code.

Architecture (as the official code): a conv stem (two 3x3 stride-2 convs with BN), per stage a 3x3 stride-2 conv + BN
downsampler, and blocks ``x + dwconv3x3(x)``, then pre-norm (LayerNorm eps 1e-6) attention and MLP. Stages 1-3 use
bi-level routing attention (``dim // 32`` heads, ``topk`` 1/4/16 routed regions of ``n_win x n_win``, logit scale
``dim ** -0.5`` over the full channel dim, LePE 5x5 on V); stage 4 uses global attention with 8 heads, no qkv bias and
its own 5x5 LePE on the attention input. Head: BatchNorm2d, global average, Linear. ``biformer_stl`` is the
ablation model in the Swin-T layout (4x4 patch stem + BN, BN + 2x2 conv downsamplers, no per-block position conv).

What this version adds: ``n_win`` is a constructor argument (7 for ImageNet, 8 for the official ADE20K models, 16 for
COCO); no parameter depends on it or on the input size, so one checkpoint runs at any ``n_win`` and any input size.
Maps not divisible by ``n_win`` are padded as the official dense-prediction backbones do (``bra_padding='legacy'``:
zero tokens before the qkv projection, attended like real ones, which the released weights saw in detection and
segmentation fine-tuning), or with padded tokens masked out (``bra_padding='masked'``). ``extra_norms=True`` adds the
per-output LayerNorm2d of the official mmseg/mmdet ``BiFormer_mm`` to ``forward_intermediates`` / ``features_only``.
Working gradient checkpointing, ``features_only`` / ``forward_intermediates`` with NCHW stage maps, and a
``checkpoint_filter_fn`` that reads the official training dicts (``'model'``), the ``biformer_stl`` layout and
mmseg/mmdet backbone checkpoints (``backbone.`` prefix).

Size semantics of pretrained weights: no tensor depends on the input size or on ``n_win``, so the ImageNet
weights (trained at ``n_win=7``) load unchanged at ``n_win=8`` (ADE20K) or 16 (COCO), as the official
dense-prediction backbones load them.
"""
import re
import warnings
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, LayerScale, Mlp, register_notrace_function, use_fused_attn
from timm.models import adapt_input_conv, generate_default_cfgs, load_state_dict

from visionattn.layers import BiLevelRoutingAttention, bra_checkpoint_filter, check_image_input
from visionattn.layers.helpers import head_dim_of

from ._base import OutNormsArg, Stage, StagedModel, StageNorms, out_norm_stages
from ._convert import strip_prefix, unwrap_state_dict
from ._hub import build_model, default_cfg
from ._registry import register_variants

__all__ = ['BiFormer']

_PAPER = dict(
    paper_ids='arXiv:2303.08810', paper_name='BiFormer: Vision Transformer with Bi-Level Routing Attention',
    license='mit', origin_url='https://github.com/rayleizhu/BiFormer')


class AttentionLePE(nn.Module):
    """Global multi-head attention with a depthwise-conv LePE on the attention input (official ``AttentionLePE``).

    ``proj(softmax(q k^T * scale) v + lepe(x))`` on NHWC maps; ``side_dwconv=0`` drops the LePE (official
    ``Attention``, ``topk=-1``). Unlike the official code, the scale never follows an unscaled ``q @ k^T`` (fused
    attention, or ``q`` scaled first): under fp16 autocast the official order overflows to inf and NaN once the
    unscaled logits pass 65504 (head_dim 64 / 96 in stage 4), a source of the fp16 NaN losses of official issue #47.
    """
    fused_attn: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            qk_scale: Optional[float] = None,
            side_dwconv: int = 5,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim_of(dim, num_heads)
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(
            dim, dim, kernel_size=side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            # scale q before the product: the official (q @ k^T) * scale overflows fp16 once |q.k| > 65504
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = attn @ v
        out = out.transpose(1, 2).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)


class BiFormerBlock(nn.Module):
    """``x + pos_conv(x)``, then ``x + drop_path(ls1(attn(norm1(x))))`` and the same with the MLP; NHWC in and out.

    ``topk > 0``: bi-level routing attention; ``topk == -2``: global attention with LePE (stage 4); ``topk == -1``:
    global attention without LePE.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            topk: int,
            n_win: int = 7,
            mlp_ratio: float = 3.,
            side_dwconv: int = 5,
            pos_conv_kernel: int = 3,
            global_heads: int = 8,
            qk_scale: Optional[float] = None,
            layer_scale: Optional[float] = None,
            drop_path: float = 0.,
            bra_padding: str = 'legacy',
            attn_backend: str = 'auto',
    ):
        super().__init__()
        self.pos_embed = nn.Conv2d(
            dim, dim, kernel_size=pos_conv_kernel, padding=pos_conv_kernel // 2, groups=dim) \
            if pos_conv_kernel > 0 else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(
                dim, num_heads=num_heads, n_win=n_win, qk_scale=qk_scale, topk=topk, side_dwconv=side_dwconv,
                padding=bra_padding, backend=attn_backend)
        elif topk in (-1, -2):
            self.attn = AttentionLePE(dim, num_heads=global_heads, side_dwconv=side_dwconv if topk == -2 else 0)
        else:
            raise ValueError(f'topk must be > 0 (routing), -1 or -2 (global attention), got {topk}')
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            x = x + self.pos_embed(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class BiFormerStage(Stage):
    """Downsampler (stages > 0), then ``depth`` blocks; NCHW in and out (the blocks run NHWC)."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            downsample: Optional[str] = None,
            drop_path: Sequence[float] = (),
            **block_kwargs,
    ):
        super().__init__()
        if downsample == 'conv':
            self.downsample = nn.Sequential(
                nn.Conv2d(in_dim, dim, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(dim))
        elif downsample == 'patch':
            self.downsample = nn.Sequential(nn.BatchNorm2d(in_dim), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2))
        elif downsample is None:
            self.downsample = nn.Identity()
        else:
            raise ValueError(f"downsample must be 'conv', 'patch' or None, got {downsample!r}")
        self.blocks = nn.Sequential(*[
            BiFormerBlock(dim, drop_path=drop_path[i] if drop_path else 0., **block_kwargs) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._blocks(self.downsample(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _per_stage(value: Union[int, float, Sequence], n: int, name: str) -> list:
    if isinstance(value, (int, float)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f'{name} needs one value per stage ({n}), got {value}')
    return value


class BiFormer(StagedModel):
    """BiFormer (``stem_type='conv'``) and the Swin-Tiny-layout ablation BiFormer-STL (``stem_type='patch'``)."""
    stem_name = 'stem'
    group_tail = (r'^(?:norm|out_norms)',)

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 2, 8, 2),
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            head_dim: int = 32,
            mlp_ratios: Union[float, Sequence[float]] = 3.,
            n_win: Union[int, Sequence[int]] = 7,
            topks: Sequence[int] = (1, 4, 16, -2),
            side_dwconv: int = 5,
            pos_conv_kernel: int = 3,
            global_heads: int = 8,
            qk_scale: Optional[float] = None,
            layer_scale: Optional[float] = None,
            stem_type: str = 'conv',
            bra_padding: str = 'legacy',
            attn_backend: str = 'auto',
            out_norms: OutNormsArg = False,
            extra_norms: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
    ):
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classes of the head (0 for none).
            global_pool: ``'avg'`` or ``''`` (no pooling).
            depths: Blocks per stage.
            embed_dims: Width per stage.
            head_dim: Channels per head of the routing attention (heads = width // head_dim).
            mlp_ratios: MLP hidden width over the block width (one value or one per stage).
            n_win: Regions per side of the routing attention (one value or one per stage): 7 for ImageNet 224, 8 for
                the official ADE20K models, 16 for COCO. No parameter depends on it.
            topks: Routed regions per stage; -2 is global attention with LePE, -1 without.
            side_dwconv: Kernel of the LePE depthwise convs (0 disables them).
            pos_conv_kernel: Kernel of the depthwise position conv before each block's attention (0 disables it).
            global_heads: Heads of the global attention (the official code hard-codes 8).
            qk_scale: Logit scale of the routing attention (default ``width ** -0.5``, the official full-channel scale).
            layer_scale: Initial layer scale on both branches (None: none, as all releases).
            stem_type: ``'conv'`` (BiFormer: 3x3 conv stem and downsamplers) or ``'patch'`` (BiFormer-STL: 4x4 patch
                stem, BN + 2x2 conv downsamplers, no position conv).
            bra_padding: Maps not divisible by ``n_win``: ``'legacy'`` (official ``auto_pad``: zero tokens before the
                qkv projection, attended), ``'masked'`` (padded tokens excluded) or ``'none'`` (raise).
            attn_backend: Block-sparse backend of the routing attention (``'auto'`` picks the best available).
            out_norms: A LayerNorm2d on the ``forward_intermediates`` / ``features_only`` maps of every stage (True, as
                the official mmseg/mmdet backbone's ``extra_norms``) or of the listed stages.
            extra_norms: Deprecated name of ``out_norms=True``.
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth, increasing linearly over all blocks.
        """
        super().__init__()
        self._init_api(in_chans, num_classes, global_pool, embed_dims[-1])
        if stem_type not in ('conv', 'patch'):
            raise ValueError(f"stem_type must be 'conv' or 'patch', got {stem_type!r}")
        num_stages = len(depths)
        embed_dims = list(embed_dims)
        if len(embed_dims) != num_stages or len(topks) != num_stages:
            raise ValueError(f'depths {depths}, embed_dims {embed_dims} and topks {topks} need one value per stage')
        mlp_ratios = _per_stage(mlp_ratios, num_stages, 'mlp_ratios')
        n_wins = _per_stage(n_win, num_stages, 'n_win')
        self.stem_type = stem_type
        self.n_win = n_win
        self.embed_dims = embed_dims
        self.grad_checkpointing = False

        d0 = embed_dims[0]
        if stem_type == 'conv':
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, d0 // 2, kernel_size=3, stride=2, padding=1),
                nn.BatchNorm2d(d0 // 2),
                nn.GELU(),
                nn.Conv2d(d0 // 2, d0, kernel_size=3, stride=2, padding=1),
                nn.BatchNorm2d(d0),
            )
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, d0, kernel_size=4, stride=4), nn.BatchNorm2d(d0))
            pos_conv_kernel = 0

        self._init_stages(lambda i, dpr: BiFormerStage(
            in_dim=embed_dims[max(i - 1, 0)],
            dim=embed_dims[i],
            depth=depths[i],
            downsample=None if i == 0 else stem_type,
            drop_path=dpr,
            num_heads=embed_dims[i] // head_dim,
            topk=topks[i],
            n_win=n_wins[i],
            mlp_ratio=mlp_ratios[i],
            side_dwconv=side_dwconv,
            pos_conv_kernel=pos_conv_kernel,
            global_heads=global_heads,
            qk_scale=qk_scale,
            layer_scale=layer_scale,
            bra_padding=bra_padding,
            attn_backend=attn_backend,
        ), depths, embed_dims, drop_path_rate)
        self.out_norms = StageNorms(
            out_norm_stages(out_norms, num_stages, deprecated=('extra_norms', extra_norms)),
            lambda i: LayerNorm2d(embed_dims[i]))
        self.norm = nn.BatchNorm2d(self.num_features)
        self._init_head(drop_rate)
        self.apply(self._init_weights)

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """Load an official (or converted) checkpoint file: timm's ``custom_load`` hook for the released weights.

        The official OneDrive URLs all end in ``/root/content``, so the pretrained cfgs give timm a (url, file name)
        pair, which timm only downloads for ``custom_load`` models; this then does what timm's loader does for the
        others: the weights under ``'model'`` (weights-only unpickling, as timm), :func:`checkpoint_filter_fn`, the
        stem conv adapted to ``in_chans`` and the classifier dropped when ``num_classes`` differs.
        """
        state_dict = checkpoint_filter_fn(load_state_dict(checkpoint_path, use_ema=False), self)
        if self.in_chans != 3:
            state_dict['stem.0.weight'] = adapt_input_conv(self.in_chans, state_dict['stem.0.weight'])
        head = state_dict.get('head.weight')
        strict = head is not None and self.num_classes == head.shape[0]
        if not strict:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith('head.')}
        missing, unexpected = self.load_state_dict(state_dict, strict=strict)
        if unexpected or any(not k.startswith('head.') for k in missing):
            raise RuntimeError(f'{checkpoint_path}: missing keys {missing}, unexpected keys {unexpected}')

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chans)
        if self.stem_type == 'patch':
            x = check_stl_input(x, len(self.stages))
        return self.stem(x)

    @property
    def extra_norms(self) -> Optional[StageNorms]:
        """Deprecated name of ``out_norms`` (None when the model has none)."""
        warnings.warn('BiFormer.extra_norms is deprecated, use out_norms', DeprecationWarning, stacklevel=2)
        return self.out_norms if len(self.out_norms) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # defined here, not inherited: FX autowraps the notrace checks of ``_stem`` only in the root forward's module
        return self.forward_head(self.forward_features(x))


# reason: raises on shape values, which FX cannot trace (no leading underscore: FX autowraps public names only)
@register_notrace_function
def check_stl_input(x: torch.Tensor, num_stages: int) -> torch.Tensor:
    """BiFormer-STL floors like its official patch convs: the last stage map must not vanish."""
    H, W = x.shape[-2:]
    min_size = 4 * 2 ** (num_stages - 1)
    if H < min_size or W < min_size:
        raise ValueError(
            f'input height {H}, width {W} is too small for the patch (STL) layout: both sides must be at least '
            f'{min_size}')
    return x


_BLOCK_RE = re.compile(r'^stages\.(\d+)\.(?:blocks\.)?(\d+)\.(.*)$')
_MLP_RE = re.compile(r'^mlp\.(\d+)\.(.*)$')


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: BiFormer) -> Dict[str, torch.Tensor]:
    """Convert an official BiFormer / BiFormer-STL checkpoint to this model.

    Accepts raw state dicts, the official training dicts (weights under ``'model'``), mmseg/mmdet checkpoints
    (``backbone.`` prefix, with ``extra_norms``) and this model's own keys. Official layout -> ours:
    ``downsample_layers.0`` -> ``stem``, ``downsample_layers.i`` -> ``stages.i.downsample``, ``stages.i.j`` (STL:
    ``stages.i.blocks.j``) -> ``stages.i.blocks.j``, routing attention ``attn.qkv.qkv`` / ``attn.wo`` -> ``attn.qkv``
    / ``attn.proj`` (:func:`visionattn.layers.bra_checkpoint_filter`; the q/k/v row layout is kept), ``mlp.0`` /
    ``mlp.3`` (STL ``mlp.2``) -> ``mlp.fc1`` / ``mlp.fc2``, ``gamma1`` / ``gamma2`` -> ``ls1.gamma`` / ``ls2.gamma``.
    ``extra_norms`` of a dense-prediction model missing from a classification checkpoint keep the model's
    initial values (as the official backbone, which initialises them fresh); a checkpoint's ``extra_norms`` are
    dropped for a model without them.
    """
    state_dict = unwrap_state_dict(state_dict)
    state_dict = strip_prefix(state_dict)
    if 'stem.0.weight' in state_dict:
        out = dict(state_dict)
    else:
        out = {}
        for k, v in state_dict.items():
            k = k.replace('._checkpoint_wrapped_module', '')
            if k.startswith('downsample_layers.'):
                _, i, rest = k.split('.', 2)
                k = f'stem.{rest}' if i == '0' else f'stages.{i}.downsample.{rest}'
            else:
                m = _BLOCK_RE.match(k)
                if m is not None:
                    i, j, rest = m.groups()
                    mm = _MLP_RE.match(rest)
                    if mm is not None:
                        idx, p = mm.groups()
                        if idx == '0':
                            rest = f'mlp.fc1.{p}'
                        elif idx in ('2', '3'):
                            rest = f'mlp.fc2.{p}'
                        else:
                            raise KeyError(f'unsupported MLP layout (mlp_dwconv) in {k!r}')
                    elif rest in ('gamma1', 'gamma2'):
                        rest = f'ls{rest[-1]}.gamma'
                    elif rest.startswith('attn.'):
                        rest = next(iter(bra_checkpoint_filter({rest: v}, prefix='attn.')))
                    k = f'stages.{i}.blocks.{j}.{rest}'
            out[k] = v
    out = {('out_norms.' + k[len('extra_norms.'):] if k.startswith('extra_norms.') else k): v for k, v in out.items()}
    own = model.state_dict()
    out = {k: v for k, v in out.items() if not k.startswith('out_norms.') or k in own}
    for k, v in own.items():
        if k.startswith('out_norms.') and k not in out:
            out[k] = v.clone()
    return out


def _create_biformer(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    return build_model(BiFormer, variant, pretrained, checkpoint_filter_fn, default_out_indices=(0, 1, 2, 3), **kwargs)


def _cfg(url: str = '', **kwargs) -> dict:
    return default_cfg(url, {'pool_size': (7, 7), 'first_conv': 'stem.0', **_PAPER}, **kwargs)


# The official OneDrive links (README / models/*.py model_urls): full training dicts, weights under 'model'. They all
# end in '/root/content', so each gets a cache file name (as the official hub loader's file_name) and custom_load.
_URL = 'https://api.onedrive.com/v1.0/shares/{}/root/content'


def _onedrive(share: str, name: str) -> dict:
    return dict(url=(_URL.format(share), f'{name}.pth'), custom_load=True)


default_cfgs = generate_default_cfgs({
    'biformer_tiny.in1k': _cfg(**_onedrive('s!AkBbczdRlZvChHEOoGkgwgQzEDlM', 'biformer_tiny_in1k')),
    'biformer_small.in1k': _cfg(**_onedrive('s!AkBbczdRlZvChHDyM-x9KWRBZ832', 'biformer_small_in1k')),
    'biformer_base.in1k': _cfg(**_onedrive('s!AkBbczdRlZvChHI_XPhoadjaNxtO', 'biformer_base_in1k')),
    'biformer_stl.in1k': _cfg(**_onedrive('s!AkBbczdRlZvChSf-m7ujkvx9lIQ1', 'biformer_stl_in1k')),
})


register_variants(__name__, _create_biformer, {
    'biformer_tiny': ('BiFormer-T: depths 2-2-8-2, widths 64-512 (81.4% top-1).', dict(
        depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512), mlp_ratios=3, topks=(1, 4, 16, -2))),
    'biformer_small': ('BiFormer-S: depths 4-4-18-4, widths 64-512 (83.8% top-1).', dict(
        depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512), mlp_ratios=3, topks=(1, 4, 16, -2))),
    'biformer_base': ('BiFormer-B: depths 4-4-18-4, widths 96-768 (84.3% top-1).', dict(
        depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768), mlp_ratios=3, topks=(1, 4, 16, -2))),
    'biformer_stl': (
        'BiFormer-STL: the ablation model in the Swin-T layout, depths 2-2-6-2, widths 96-768 (82.7% top-1).',
        dict(
            depths=(2, 2, 6, 2), embed_dims=(96, 192, 384, 768), mlp_ratios=4, topks=(1, 4, 16, -2),
            stem_type='patch')),
}, returns=BiFormer)
