"""Checkpoint-conversion helpers shared by the families' ``checkpoint_filter_fn``."""

__all__ = ['unwrap_state_dict']


def unwrap_state_dict(state_dict: dict) -> dict:
    """The weights of a raw state dict or of a training dict (under ``'model'``, ``'state_dict'`` or
    ``'model_ema'``), without DataParallel's ``module.`` prefix."""
    for key in ('model', 'state_dict', 'model_ema'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    return {k.removeprefix('module.'): v for k, v in state_dict.items()}
