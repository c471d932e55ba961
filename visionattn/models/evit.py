"""EViT: token reorganization (keep the attentive patch tokens, fuse the others) on DeiT/ViT.

Paper: `Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations`
    - https://arxiv.org/abs/2202.07800 (Liang, Ge, Tong, Song, Wang, Xie, ICLR 2022)

Official code and weights: https://github.com/youweiliang/evit (Apache-2.0), a fork of timm 0.4.12's
``vision_transformer.py``. EViT adds no parameters: the state dict is exactly timm's/DeiT's ViT, so timm's
``deit_*`` weights and the official EViT checkpoints load unchanged (through ``checkpoint_filter_fn``).

Mechanism (as the official ``evit.py``): in a reorganizing block (default blocks 3, 6, 9, 0-indexed) the attention
runs over all tokens and its residual is added to all tokens; then the class token's post-softmax attention to the
other tokens, averaged over heads, ranks them; the top ``ceil(keep_rate * (N - 1))`` are kept (in descending
attention order, as the official top-k), and with ``fuse_token`` the others are summed, weighted by that attention
(not renormalised), into one token appended last. The MLP then runs on the shorter sequence. A previously fused
token is ranked like any other token in later reorganizing blocks.

What this version changes: distinct names (``evit_deit_*``; the official code overwrites timm's ``deit_*``), any
input size (the position embedding is resampled bicubically as the official code does, also for non-square grids;
inputs not divisible by the patch size are padded at the bottom/right), the keep rate as model state
(``set_keep_rate``; absolute token counts, the official ``tokens`` argument, with ``set_tokens``) with the official
warm-up schedule as a training hook (``adjust_keep_rate``, ``KeepRateScheduler``), working gradient checkpointing,
and ``features_only``/``forward_intermediates`` returning NCHW maps although tokens are dropped (see
``EViT.forward_intermediates``). On speed: with a fused attention kernel only the class-token row of the attention
is recomputed for ranking, tokens are gathered once per reorganizing block and the fusion weights come from one
small scatter over ``[B, N]`` scores, without the official ``complement_idx`` (scatter + sort + gather).

Size semantics of pretrained weights: ``img_size`` is the grid the position embedding is stored for. Weights
loaded into a model with another ``img_size`` have it resized once as the official fine-tuning does (EViT's
``main.py --finetune``, DeiT's rule: bicubic, ``align_corners=False``, class token kept); other input sizes resample
it at run time with the same rule (official ``forward_features``). Tested in tests/models/test_size_semantics.py.
"""
import math
from typing import List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_function
from timm.models import generate_default_cfgs, resolve_pretrained_cfg
from torch.utils.checkpoint import checkpoint

from visionattn.layers import drop_path_rates
from visionattn.layers.helpers import QkvAttention

from ._base import TokenModel
from ._convert import resample_pos_embed, reshape_patch_embed, square_grid, unwrap_state_dict
from ._hub import build_model, default_cfg
from ._registry import register_variants

__all__ = ['EViT', 'adjust_keep_rate', 'KeepRateScheduler']

_PAPER = dict(
    paper_ids='arXiv:2202.07800',
    paper_name='Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations',
    license='apache-2.0')


def adjust_keep_rate(
        iters: int,
        epoch: int,
        warmup_epochs: int,
        total_epochs: int,
        iters_per_epoch: int,
        base_keep_rate: float = 0.5,
        max_keep_rate: float = 1.,
) -> float:
    """The official keep-rate warm-up (``helpers.adjust_keep_rate``).

    1 before ``warmup_epochs`` (the official ``--shrink_start_epoch``), then a cosine from ``max_keep_rate`` down to
    ``base_keep_rate`` over the iterations up to ``total_epochs`` (``shrink_start_epoch + shrink_epochs``), then
    ``base_keep_rate``. ``iters`` is the global iteration (``epoch * iters_per_epoch + step``).
    """
    if epoch < warmup_epochs:
        return 1
    if epoch >= total_epochs:
        return base_keep_rate
    total_iters = iters_per_epoch * (total_epochs - warmup_epochs)
    iters = iters - iters_per_epoch * warmup_epochs
    return base_keep_rate + (max_keep_rate - base_keep_rate) * (math.cos(iters / total_iters * math.pi) + 1) * 0.5


