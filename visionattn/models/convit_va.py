"""ConViT: gated positional self-attention (GPSA), any input size.

Paper: `ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases`
    - https://arxiv.org/abs/2103.10697 (d'Ascoli, Touvron, Leavitt, Morcos, Biroli, Sagun, ICML 2021)

Official code and weights: https://github.com/facebookresearch/convit (Apache-2.0 per its README).
Reference port: timm's ``convit.py`` (Ross Wightman), whose ``convit_*`` weights load here unchanged.

What this version adds over timm's ``convit_*``: any input size, square or not (the absolute position embedding is
resampled and the GPSA relative positions are computed for the input grid; inputs not divisible by the patch size
are padded at the bottom/right), working gradient checkpointing, and ``features_only``/``forward_intermediates``
returning NCHW maps (the patch tokens of each block, the class token stripped after it is inserted). The registered
names are ``va_convit_*`` so they never replace timm's ``convit_*``. ``embed_dim`` is the total width (timm and the
official code take the per-head width and multiply it by ``num_heads``).

Size semantics of pretrained weights: only the absolute position embedding depends on ``img_size``; weights
loaded into a model with another ``img_size`` have it resampled with timm's ``resample_abs_pos_embed`` (timm's own
ConViT rule), and the GPSA relative positions are computed for the input grid (no parameter holds them). The
official ConViT has no fine-tuning or downstream path at another size to follow (its ``main.py`` has no
``--finetune`` resize).
"""
from typing import List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.layers import (
    DropPath,
    Mlp,
    register_notrace_function,
    register_notrace_module,
    resample_abs_pos_embed,
)
from timm.models import generate_default_cfgs

from visionattn.layers import drop_path_rates
from visionattn.layers.helpers import QkvAttention
from visionattn.ops._dispatch import is_exporting

from ._base import TokenModel
from ._convert import square_grid, unwrap_state_dict
from ._hub import build_model, default_cfg
from ._registry import register_variants

__all__ = ['ConViT']

_PAPER = dict(paper_ids='arXiv:2103.10697', paper_name='ConViT: Improving Vision Transformers with Soft '
              'Convolutional Inductive Biases', origin_url='https://github.com/facebookresearch/convit')


def rel_indices(feat_size: Tuple[int, int], device=None, dtype=None) -> torch.Tensor:
    """Relative positions ``(dx, dy, dx^2 + dy^2)`` of key minus query for a ``feat_size`` grid: ``[N, N, 3]``."""
    gh, gw = feat_size
    ys = torch.arange(gh, device=device, dtype=torch.float32).repeat_interleave(gw)
    xs = torch.arange(gw, device=device, dtype=torch.float32).repeat(gh)
    dx = xs[None, :] - xs[:, None]
    dy = ys[None, :] - ys[:, None]
    return torch.stack([dx, dy, dx ** 2 + dy ** 2], dim=-1).to(dtype)


@register_notrace_function  # reason: compares grid sizes, which FX cannot trace
def resample_pos_embed(pos_embed: torch.Tensor, feat_size: Tuple[int, int], base_size: Tuple[int, int]) -> torch.Tensor:
    """The ``[1, N, C]`` absolute position embedding of a ``base_size`` grid, resampled to ``feat_size``."""
    if not is_exporting() and tuple(feat_size) == tuple(base_size):  # exporting: no size baked in
        return pos_embed
    return resample_abs_pos_embed(pos_embed, new_size=list(feat_size), old_size=list(base_size), num_prefix_tokens=0)


