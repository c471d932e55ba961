"""Checkpoint-conversion helpers shared by the families' ``checkpoint_filter_fn`` and the mm adapter.

One home for what every converter needs: unwrapping training dicts, stripping the ``backbone.`` (mmseg/mmdet) and
``module.`` (DataParallel) prefixes, the square-grid check of a saved position embedding, resampling an absolute
position embedding with the family's interpolation, reshaping a linear patch embedding to its conv and remapping the
Swin-style ``layers.i`` stages (downsampler at the end) onto ``stages.i`` (downsampler at the start).
"""
import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from visionattn.ops._dispatch import is_exporting

__all__ = [
    'unwrap_state_dict', 'strip_prefix', 'square_grid', 'resample_pos_embed', 'reshape_patch_embed',
    'remap_stage_key',
]


def unwrap_state_dict(state_dict: dict) -> dict:
    """The weights of a raw state dict or of a training dict (under ``'model'``, ``'state_dict'`` or
    ``'model_ema'``), without DataParallel's ``module.`` prefix."""
    for key in ('model', 'state_dict', 'model_ema'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    return {k.removeprefix('module.'): v for k, v in state_dict.items()}


def strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str = 'backbone.') -> Dict[str, torch.Tensor]:
    """Only the keys under ``prefix`` (prefix removed) if any key has it, else the dict unchanged: the backbone of a
    whole mmseg/mmdet detector or segmentor checkpoint."""
    if not any(k.startswith(prefix) for k in state_dict):
        return state_dict
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def square_grid(n: int, key: str = 'pos_embed') -> Tuple[int, int]:
    """The ``(side, side)`` grid of ``n`` saved patch tokens; a ValueError naming ``key`` when ``n`` is not square."""
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f'{key} has {n} patch tokens, not a square grid; cannot resample it')
    return side, side


@register_notrace_function  # reason: the grid sizes decide whether to resample
def resample_pos_embed(
        pos_embed: torch.Tensor,
        feat_size: Tuple[int, int],
        base_size: Tuple[int, int],
        num_prefix_tokens: int = 1,
        interpolation: str = 'bicubic',
) -> torch.Tensor:
    """The ``[1, prefix + H*W, C]`` position embedding of a ``base_size`` grid resampled to ``feat_size``.

    ``align_corners=False``, no antialiasing, in the embedding's own dtype (the official EViT / Agent rules; timm's
    ``resample_abs_pos_embed`` antialiases and computes in float32, so it serves the families that follow timm);
    the identity at the same grid (except while exporting, so that no size is baked in).
    """
    if not is_exporting() and tuple(feat_size) == tuple(base_size):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    C = grid.shape[-1]
    grid = grid.transpose(1, 2).reshape(1, C, base_size[0], base_size[1])
    grid = F.interpolate(grid, size=tuple(feat_size), mode=interpolation, align_corners=False)
    return torch.cat([prefix, grid.reshape(1, C, -1).transpose(1, 2)], dim=1)


def reshape_patch_embed(v: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A linear patch-embedding weight ``[C, in * p * p]`` (official flat layout) reshaped to the conv's ``shape``;
    a conv weight is returned as it is."""
    return v.reshape(shape) if v.ndim < 4 else v


def remap_stage_key(key: str, layers: str = 'layers') -> str:
    """The Swin-style ``layers.i.downsample.*`` key (the downsampler at the end of stage ``i``) as
    ``stages.{i+1}.downsample.*`` and ``layers.i.*`` as ``stages.i.*``; any other key unchanged."""
    parts = key.split('.', 3)
    if parts[0] != layers or len(parts) < 3 or not parts[1].isdigit():
        return key
    i = int(parts[1])
    if parts[2] == 'downsample':
        return '.'.join([f'stages.{i + 1}'] + parts[2:])
    return '.'.join([f'stages.{i}'] + parts[2:])