class KeepRateScheduler:
    """Training hook: sets the keep rate of an EViT's reorganizing blocks from the official warm-up schedule.

    Call ``step(epoch, step_in_epoch)`` before each iteration (the official code updates per iteration) or
    ``step(epoch)`` once per epoch; it returns the rate it set. Pass the same rate to evaluation, as the official
    ``main.py`` does, by leaving it set on the model.

    Example::

        sched = KeepRateScheduler(model, base_keep_rate=0.7, shrink_start_epoch=10, shrink_epochs=100,
                                  iters_per_epoch=len(loader))
        for epoch in range(epochs):
            for i, (x, y) in enumerate(loader):
                sched.step(epoch, i)
                ...
    """

    def __init__(
            self,
            model: nn.Module,
            base_keep_rate: Optional[float] = None,
            shrink_start_epoch: int = 0,
            shrink_epochs: int = 0,
            iters_per_epoch: int = 1,
            max_keep_rate: float = 1.,
    ):
        if not hasattr(model, 'set_keep_rate'):
            raise ValueError(f'{type(model).__name__} has no set_keep_rate(); expected an EViT')
        if iters_per_epoch < 1:
            raise ValueError(f'iters_per_epoch must be >= 1, got {iters_per_epoch}')
        if base_keep_rate is None:
            rates = [r for r in model.configured_keep_rates if r < 1]
            base_keep_rate = min(rates) if rates else 1.
        if not 0 < base_keep_rate <= 1:
            raise ValueError(f'base_keep_rate must be in (0, 1], got {base_keep_rate}')
        self.model = model
        self.base_keep_rate = base_keep_rate
        self.shrink_start_epoch = shrink_start_epoch
        self.shrink_epochs = shrink_epochs
        self.iters_per_epoch = iters_per_epoch
        self.max_keep_rate = max_keep_rate

    def rate(self, epoch: int, step_in_epoch: int = 0) -> float:
        return adjust_keep_rate(
            epoch * self.iters_per_epoch + step_in_epoch, epoch, self.shrink_start_epoch,
            self.shrink_start_epoch + self.shrink_epochs, self.iters_per_epoch, self.base_keep_rate,
            self.max_keep_rate)

    def step(self, epoch: int, step_in_epoch: int = 0) -> float:
        rate = self.rate(epoch, step_in_epoch)
        self.model.set_keep_rate(rate)
        return rate


