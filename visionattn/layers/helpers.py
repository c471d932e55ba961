"""Small helpers shared by the model families."""
from typing import List

import torch
from timm.layers import register_notrace_function

__all__ = ['check_image_input', 'drop_path_rates']


@register_notrace_function  # reason: raises on shape values, which FX cannot trace
def check_image_input(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Check that ``x`` is an image batch ``[B, in_chans, H, W]``; raise a ValueError naming the problem if not."""
    if x.ndim != 4:
        raise ValueError(
            f'Expected an image batch of shape [B, {in_chans}, H, W], got a {x.ndim}-D tensor {list(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'Expected {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)}); '
            f'create the model with in_chans={x.shape[1]} to change it')
    return x


def drop_path_rates(drop_path_rate: float, depth: int) -> List[float]:
    """Linearly increasing stochastic depth rates over ``depth`` blocks (the DeiT/timm rule)."""
    return [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.0] * depth
