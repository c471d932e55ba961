"""RAVLT: Rank-Augmented Vision Linear Transformer.

Paper: `Breaking the Low-Rank Dilemma of Linear Attention` - https://arxiv.org/abs/2411.07635
    (Qihang Fan, Huaibo Huang, Ran He; CVPR 2025)

Official code and weights: https://github.com/qhfan/RALA (``classfication/RALA.py`` @ a86314f; weights on the
Hugging Face repo ``aldjalkdf/RAVLT``). The repository has no license file and its README states no license, so the
code and weights carry no stated license (``license='unknown'`` in the pretrained cfgs): check with the authors
before redistributing.

Architecture (as the official code; the attention layer is ``visionattn.layers.RALA``):

* stem: four 3x3 convolutions (strides 2, 1, 1, 2) with BatchNorm, GELU between them (stride 4);
* stages: ``x = x + CPE(x)`` (3x3 depthwise), ``x = x + ls1 * attn(LN(x))``, ``x = x + ls2 * FFN(LN(x))``, with
  the FFN ``fc1 -> GELU -> x + DWConv3x3(x) -> fc2``; downsampling by a 3x3 stride-2 convolution + BatchNorm;
* head: ``Conv1x1(C4 -> 1024) -> BatchNorm -> Swish -> average pool -> Linear``.

**Which attention where (the paper and the code differ; this follows the code).** The paper describes RAVLT as built
from RALA. The official model's default ``flagss=[['l']*10, ['l']*10, ['v','v']*10, ['v']*10]`` (``RAVLT.__init__``,
which no factory, detection or segmentation config overrides) uses RALA only in stages 1-2 and plain softmax attention
(with the same RoPE, LePE and output gate) in stages 3-4; the author confirms this in qhfan/RALA issue #9. The default
``attn_types=('linear', 'linear', 'softmax', 'softmax')`` here does the same. The normaliser of the linear attention
is also in the code but not in the paper's eq. 6 (issue #3); it is kept.

What this version changes: registered names that ``timm.create_model`` can call (the official ``RAVLT_T(args=None)``
factories cannot take ``pretrained=`` or other kwargs), RoPE tables computed per input size and cached (the
official module recomputes them every forward; its ``RoPE.angle`` buffer is dropped from checkpoints), working
gradient checkpointing, ``features_only`` / ``forward_intermediates`` with the four stage maps (NCHW, before each
downsampling, as the official detection/segmentation backbone ``GLTA`` takes them; its per-output LayerNorms with
``out_norms=True``), a ``Linear`` classifier (the official 1x1 conv, converted), softmax attention
through ``F.scaled_dot_product_attention``, and mixed precision that does not overflow: the linear attention runs in
float32 under fp16/bf16 (see ``visionattn.ops.rala``).

Size semantics of pretrained weights: no tensor depends on the input size (no position table; the RoPE tables are
computed for each map size, as the official classification and GLTA detection/segmentation backbones compute them
in every forward; the cache is keyed by size), so the 224 ImageNet weights run unchanged at any input size, which is
how the official downstream configs load them.

On AMP (the official segmentation configs warn "AMP (faster but may meet nan loss)"): under fp16 autocast the official
linear attention forms its normaliser ``q @ mean(k)^T`` as an fp16 matmul; with positive kernel features around 40
(64 channels) it overflows to inf, ``z = 1 / inf = 0`` meets an infinite numerator and the output is NaN. Measured on
CPU: official RAVLT-T with +40 on the q/k biases of the RALA stages gives NaN outputs and 274 parameters with
non-finite gradients in fp16, this version none; random weights at 224 and 512 stay finite in both, and bfloat16
(float32's exponent range) does not overflow.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d, LayerScale2d, SelectAdaptivePool2d, trunc_normal_
from timm.models import generate_default_cfgs
from torch.utils.checkpoint import checkpoint

from visionattn.layers import drop_path_rates
from visionattn.layers.rala import RALA
from visionattn.ops.rala import rope_2d_tables

from ._base import OutNormsArg, StagedModel, StageNorms, out_norm_stages
from ._convert import remap_stage_key, strip_prefix, unwrap_state_dict
from ._hub import build_model, default_cfg
from ._registry import register_variants

__all__ = ['RAVLT']

_PAPER = dict(
    paper_ids='arXiv:2411.07635',
    paper_name='Breaking the Low-Rank Dilemma of Linear Attention',
    license='unknown',
    origin_url='https://github.com/qhfan/RALA')


class Stem(nn.Module):
    """Stride-4 convolutional stem (the official ``PatchEmbed``): ``proj`` keeps the official module indices."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 64):
        super().__init__()
        half = embed_dim // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, embed_dim, 3, 2, 1), nn.BatchNorm2d(embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """3x3 stride-2 convolution + BatchNorm (the official ``PatchMerging``)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