@register_notrace_function  # reason: the number of kept tokens is computed from the sequence length
def reorganize_tokens(
        x: torch.Tensor,
        cls_attn: torch.Tensor,
        keep_rate: float,
        fuse_token: bool,
        tokens: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Keep the most attended tokens of ``x`` ``[B, 1 + N, C]`` (class token first) and optionally fuse the rest.

    Args:
        x: Tokens after the attention residual, class token first.
        cls_attn: ``[B, N]`` class-token attention to the other tokens, averaged over heads.
        keep_rate: Fraction of the N non-class tokens kept: ``ceil(keep_rate * N)``.
        fuse_token: Append ``sum_j cls_attn_j x_j`` over the dropped tokens as one token.
        tokens: Keep exactly this many of the N tokens instead (the official ``tokens`` argument; overrides
            ``keep_rate``).

    Returns:
        The new sequence ``[cls, kept (descending attention), fused?]`` and the ``[B, kept]`` indices of the kept
        tokens among the N (``None`` and ``x`` unchanged when all are kept, as in the official code).
    """
    B, N1, C = x.shape
    left = math.ceil(keep_rate * (N1 - 1)) if tokens is None else tokens
    if not 1 <= left <= N1 - 1:
        raise ValueError(f'cannot keep {left} of {N1 - 1} tokens (tokens={tokens}, keep_rate={keep_rate})')
    if left >= N1 - 1:
        return x, None
    _, idx = torch.topk(cls_attn, left, dim=1, largest=True, sorted=True)
    # one gather takes the class token and the kept tokens
    index = torch.cat([idx.new_zeros(B, 1), idx + 1], dim=1)
    kept = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, C))
    if fuse_token:
        weights = cls_attn.scatter(1, idx, 0.)  # attention of the dropped tokens, zero at the kept ones
        extra = torch.bmm(weights.unsqueeze(1).to(x.dtype), x[:, 1:])
        kept = torch.cat([kept, extra], dim=1)
    return kept, idx


class Attention(QkvAttention):
    """Multi-head self-attention that can also return the head-averaged class-token attention."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
    ):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop)

    def forward(self, x: torch.Tensor, need_cls_attn: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        q, k, v = self.split_qkv(x)
        cls_attn = None
        # the official ranking uses the attention after dropout: take the explicit path when dropout is active
        if self.fused_attn and not (need_cls_attn and self.training and self.attn_drop.p > 0):
            x = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0., scale=self.scale)
            if need_cls_attn:
                # only the class-token row is needed for ranking: [B, H, 1, N]
                cls_attn = ((q[:, :, :1] @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
                cls_attn = cls_attn[:, :, 0, 1:].mean(dim=1)
        else:
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
            if need_cls_attn:
                cls_attn = attn[:, :, 0, 1:].mean(dim=1)
        return self.project(x), cls_attn


class Block(nn.Module):
    """Pre-norm ViT block; a reorganizing block drops (and optionally fuses) tokens between attention and MLP."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            keep_rate: float = 1.,
            fuse_token: bool = False,
    ):
        super().__init__()
        if not 0 < keep_rate <= 1:
            raise ValueError(f'keep_rate must be in (0, 1], got {keep_rate}')
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        # a block reorganizes when built with keep_rate < 1 (the official `self.keep_rate < 1`); `keep_rate` is the
        # rate it uses now, which set_keep_rate / the warm-up schedule change
        self.reorganize = keep_rate < 1
        self.keep_rate = keep_rate
        # an absolute number of tokens to keep (the official `tokens`, see EViT.set_tokens): this block then
        # reorganizes whatever its keep rate
        self.tokens: Optional[int] = None
        self.fuse_token = fuse_token

    def forward(
            self,
            x: torch.Tensor,
            return_index: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        active = (self.reorganize and self.keep_rate < 1) or self.tokens is not None
        y, cls_attn = self.attn(self.norm1(x), need_cls_attn=active)
        x = x + self.drop_path1(y)
        idx = None
        if active:
            x, idx = reorganize_tokens(x, cls_attn, self.keep_rate, self.fuse_token, self.tokens)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return (x, idx) if return_index else x


class EViT(TokenModel):
    """DeiT/ViT with EViT token reorganization in the blocks whose keep rate is below 1."""

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
            keep_rate: Union[float, Sequence[float]] = 0.7,
            drop_loc: Sequence[int] = (3, 6, 9),
            fuse_token: bool = True,
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
            img_size: Training image size; sets the grid of the learned position embedding. Any input size runs:
                the embedding is resampled to the input grid.
            patch_size: Patch size of the stem.
            in_chans: Number of input channels.
            num_classes: Number of classes of the head (0 for none).
            global_pool: ``'token'`` (class token, as EViT), ``'avg'`` (mean of the other tokens) or ``''``.
            embed_dim: Embedding width.
            depth: Number of blocks.
            num_heads: Attention heads.
            mlp_ratio: MLP hidden width over embed_dim.
            qkv_bias: Bias on the q/k/v projection.
            keep_rate: The keep rate of the blocks in ``drop_loc`` (the official ``base_keep_rate``), or one rate per
                block (the official ``keep_rate`` list; ``drop_loc`` is then ignored). Blocks with rate 1 never
                reorganize.
            drop_loc: 0-indexed reorganizing blocks for a scalar ``keep_rate``.
            fuse_token: Fuse the dropped tokens into one appended token.
            drop_rate: Dropout before the head.
            pos_drop_rate: Dropout after the position embedding.
            proj_drop_rate: Dropout after projections.
            attn_drop_rate: Dropout on attention maps.
            drop_path_rate: Stochastic depth rate (linear over blocks).
            norm_layer: Norm layer (LayerNorm with eps 1e-6 by default, as DeiT).
            act_layer: MLP activation (GELU by default).
        """
        super().__init__()
        if isinstance(keep_rate, (int, float)):
            bad = [i for i in drop_loc if not 0 <= i < depth]
            if bad:
                raise ValueError(f'drop_loc {tuple(drop_loc)} has blocks outside [0, depth={depth})')
            keep_rates = [float(keep_rate) if i in drop_loc else 1. for i in range(depth)]
        else:
            keep_rates = [float(r) for r in keep_rate]
            if len(keep_rates) != depth:
                raise ValueError(f'keep_rate has {len(keep_rates)} entries for depth {depth}')
        norm_layer = norm_layer or (lambda d: nn.LayerNorm(d, eps=1e-6))
        act_layer = act_layer or nn.GELU
        self.fuse_token = fuse_token
        self.configured_keep_rates = tuple(keep_rates)
        self._init_embed(img_size, patch_size, in_chans, num_classes, global_pool, embed_dim, pos_drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                act_layer=act_layer,
                norm_layer=norm_layer,
                keep_rate=keep_rates[i],
                fuse_token=fuse_token,
            )
            for i in range(depth)])
        self._init_tail(norm_layer, patch_size, drop_rate)

    @property
    def keep_rates(self) -> Tuple[float, ...]:
        """The keep rate each block uses now (1 for blocks that do not reorganize)."""
        return tuple(b.keep_rate if b.reorganize else 1. for b in self.blocks)

    def set_keep_rate(self, keep_rate: Optional[Union[float, Sequence[float]]] = None) -> None:
        """Set the keep rate of the reorganizing blocks (the official ``model(x, keep_rate)`` during training).

        Args:
            keep_rate: One rate for every reorganizing block (blocks built with rate 1 stay dense; a rate of 1
                turns reorganization off), one rate per reorganizing block, or None to restore the built rates.
        """
        reorg = [b for b in self.blocks if b.reorganize]
        if keep_rate is None:
            rates = [r for r in self.configured_keep_rates[:len(self.blocks)] if r < 1]
        elif isinstance(keep_rate, (int, float)):
            rates = [float(keep_rate)] * len(reorg)
        else:
            rates = [float(r) for r in keep_rate]
            if len(rates) != len(reorg):
                raise ValueError(f'{len(rates)} keep rates for {len(reorg)} reorganizing blocks')
        for r in rates:
            if not 0 < r <= 1:
                raise ValueError(f'keep rates must be in (0, 1], got {r}')
        for b, r in zip(reorg, rates):
            b.keep_rate = r

    def set_tokens(self, tokens: Optional[Union[int, Sequence[Optional[int]]]] = None) -> None:
        """Keep an absolute number of tokens (the official ``model(x, tokens=...)``) instead of a rate.

        Args:
            tokens: One count per block (None entries use the keep rate), one count for every block (as the official
                code broadcasts a scalar), or None to go back to the keep rates. A block given a count reorganizes
                even if built with keep rate 1, keeping that many of its non-class tokens (nothing when it equals
                their number); a count larger than the tokens a block receives raises a ValueError.
        """
        if tokens is None or isinstance(tokens, int):
            tokens = [tokens] * len(self.blocks)
        tokens = list(tokens)
        if len(tokens) != len(self.blocks):
            raise ValueError(f'{len(tokens)} token counts for {len(self.blocks)} blocks')
        for t in tokens:
            if t is not None and (not isinstance(t, int) or t < 1):
                raise ValueError(f'token counts must be positive integers or None, got {t!r}')
        for b, t in zip(self.blocks, tokens):
            b.tokens = t

    def _block(self, i: int, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        blk = self.blocks[i]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x, True, use_reentrant=False)
        return blk(x, True)

    def _intermediates(
            self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool, norm: bool,
            output_fmt: str) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The selected blocks' outputs as full-grid maps.

        Token reorganization drops grid positions, so each intermediate is a canvas of the whole patch grid: the
        kept tokens are written back to their grid positions, and a position whose token was dropped keeps the
        value its token had at the output of the last block it went through whole (the block before the one that
        dropped it). Fused tokens belong to no position and are not in the maps. Before the first reorganization
        the maps are exactly the blocks' patch tokens. The final features are the (reduced) token sequence,
        equal to ``forward_features``. ``output_fmt``: ``'NCHW'`` (maps) or ``'NLC'`` (the canvas as ``[B, H*W, C]``).
        """
        x, feat_size = self._embed(x)
        B, L, C = x.shape[0], feat_size[0] * feat_size[1], x.shape[-1]
        pos = None  # grid position of each non-class token; L (a spare slot) for fused tokens
        canvas = None  # [B, L + 1, C]: the grid plus the spare slot
        intermediates = []
        last = max_index if stop_early else len(self.blocks) - 1
        for i in range(last + 1):
            x, idx = self._block(i, x)
            if idx is not None:
                if pos is None:
                    pos = torch.arange(L, device=x.device).expand(B, -1)
                pos = torch.gather(pos, 1, idx)
                if x.shape[1] - 1 > pos.shape[1]:  # the fused token, appended last
                    pos = torch.cat([pos, pos.new_full((B, 1), L)], dim=1)
            if pos is None:
                canvas = F.pad(x[:, 1:], (0, 0, 0, 1))
            else:
                canvas = canvas.scatter(1, pos.unsqueeze(-1).expand(-1, -1, C), x[:, 1:])
            if i in take_indices:
                y = canvas[:, :L]
                intermediates.append(self._token_map(self.norm(y) if norm else y, feat_size, output_fmt))
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)


def checkpoint_filter_fn(state_dict: dict, model: EViT) -> dict:
    """Convert an official EViT or a timm/DeiT ViT checkpoint (the same keys) to this model.

    Accepts raw state dicts and training dicts (``'model'``, ``'state_dict'``, ``'model_ema'``; the official
    checkpoints keep the weights under ``'model'``), strips ``module.``, reshapes linear patch-embedding weights
    and resamples a position embedding saved for another grid (bicubic, as the official code).
    """
    state_dict = unwrap_state_dict(state_dict)
    out = {}
    for k, v in state_dict.items():
        if k in ('dist_token', 'head_dist.weight', 'head_dist.bias'):
            raise ValueError(f'{k!r}: distilled DeiT checkpoints (a second prefix token) are not supported')
        if k == 'patch_embed.proj.weight':
            v = reshape_patch_embed(v, model.patch_embed.proj.weight.shape)
        elif k == 'pos_embed' and v.shape != model.pos_embed.shape:
            v = resample_pos_embed(v, tuple(model.patch_embed.grid_size), square_grid(v.shape[1] - 1, k))
        out[k] = v
    return out


def _create_evit(variant: str, pretrained: bool = False, **kwargs) -> EViT:
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
        if 'drive.google.com' in (cfg.url or '') and not (cfg.file or cfg.state_dict or cfg.hf_hub_id):
            raise RuntimeError(
                f'The official EViT weights for {variant}.{cfg.tag} are on Google Drive, which cannot be '
                f'downloaded automatically: download {cfg.url} by hand and pass '
                f'pretrained_cfg_overlay=dict(file=<path>)')
    return build_model(EViT, variant, pretrained, checkpoint_filter_fn, default_out_indices=3, **kwargs)


def _cfg(url: str = '', **kwargs) -> dict:
    return default_cfg(url, {'crop_pct': 0.9, 'origin_url': 'https://github.com/youweiliang/evit', **_PAPER}, **kwargs)


def _evit_drive(file_id: str, keep_rate: float, fuse: bool, top1: float) -> dict:
    return _cfg(
        url=f'https://drive.google.com/file/d/{file_id}/view?usp=sharing',
        notes=(f'official EViT-DeiT-S, keep rate {keep_rate}, token fusion {"on" if fuse else "off"}, '
               f'{top1}% top-1 (README); fine-tuned from DeiT-S',
               'Google Drive: download by hand, then pretrained_cfg_overlay=dict(file=<path>)'))


def _deit(name: str, **kwargs) -> dict:
    return _cfg(
        url=f'https://dl.fbaipublicfiles.com/deit/{name}.pth',
        hf_hub_id=f'timm/{name.rsplit("-", 1)[0]}.fb_in1k',
        origin_url='https://github.com/facebookresearch/deit',
        notes=('DeiT weights, not fine-tuned with token reorganization (the EViT fine-tuning starting point)',),
        **kwargs)


# keep rate and fusion each official EViT-DeiT-S checkpoint was trained with (EViT adds no parameters, so these are
# the only architecture settings a tag carries); explicit keep_rate / fuse_token kwargs win
_TAG_ARGS = {
    f'keep0{r}_{"fuse" if f else "nofuse"}_in1k': dict(keep_rate=r / 10, fuse_token=f)
    for r in (5, 6, 7, 8, 9) for f in (True, False)}

default_cfgs = generate_default_cfgs({
    'evit_deit_tiny_patch16_224.fb_in1k': _deit('deit_tiny_patch16_224-a1311bcf'),
    # first entry: the default weights (the README's headline model)
    'evit_deit_small_patch16_224.keep07_fuse_in1k': _evit_drive('1FfvdEBss9f8gexjqEY8vOSUQe_8qwYuL', 0.7, True, 79.5),
    'evit_deit_small_patch16_224.keep09_fuse_in1k': _evit_drive('1CmROmlLV-7nyYY-Bhph8_5ut3wFwqvny', 0.9, True, 79.8),
    'evit_deit_small_patch16_224.keep08_fuse_in1k': _evit_drive('1BTJyIe0zVK3zYXz3BzIlSC4YZCnZu7cJ', 0.8, True, 79.8),
    'evit_deit_small_patch16_224.keep06_fuse_in1k': _evit_drive('1D1m067jDbyG0g2UjyBMaJ4NTT2Ad8vrv', 0.6, True, 78.9),
    'evit_deit_small_patch16_224.keep05_fuse_in1k': _evit_drive('1-nyxAlRWjD2icbgj3Y3YWcCmYj9sTgfD', 0.5, True, 78.5),
    'evit_deit_small_patch16_224.keep09_nofuse_in1k': _evit_drive(
        '1tSaPLged8ED2RTiN5ttSmeTNIw1aNNwV', 0.9, False, 79.9),
    'evit_deit_small_patch16_224.keep08_nofuse_in1k': _evit_drive(
        '1zdFbHk-gOw_Wiid5_Z8NFcBa1HMI-JF-', 0.8, False, 79.7),
    'evit_deit_small_patch16_224.keep07_nofuse_in1k': _evit_drive(
        '1VCZGphW34rFWZDXOoF7XO4EJfRLZ-YB8', 0.7, False, 79.4),
    'evit_deit_small_patch16_224.keep06_nofuse_in1k': _evit_drive(
        '1okYcKryyD6FFPG9v5r40R28SRNfVZ5X0', 0.6, False, 79.1),
    'evit_deit_small_patch16_224.keep05_nofuse_in1k': _evit_drive(
        '1qsPeLN5ytLO8pM7lUuj5bi6pyMhjiSJO', 0.5, False, 78.4),
    'evit_deit_small_patch16_224.fb_in1k': _deit('deit_small_patch16_224-cd65a155'),
    'evit_deit_base_patch16_224.fb_in1k': _deit('deit_base_patch16_224-b5f2ef4d'),
    # the official repo's higher-resolution EViT-DeiT-S settings (no weights released): DeiT-S 224 weights, whose
    # position embedding checkpoint_filter_fn resamples, as the official fine-tuning from 224 does
    'evit_deit_small_patch16_272.fb_in1k': _deit('deit_small_patch16_224-cd65a155', input_size=(3, 272, 272)),
    'evit_deit_small_patch16_288.fb_in1k': _deit('deit_small_patch16_224-cd65a155', input_size=(3, 288, 288)),
    'evit_deit_small_patch16_304.fb_in1k': _deit('deit_small_patch16_224-cd65a155', input_size=(3, 304, 304)),
    'evit_deit_base_patch16_384.fb_in1k': _deit('deit_base_patch16_384-8de9b5d1', input_size=(3, 384, 384),
                                               crop_pct=1.0),
})


def _tag_args(kwargs: dict) -> dict:
    """Architecture settings of the pretrained tag named in ``create_model('name.tag')`` (none for other tags)."""
    cfg = kwargs.get('pretrained_cfg')
    if isinstance(cfg, dict):
        cfg = cfg.get('tag')
    elif cfg is not None and not isinstance(cfg, str):
        cfg = getattr(cfg, 'tag', None)
    return _TAG_ARGS.get(cfg, {})


def _small_args(kwargs: dict) -> dict:
    """EViT-DeiT-S's model args with the settings of the pretrained tag (explicit kwargs win over both)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, keep_rate=0.7, fuse_token=True)
    model_args.update(_tag_args(kwargs))
    return model_args


