"""Model bases shared by the families: the timm model API written once.

``StagedModel``: hierarchical backbones (BiFormer, LITv2, NAT, RAVLT, TransNeXt and Agent's PVT/Swin/CSwin hosts):
a stem, ``stages`` (each with a ``grad_checkpointing`` flag), an optional final ``norm``, average pooling and a
linear ``head``. ``TokenModel``: the DeiT/ViT scaffold (class token, absolute position embedding, ``blocks``,
``norm``, ``head``) of EViT, Sparsifiner, Agent-DeiT and ConViT.

Both build on ``ModelApi`` (the classifier, ``forward_intermediates`` and ``prune_intermediate_layers`` written
once over a trunk of stages or blocks), which NAT's isotropic model uses directly. A subclass builds its modules in
``__init__`` and sets ``num_classes``, ``in_chans``, ``global_pool``, ``num_features``, ``grad_checkpointing``,
``head_drop`` and ``head``; it overrides the hooks (``_stem``, ``_norm``, ``_out_norm``, ``_intermediates``...) where
it differs, and keeps only what is its own.
"""
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices  # timm exports it from no public module
from torch.utils.checkpoint import checkpoint

from visionattn.layers import check_image_input, drop_path_rates

from ._convert import resample_pos_embed

__all__ = [
    'ModelApi', 'StagedModel', 'Stage', 'TokenModel', 'StageNorms', 'init_weights', 'out_norm_stages',
    'feature_take_indices']

# FX autowraps notrace functions only in the root forward's module and in the modules of the submodules it has
# called: wrap the ones the bases call (before any family module) whatever module defines the model's forward
torch.fx.wrap('check_image_input')
torch.fx.wrap('resample_pos_embed')


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        allowed = ' or '.join(repr(c) for c in choices) if len(choices) <= 2 else \
            'one of ' + ', '.join(repr(c) for c in choices)
        raise ValueError(f'{name} must be {allowed}, got {value!r}')


OutNormsArg = Union[bool, str, Sequence[int]]