@register_notrace_module  # reason: builds the relative positions from the grid size
class GPSA(nn.Module):
    """Gated positional self-attention: a per-head sigmoid gate mixes content and positional attention maps."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            locality_strength: float = 1.,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.dim = dim
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.locality_strength = locality_strength

        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gating_param = nn.Parameter(torch.ones(num_heads))

    def get_attention(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        q, k = self.qk(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        patch_score = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        # the positional map does not depend on the batch: [1, heads, N, N]
        pos_score = self.pos_proj(rel_indices(feat_size, x.device, x.dtype)).permute(2, 0, 1).unsqueeze(0)
        pos_score = pos_score.softmax(dim=-1)
        gate = torch.sigmoid(self.gating_param).view(1, -1, 1, 1)
        attn = (1. - gate) * patch_score + gate * pos_score
        attn = attn / attn.sum(dim=-1, keepdim=True)  # kept from the official code (renormalisation)
        return self.attn_drop(attn)

    def forward(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        if N != feat_size[0] * feat_size[1]:
            raise ValueError(f'GPSA: {N} tokens do not fill a {feat_size[0]}x{feat_size[1]} grid')
        attn = self.get_attention(x, feat_size)
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    @torch.no_grad()
    def local_init(self) -> None:
        """The official locality initialisation: identity values, heads looking at a grid of offsets."""
        self.v.weight.copy_(torch.eye(self.dim))
        kernel_size = int(self.num_heads ** .5)
        center = (kernel_size - 1) / 2 if kernel_size % 2 == 0 else kernel_size // 2
        for h1 in range(kernel_size):
            for h2 in range(kernel_size):
                position = h1 + kernel_size * h2
                self.pos_proj.weight[position, 2] = -1
                self.pos_proj.weight[position, 1] = 2 * (h1 - center)
                self.pos_proj.weight[position, 0] = 2 * (h2 - center)
        self.pos_proj.weight.mul_(self.locality_strength)


class MHSA(QkvAttention):
    """Multi-head self-attention of the last (non-local) blocks."""


class Block(nn.Module):
    """Pre-norm transformer block with GPSA (local blocks) or MHSA."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            use_gpsa: bool = True,
            locality_strength: float = 1.,
    ):
        super().__init__()
        self.use_gpsa = use_gpsa
        self.norm1 = norm_layer(dim)
        if use_gpsa:
            self.attn = GPSA(
                dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                locality_strength=locality_strength)
        else:
            self.attn = MHSA(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def forward(self, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.drop_path(self.attn(y, feat_size) if self.use_gpsa else self.attn(y))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class ConViT(TokenModel):
    """ConViT: a ViT whose first ``local_up_to_layer`` blocks use GPSA on patch tokens only; the class token is
    inserted before the first MHSA block.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 16,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[Type[nn.Module]] = None,
            local_up_to_layer: int = 10,
            locality_strength: float = 1.,
            use_pos_embed: bool = True,
    ):
        """
        Args:
            img_size: Training image size; sets the grid of the learned absolute position embedding. Any input size
                runs: the embedding is resampled to the input grid.
            patch_size: Patch size of the stem.
            in_chans: Number of input channels.
            num_classes: Number of classes of the head (0 for none).
            global_pool: ``'token'`` (class token), ``'avg'`` (mean of patch tokens) or ``''``.
            embed_dim: Total embedding width (the official code takes the per-head width).
            depth: Number of blocks.
            num_heads: Attention heads.
            mlp_ratio: MLP hidden width over embed_dim.
            qkv_bias: Bias on the q/k/v projections.
            drop_rate: Dropout before the head.
            pos_drop_rate: Dropout after the position embedding.
            proj_drop_rate: Dropout after projections.
            attn_drop_rate: Dropout on attention maps.
            drop_path_rate: Stochastic depth rate (linear over blocks).
            norm_layer: Norm layer (LayerNorm with eps 1e-6 by default, as the official code).
            local_up_to_layer: Number of leading GPSA blocks; the class token is inserted after them.
            locality_strength: Scale of the locality initialisation of the positional attention.
            use_pos_embed: Learned absolute position embedding on patch tokens.
        """
        super().__init__()
        if not 0 <= local_up_to_layer <= depth:
            raise ValueError(f'local_up_to_layer ({local_up_to_layer}) must be in [0, depth={depth}]')
        norm_layer = norm_layer or (lambda d: nn.LayerNorm(d, eps=1e-6))
        self.local_up_to_layer = local_up_to_layer
        # the position embedding is on the patch tokens only (the class token joins later)
        self._init_embed(
            img_size, patch_size, in_chans, num_classes, global_pool, embed_dim, pos_drop_rate,
            use_pos_embed=use_pos_embed, pos_embed_cls=False)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                use_gpsa=i < local_up_to_layer,
                locality_strength=locality_strength,
            )
            for i in range(depth)])
        self._init_tail(norm_layer, patch_size, drop_rate)
        for m in self.modules():
            if isinstance(m, GPSA):
                m.local_init()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool == 'token' and self.cls_token is None:
            raise ValueError('token pooling needs the class token, which was pruned')
        super().reset_classifier(num_classes, global_pool)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x, feat_size = self._patches(x)  # no class token yet (``_block`` adds it)
        if self.pos_embed is not None:
            x = x + resample_pos_embed(self.pos_embed, feat_size, self.patch_embed.grid_size)
        return self.pos_drop(x), feat_size

    def _block(self, i: int, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        if i == self.local_up_to_layer and self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return super()._block(i, x, feat_size)

    def _num_prefix(self, i: int) -> int:
        return self.num_prefix_tokens if i >= self.local_up_to_layer else 0  # the class token joins there

    def _prune_trunk(self, max_index: int, take_indices: List[int]) -> bool:
        super()._prune_trunk(max_index, take_indices)
        if max_index < self.local_up_to_layer:
            # the class token would be inserted after the kept blocks: it goes, and a token-pooled head with it
            self.cls_token = None
            self.num_prefix_tokens = 0
            return self.global_pool == 'token'
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # defined here, not inherited: FX autowraps this module's ``resample_pos_embed`` only in the root forward's
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: ConViT) -> dict:
    """Convert an official facebookresearch or timm ``convit_*`` checkpoint (same keys) to this model.

    Accepts raw state dicts and training dicts (``'model'``/``'state_dict'``); drops cached relative-position
    tensors; resamples a position embedding saved for another grid.
    """
    state_dict = unwrap_state_dict(state_dict)
    out = {}
    for k, v in state_dict.items():
        if k.endswith('rel_indices'):
            continue
        if k == 'pos_embed' and model.pos_embed is not None and v.shape != model.pos_embed.shape:
            v = resample_abs_pos_embed(v, new_size=list(model.patch_embed.grid_size),
                                       old_size=list(square_grid(v.shape[1], k)), num_prefix_tokens=0)
        out[k] = v
    return out


def _create_convit(variant: str, pretrained: bool = False, **kwargs) -> ConViT:
    return build_model(ConViT, variant, pretrained, checkpoint_filter_fn, default_out_indices=3, **kwargs)


def _cfg(url: str = '', **kwargs) -> dict:
    return default_cfg(url, {'license': 'apache-2.0', **_PAPER}, **kwargs)


default_cfgs = generate_default_cfgs({
    'va_convit_tiny.fb_in1k': _cfg(
        url='https://dl.fbaipublicfiles.com/convit/convit_tiny.pth', hf_hub_id='timm/convit_tiny.fb_in1k'),
    'va_convit_small.fb_in1k': _cfg(
        url='https://dl.fbaipublicfiles.com/convit/convit_small.pth', hf_hub_id='timm/convit_small.fb_in1k'),
    'va_convit_base.fb_in1k': _cfg(
        url='https://dl.fbaipublicfiles.com/convit/convit_base.pth', hf_hub_id='timm/convit_base.fb_in1k'),
})


register_variants(__name__, _create_convit, {
    'va_convit_tiny': ('ConViT-Ti: 4 heads x 48 = 192 wide, 10 GPSA + 2 MHSA blocks (73.1% top-1).', dict(
        embed_dim=192, num_heads=4, local_up_to_layer=10, locality_strength=1.0)),
    'va_convit_small': ('ConViT-S: 9 heads x 48 = 432 wide (81.4% top-1).', dict(
        embed_dim=432, num_heads=9, local_up_to_layer=10, locality_strength=1.0)),
    'va_convit_base': ('ConViT-B: 16 heads x 48 = 768 wide (82.3% top-1).', dict(
        embed_dim=768, num_heads=16, local_up_to_layer=10, locality_strength=1.0)),
}, returns=ConViT)