def _small_at(size: int, keep_rate: float, official: str) -> Tuple[str, dict]:
    """An official higher-resolution EViT-DeiT-S setting: its registration (description, model args)."""
    return f'EViT-DeiT-S at {size}: keep {keep_rate} (the official ``{official}``).', dict(
        img_size=size, patch_size=16, embed_dim=384, depth=12, num_heads=6, keep_rate=keep_rate, fuse_token=True)


register_variants(__name__, _create_evit, {
    'evit_deit_tiny_patch16_224': ('EViT-DeiT-Ti: keep 0.7 at blocks 3, 6, 9 with fusion.', dict(
        patch_size=16, embed_dim=192, depth=12, num_heads=3, keep_rate=0.7, fuse_token=True)),
    'evit_deit_small_patch16_224': (
        """EViT-DeiT-S: keep 0.7 at blocks 3, 6, 9 with fusion (79.5% top-1); the ``keepXX_{fuse,nofuse}_in1k`` tags
    set the keep rate and fusion of the official checkpoint they name.""",
        _small_args),
    'evit_deit_base_patch16_224': (
        'EViT-DeiT-B: keep 0.7 at blocks 3, 6, 9 with fusion (the official ``deit_base_patch16_shrink_base``).',
        dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, keep_rate=0.7, fuse_token=True)),
    'evit_deit_small_patch16_272': _small_at(272, 0.7, 'deit_small_patch16_272_shrink'),
    'evit_deit_small_patch16_288': _small_at(288, 0.6, 'deit_small_patch16_288_shrink06'),
    'evit_deit_small_patch16_304': _small_at(304, 0.5, 'deit_small_patch16_304_shrink05'),
    'evit_deit_base_patch16_384': (
        'EViT-DeiT-B at 384: keep 0.7 at blocks 3, 6, 9 with fusion, from DeiT-B 384 weights.',
        dict(img_size=384, patch_size=16, embed_dim=768, depth=12, num_heads=12, keep_rate=0.7, fuse_token=True)),
}, returns=EViT)