def init_weights(m: nn.Module) -> None:
    """timm's ViT / Swin init: Linear weights truncated normal (std .02) with zero bias, LayerNorm to identity."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.zeros_(m.bias)
        nn.init.ones_(m.weight)


def out_norm_stages(
        out_norms: OutNormsArg,
        num_stages: int,
        presets: Optional[Dict[str, Sequence[int]]] = None,
        deprecated: Optional[Tuple[str, bool]] = None,
) -> List[int]:
    """The stages given a per-stage output norm by a family's ``out_norms`` argument: True (every stage), False or
    empty (none), a preset name of ``presets`` or stage indices. ``deprecated``: ``(old_name, value)`` of a family's
    former argument (a bool), accepted with a DeprecationWarning."""
    if deprecated is not None and deprecated[1]:
        warnings.warn(f'{deprecated[0]} is deprecated, use out_norms', DeprecationWarning, stacklevel=3)
        out_norms = out_norms or True
    if isinstance(out_norms, bool):
        return list(range(num_stages)) if out_norms else []
    if isinstance(out_norms, str):
        if out_norms not in (presets or {}):
            raise ValueError(f'out_norms must be a bool, one of {sorted(presets or {})} or stage indices, '
                             f'got {out_norms!r}')
        out_norms = presets[out_norms]
    stages = sorted({int(i) for i in out_norms})
    if any(not 0 <= i < num_stages for i in stages):
        raise ValueError(f'out_norms: stage indices must be in [0, {num_stages}), got {list(out_norms)}')
    return stages


class StageNorms(nn.ModuleDict):
    """Per-stage output norms (dense-prediction backbones), keyed by stage index (``'0'``, ``'1'``...; an int index
    works too): applied to the ``forward_intermediates`` / ``features_only`` maps, not to the trunk."""

    def __init__(self, stages: Iterable[int] = (), make: Optional[Callable[[int], nn.Module]] = None):
        super().__init__({str(i): make(i) for i in stages})

    def __getitem__(self, key: Union[int, str]) -> nn.Module:
        return super().__getitem__(str(key))

    def __contains__(self, key: Union[int, str]) -> bool:
        return super().__contains__(str(key))

    def prune(self, keep: Callable[[int], bool]) -> None:
        """Drop the norms of the stages for which ``keep(stage)`` is False."""
        for k in [k for k in self.keys() if not keep(int(k))]:
            del self[k]


class ModelApi(nn.Module):
    """The timm model API that hierarchical and token models share, over a trunk (``_trunk()``: the stages or the
    blocks): the classifier, ``forward_intermediates``, ``prune_intermediate_layers`` and ``forward``.

    Hooks: ``_intermediates`` (the walk over the trunk), ``_norm`` (the final norm), ``_prune_trunk`` and
    ``_prune_head``. Class attributes: ``global_pools`` and ``output_fmts`` (the accepted values).
    """
    _init_weights = staticmethod(init_weights)
    global_pools: Tuple[str, ...] = ('avg', '')
    output_fmts: Tuple[str, ...] = ('NCHW', 'NHWC')

    def _init_api(self, in_chans: int, num_classes: int, global_pool: str, num_features: int) -> None:
        """Check ``global_pool`` (one of ``global_pools``) and set the attributes the API reads (``head_hidden_size``
        is ``num_features``)."""
        _check_choice('global_pool', global_pool, self.global_pools)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = num_features

    def _init_head(self, drop_rate: float) -> None:
        """The classifier: dropout ``drop_rate``, then a linear head over ``num_features`` (none if no classes)."""
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, self.num_classes) if self.num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            _check_choice('global_pool', global_pool, self.global_pools)
            self.global_pool = global_pool
        w = next(self.parameters())
        self.head = nn.Linear(self.num_features, num_classes, device=w.device, dtype=w.dtype) \
            if num_classes > 0 else nn.Identity()

    def _trunk(self) -> nn.Module:
        """The stages or blocks that ``forward_intermediates`` indexes."""
        return self.blocks

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm on the trunk's output."""
        return self.norm(x)

    def _intermediates(
            self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool, norm: bool,
            output_fmt: str) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The images through the trunk (up to ``max_index`` if ``stop_early``): its output before the final norm, and
        the ``take_indices`` intermediates in ``output_fmt``."""
        raise NotImplementedError

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that also returns the selected intermediates: stage maps of a hierarchical model, block
        outputs of a token model (the family's ``_intermediates`` says how they are taken).

        Args:
            x: Input images ``[B, C, H, W]``.
            indices: Take the last n stages (blocks) if int, all if None, the listed indices if a sequence.
            norm: Apply the final norm to the intermediates (hierarchical models: to the last stage's map; a stage
                with an output norm of its own uses that).
            stop_early: Stop after the last stage (block) needed.
            output_fmt: One of ``output_fmts``.
            intermediates_only: Return only the intermediates.

        Returns:
            ``(features, intermediates)`` or only the intermediates.
        """
        _check_choice('output_fmt', output_fmt, self.output_fmts)
        take_indices, max_index = feature_take_indices(len(self._trunk()), indices)
        x, intermediates = self._intermediates(x, take_indices, max_index, stop_early, norm, output_fmt)
        if intermediates_only:
            return intermediates
        return self._norm(x), intermediates

    def _prune_trunk(self, max_index: int, take_indices: List[int]) -> bool:
        """Drop the trunk after ``max_index`` (and what belongs to it); True if the head must go too."""
        self.blocks = self.blocks[:max_index + 1]
        return False

    def _prune_head(self) -> None:
        self.reset_classifier(0, '')

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages or blocks (and optionally norm and head) not needed for ``indices``; returns the kept
        indices."""
        take_indices, max_index = feature_take_indices(len(self._trunk()), indices)
        prune_head = self._prune_trunk(max_index, take_indices) or prune_head
        if prune_norm and isinstance(getattr(self, 'norm', None), nn.Module):
            self.norm = nn.Identity()
        if prune_head:
            self._prune_head()
        return take_indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class StagedModel(ModelApi):
    """The timm model API of a hierarchical backbone.

    Class attributes: ``stem_name`` (the stem module, also the ``group_matcher`` stem), ``stage_fmt`` (the layout of
    the maps between stages: ``'NCHW'`` or ``'NHWC'``), ``output_fmts`` (the ``forward_intermediates`` formats),
    ``global_pools`` (accepted pooling) and the ``group_matcher`` patterns ``group_stem``, ``group_downsample`` and
    ``group_tail`` (the modules after the last block).
    """
    stem_name: str = 'patch_embed'
    stage_fmt: str = 'NCHW'
    group_stem: Optional[str] = None
    group_downsample: str = r'^stages\.(\d+)\.downsample'
    group_tail: Tuple[str, ...] = (r'^norm',)

    def _init_stages(
            self,
            make: Callable[[int, List[float]], nn.Module],
            depths: Sequence[int],
            dims: Sequence[int],
            drop_path_rate: float,
            stride: int = 4,
    ) -> None:
        """``stages``: ``make(i, drop_path)`` for each stage ``i`` (``drop_path``: its blocks' rates, increasing
        linearly over all blocks), and their ``feature_info`` (``dims[i]`` channels at ``stride * 2 ** i``)."""
        dpr = drop_path_rates(drop_path_rate, sum(depths))
        stages = []
        self.feature_info = []
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            stages.append(make(i, dpr[start:start + depth]))
            self.feature_info.append(dict(num_chs=dims[i], reduction=stride * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=self.group_stem or f'^{self.stem_name}',
            blocks=r'^stages\.(\d+)' if coarse else [
                (self.group_downsample, (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                *[(p, (99999,)) for p in self.group_tail],
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable

    def _trunk(self) -> nn.Module:
        return self.stages

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Checked input images to the first stage's input."""
        return getattr(self, self.stem_name)(check_image_input(x, self.in_chans))

    def _out_norm(self, i: int) -> Optional[nn.Module]:
        """The per-stage output norm of stage ``i`` (``out_norms``, a ``StageNorms``), if the model has one."""
        out_norms = getattr(self, 'out_norms', None)
        return out_norms[i] if out_norms is not None and i in out_norms else None

    def _prune_out_norms(self, max_index: int, take_indices: List[int]) -> None:
        """Drop the output norms of the stages that ``prune_intermediate_layers`` removes."""
        out_norms = getattr(self, 'out_norms', None)
        if out_norms is not None:
            out_norms.prune(lambda i: i <= max_index)

    def _prune_trunk(self, max_index: int, take_indices: List[int]) -> bool:
        self.stages = self.stages[:max_index + 1]
        self._prune_out_norms(max_index, take_indices)
        return False

    def _intermediates(
            self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool, norm: bool,
            output_fmt: str) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The stage maps: a stage's output norm if it has one, else the final norm on the last map if ``norm``."""
        last_idx = len(self.stages) - 1
        x = self._stem(x)
        stages = self.stages if not stop_early and not torch.jit.is_scripting() else self.stages[:max_index + 1]
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                out_norm = self._out_norm(i)
                if out_norm is not None:
                    y = out_norm(x)
                else:
                    y = self._norm(x) if norm and i == last_idx else x
                if self.stage_fmt != output_fmt:
                    y = y.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else y.permute(0, 2, 3, 1)
                intermediates.append(y.contiguous() if output_fmt == 'NCHW' else y)
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(x)
        for stage in self.stages:
            x = stage(x)
        return self._norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(2, 3) if self.stage_fmt == 'NCHW' else (1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


class Stage(nn.Module):
    """A ``StagedModel`` stage: ``downsample`` (``nn.Identity`` where there is none), then the ``blocks``
    (``nn.Sequential``), checkpointed while ``grad_checkpointing`` is set (``StagedModel.set_grad_checkpointing``)."""

    def __init__(self):
        super().__init__()
        self.grad_checkpointing = False

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._blocks(self.downsample(x))


class TokenModel(ModelApi):
    """The DeiT/ViT scaffold: ``cls_token``, ``pos_embed``, ``patch_embed``, ``blocks``, ``norm`` and ``head``, with
    ``global_pool`` over ``global_pools`` (``'token'``: the class token, ``'avg'``: the patch tokens' mean).

    As timm's ``VisionTransformer`` for its ``deit.py`` subclasses, the families build their own blocks (and the hooks
    ``_embed``, ``_block`` where they differ) between ``_init_embed`` and ``_init_tail``, and inherit the rest of the
    timm API.
    """
    global_pools: Tuple[str, ...] = ('', 'avg', 'token')
    output_fmts: Tuple[str, ...] = ('NCHW', 'NLC')
    pos_interpolation: str = 'bicubic'

    def _init_embed(
            self, img_size: Union[int, Tuple[int, int]], patch_size: int, in_chans: int, num_classes: int,
            global_pool: str, embed_dim: int, pos_drop_rate: float, use_pos_embed: bool = True,
            pos_embed_cls: bool = True) -> Tuple[int, int]:
        """The API attributes (one class token) and the embedding: ``patch_embed`` (NHWC, inputs padded to the patch
        size), ``cls_token``, ``pos_embed`` (class token and patch grid; the grid only without ``pos_embed_cls``; None
        without ``use_pos_embed``) and ``pos_drop``. Returns the patch grid."""
        self._init_api(in_chans, num_classes, global_pool, embed_dim)
        self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, output_fmt='NHWC',
            strict_img_size=False, dynamic_img_pad=True)
        num_tokens = self.patch_embed.num_patches + (1 if pos_embed_cls else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim)) if use_pos_embed else None
        self.pos_drop = nn.Dropout(p=pos_drop_rate)
        return tuple(self.patch_embed.grid_size)

    def _init_tail(self, norm_layer: Callable[[int], nn.Module], patch_size: int, drop_rate: float) -> None:
        """After the blocks: ``norm``, ``feature_info`` (a map per block) and the classifier (``_init_head``); then
        the timm ViT init of the weights (``pos_embed``, ``cls_token`` and ``init_weights``)."""
        self.norm = norm_layer(self.embed_dim)
        self.feature_info = [
            dict(num_chs=self.embed_dim, reduction=patch_size, module=f'blocks.{i}') for i in range(len(self.blocks))]
        self._init_head(drop_rate)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(self._init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^cls_token|pos_embed|patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _patches(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Checked images to patch tokens ``[B, H'*W', C]`` and the grid ``(H', W')``."""
        x = self.patch_embed(check_image_input(x, self.in_chans))  # [B, H', W', C]
        return x.flatten(1, 2), (x.shape[1], x.shape[2])

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch tokens after the class token, plus the position embedding resampled to the grid (with
        ``pos_interpolation``), through ``pos_drop``."""
        x, feat_size = self._patches(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + resample_pos_embed(
            self.pos_embed, feat_size, self.patch_embed.grid_size, self.num_prefix_tokens, self.pos_interpolation)
        return self.pos_drop(x), feat_size

    def _block(self, i: int, x: torch.Tensor, feat_size: Tuple[int, int]) -> torch.Tensor:
        blk = self.blocks[i]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x, feat_size, use_reentrant=False)
        return blk(x, feat_size)

    def _num_prefix(self, i: int) -> int:
        """Prefix (class) tokens in the output of block ``i``."""
        return self.num_prefix_tokens

    @staticmethod
    def _token_map(y: torch.Tensor, feat_size: Tuple[int, int], output_fmt: str) -> torch.Tensor:
        """Patch tokens ``[B, H*W, C]`` as an NCHW map, or as they are for ``'NLC'``."""
        if output_fmt != 'NCHW':
            return y
        return y.reshape(y.shape[0], feat_size[0], feat_size[1], -1).permute(0, 3, 1, 2).contiguous()

    def _intermediates(
            self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool, norm: bool,
            output_fmt: str) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The selected blocks' patch tokens (the prefix tokens stripped): NCHW maps or NLC."""
        x, feat_size = self._embed(x)
        intermediates = []
        last = max_index if stop_early else len(self.blocks) - 1
        for i in range(last + 1):
            x = self._block(i, x, feat_size)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(self._token_map(y[:, self._num_prefix(i):], feat_size, output_fmt))
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, feat_size = self._embed(x)
        for i in range(len(self.blocks)):
            x = self._block(i, x, feat_size)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == 'token':
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)