class ConvFFN(nn.Module):
    """``fc1 (1x1) -> GELU -> x + DWConv3x3(x) -> fc2 (1x1)`` (the official ``FeedForwardNetwork``)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1, groups=hidden_dim)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = x + self.dwconv(x)
        return self.drop(self.fc2(x))


class RAVLTBlock(nn.Module):
    """``x + CPE(x)``, then pre-norm attention and FFN residuals with optional layer scale and drop path."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            attn_type: str = 'linear',
            mlp_ratio: float = 3.5,
            drop_path: float = 0.,
            layer_scale: Optional[float] = None,
            proj_drop: float = 0.,
    ):
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.attn = RALA(dim, num_heads, attn_type=attn_type)
        self.ls1 = LayerScale2d(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        self.ffn = ConvFFN(dim, int(mlp_ratio * dim), drop=proj_drop)
        self.ls2 = LayerScale2d(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), (sin, cos))))
        x = x + self.drop_path2(self.ls2(self.ffn(self.norm2(x))))
        return x


class RAVLTStage(nn.Module):
    """Optional downsampling (from the previous stage's width), then blocks sharing one set of RoPE tables."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            attn_types: Sequence[str],
            downsample: bool = False,
            mlp_ratio: float = 3.5,
            drop_path: Sequence[float] = (),
            layer_scale: Optional[float] = None,
            proj_drop: float = 0.,
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.head_dim = out_dim // num_heads
        self.downsample = Downsample(dim, out_dim) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([
            RAVLTBlock(
                out_dim, num_heads, attn_type=attn_types[i], mlp_ratio=mlp_ratio,
                drop_path=drop_path[i] if drop_path else 0., layer_scale=layer_scale, proj_drop=proj_drop)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        sin, cos = rope_2d_tables(x.shape[-2], x.shape[-1], self.head_dim, x.dtype, x.device)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, sin, cos, use_reentrant=False)
            else:
                x = blk(x, sin, cos)
        return x


def _per_block(attn_types, depths: Sequence[int]) -> List[List[str]]:
    if isinstance(attn_types, str):
        attn_types = [attn_types] * len(depths)
    if len(attn_types) != len(depths):
        raise ValueError(f'attn_types {attn_types} must give one entry per stage ({len(depths)} stages)')
    out = []
    for t, d in zip(attn_types, depths):
        types = [t] * d if isinstance(t, str) else list(t)
        if len(types) != d:
            raise ValueError(f'attn_types {attn_types}: a stage of depth {d} got {len(types)} entries')
        out.append(types)
    return out


class RAVLT(StagedModel):
    """RAVLT: RALA (linear) attention in the first stages, softmax attention in the last (see the module docstring).

    Channels-first throughout; ``forward_features`` returns the last stage's map ``[B, C4, H/32, W/32]`` and the head
    projects it to ``head_hidden_size`` (1024) channels before pooling. Any input size of at least 1x1 runs.
    """

    output_fmts = ('NCHW',)
    group_tail = (r'^(conv_head|norm_head)',)

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (1, 2, 4, 8),
            attn_types: Union[str, Sequence[Union[str, Sequence[str]]]] = ('linear', 'linear', 'softmax', 'softmax'),
            mlp_ratios: Union[float, Sequence[float]] = 3.5,
            layer_scales: Union[None, float, Sequence[Optional[float]]] = 1.,
            head_hidden_size: int = 1024,
            out_norms: OutNormsArg = False,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
    ):
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classes of the head (0 for none).
            global_pool: Pooling type of the head (``'avg'``; ``''`` for none).
            embed_dims: Width per stage.
            depths: Blocks per stage.
            num_heads: Attention heads per stage (head_dim must be divisible by 4 for the 2-D RoPE).
            attn_types: ``'linear'`` (RALA) or ``'softmax'`` per stage, or one list per stage with one entry per
                block (the official ``flagss``, ``'l'``/``'v'``).
            mlp_ratios: FFN hidden width over the block width, one or per stage.
            layer_scales: Initial layer scale per stage (None: no layer scale), or one for all.
            head_hidden_size: Channels of the 1x1 projection before pooling (the official ``projection``).
            out_norms: Add a LayerNorm per stage output (True: every stage, or the listed stages), applied to the
                maps of ``forward_intermediates`` /
                ``features_only`` (the ``extra_norms`` of the official detection/segmentation backbone ``GLTA``;
                needed to reproduce its checkpoints, e.g. ``VisionAttnBackbone(arch='ravlt_small', out_norms=True)``).
            drop_rate: Dropout before the classifier.
            proj_drop_rate: Dropout after the FFN.
            drop_path_rate: Stochastic depth, increasing linearly over all blocks.
        """
        super().__init__()
        n = len(depths)
        if not (len(embed_dims) == len(num_heads) == n):
            raise ValueError(f'embed_dims {embed_dims}, depths {depths} and num_heads {num_heads} differ in length')
        if global_pool not in ('', 'avg', 'max', 'avgmax', 'catavgmax'):
            raise ValueError(f'unsupported global_pool {global_pool!r}')
        flags = {'l': 'linear', 'v': 'softmax'}
        attn_types = [[flags.get(t, t) for t in s] for s in _per_block(attn_types, depths)]
        mlp_ratios = [mlp_ratios] * n if isinstance(mlp_ratios, (int, float)) else list(mlp_ratios)
        layer_scales = [layer_scales] * n if layer_scales is None or isinstance(layer_scales, (int, float)) \
            else list(layer_scales)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = embed_dims[-1]
        self.head_hidden_size = head_hidden_size
        self.grad_checkpointing = False

        self.patch_embed = Stem(in_chans, embed_dims[0])
        dpr = drop_path_rates(drop_path_rate, sum(depths))
        self.stages = nn.ModuleList()
        self.feature_info = []
        prev = embed_dims[0]
        for i in range(n):
            start = sum(depths[:i])
            self.stages.append(RAVLTStage(
                prev, embed_dims[i], depths[i], num_heads[i], attn_types[i], downsample=i > 0,
                mlp_ratio=mlp_ratios[i], drop_path=dpr[start:start + depths[i]], layer_scale=layer_scales[i],
                proj_drop=proj_drop_rate))
            prev = embed_dims[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))

        self.out_norms = StageNorms(
            out_norm_stages(out_norms, len(embed_dims)), lambda i: LayerNorm2d(embed_dims[i], eps=1e-6))

        # head: 1x1 projection, BatchNorm, Swish before pooling (the official proj / norm / swish)
        self.conv_head = nn.Conv2d(self.num_features, head_hidden_size, 1)
        self.norm_head = nn.BatchNorm2d(head_hidden_size)
        self.act = nn.SiLU()
        self.pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(head_hidden_size * self.pool.feat_mult(), num_classes) if num_classes > 0 \
            else nn.Identity()
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
            self.pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        w = self.patch_embed.proj[0].weight
        self.head = nn.Linear(self.head_hidden_size * self.pool.feat_mult(), num_classes, device=w.device,
                              dtype=w.dtype) if num_classes > 0 else nn.Identity()

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x  # no norm between the last stage and the head

    def _prune_head(self) -> None:
        self.conv_head = nn.Identity()
        self.norm_head = nn.Identity()
        self.act = nn.Identity()
        self.reset_classifier(0, '')

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act(self.norm_head(self.conv_head(x)))
        x = self.pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def checkpoint_filter_fn(state_dict: dict, model: RAVLT) -> dict:
    """Convert an official RAVLT checkpoint to this model.

    Accepts raw state dicts and training dicts (``'model'``, ``'state_dict'``, ``'model_ema'``; the official
    ``main.py`` saves ``'model'`` and ``'model_ema'``, and ``'model'`` is taken when both are present), and the
    official mmdet/mmseg ``GLTA`` backbones (``backbone.`` prefix; their ``extra_norms`` output LayerNorms become
    ``out_norms`` of a model built with ``out_norms=True`` and are dropped otherwise). Official
    ``layers.i.downsample`` becomes ``stages.{i+1}.downsample``, ``norm1.norm`` becomes ``norm1``, ``gamma_1/2``
    become ``ls1/2.gamma``, the head ``proj``/``norm`` become ``conv_head``/``norm_head``, the 1x1-conv classifier
    becomes a Linear, and the recomputable ``RoPE.angle`` buffers are dropped.
    """
    state_dict = unwrap_state_dict(state_dict)
    state_dict = strip_prefix(state_dict)
    if not any(k.startswith('layers.') for k in state_dict):
        return state_dict  # already ours
    out = {}
    for k, v in state_dict.items():
        parts = k.split('.')
        if k.endswith('RoPE.angle'):
            continue
        if parts[0] == 'extra_norms':
            if not getattr(model, 'out_norms', None):
                continue
            k = k.replace('.norm.', '.', 1).replace('extra_norms.', 'out_norms.', 1)
        if parts[0] == 'layers':
            k = remap_stage_key(k)
            if parts[2] != 'downsample':
                k = k.replace('.norm1.norm.', '.norm1.').replace('.norm2.norm.', '.norm2.')
                if k.endswith('.gamma_1') or k.endswith('.gamma_2'):
                    k = k[:-len('gamma_1')] + ('ls1.gamma' if k.endswith('1') else 'ls2.gamma')
                    v = v.flatten()
        elif parts[0] == 'proj':
            k = 'conv_head.' + parts[1]
        elif parts[0] == 'norm':
            k = 'norm_head.' + '.'.join(parts[1:])
        elif parts[0] == 'head' and parts[1] == 'weight' and v.ndim == 4:
            v = v.flatten(1)
        out[k] = v
    return out


def _create_ravlt(variant: str, pretrained: bool = False, **kwargs) -> RAVLT:
    return build_model(RAVLT, variant, pretrained, checkpoint_filter_fn, default_out_indices=(0, 1, 2, 3), **kwargs)


def _cfg(url: str = '', **kwargs) -> dict:
    return default_cfg(url, {'pool_size': (7, 7), 'first_conv': 'patch_embed.proj.0', **_PAPER}, **kwargs)


_HF = 'https://huggingface.co/aldjalkdf/RAVLT/resolve/main/'
_NOTE = ('official ImageNet-1k checkpoint (README); the file holds "model" and, if saved with EMA, "model_ema": '
         'the non-EMA "model" weights are loaded',)

default_cfgs = generate_default_cfgs({
    'ravlt_tiny.in1k': _cfg(url=_HF + 'RAVLT_T.pth', notes=_NOTE),
    'ravlt_small.in1k': _cfg(url=_HF + 'RAVLT_S.pth', notes=_NOTE),
    'ravlt_base.in1k': _cfg(url=_HF + 'RAVLT_B.pth', notes=_NOTE),
    'ravlt_large.in1k': _cfg(url=_HF + 'RAVLT_L.pth', notes=_NOTE),
})


register_variants(__name__, _create_ravlt, {
    'ravlt_tiny': ('RAVLT-T: 15M parameters, 2.4 GFLOPs (82.8% top-1 in the README until Feb 2025).', dict(
        embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), mlp_ratios=3.5,
        layer_scales=(1., 1., 1., 1.), drop_path_rate=0.1)),
    'ravlt_small': ('RAVLT-S: 26M parameters, 4.6 GFLOPs (84.4% top-1, abstract).', dict(
        embed_dims=(64, 128, 320, 512), depths=(3, 5, 9, 3), num_heads=(1, 2, 5, 8), mlp_ratios=3.5,
        layer_scales=(1., 1., 1., 1.), drop_path_rate=0.15)),
    'ravlt_base': ('RAVLT-B: 48M parameters, 9.9 GFLOPs (85.5% top-1 in the README until Feb 2025).', dict(
        embed_dims=(96, 192, 384, 512), depths=(4, 6, 12, 6), num_heads=(1, 2, 6, 8), mlp_ratios=3.5,
        layer_scales=(1., 1., 1e-6, 1e-6), drop_path_rate=0.4)),
    'ravlt_large': ('RAVLT-L: 95M parameters, 16.0 GFLOPs (85.8% top-1 in the README until Feb 2025).', dict(
        embed_dims=(96, 192, 448, 640), depths=(4, 7, 19, 8), num_heads=(1, 2, 7, 10), mlp_ratios=3.5,
        layer_scales=(1e-6, 1e-6, 1e-6, 1e-6), drop_path_rate=0.55)),
}, returns=RAVLT)
