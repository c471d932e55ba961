"""An optimizer-wrapper constructor for detectors and segmentors whose backbone trains at a fraction of the learning
rate of the rest (Mask2Former, DINO recipes)."""
from typing import List, Optional

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor


class BackboneLrMultOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` plus ``paramwise_cfg.backbone_lr_mult``: the learning rate of every
    parameter under ``backbone.`` is multiplied by it, after ``custom_keys`` and the ``bias_decay_mult`` /
    ``norm_decay_mult`` / ``flat_decay_mult`` rules have set each parameter's group.

    The usual ``custom_keys={'backbone': dict(lr_mult=0.1)}`` cannot express "backbone at 0.1x, its biases and norms
    without weight decay": mmengine applies the first (longest) matching custom key and then skips the bias / norm
    rules, so the whole backbone would get weight decay unless every bias and norm is listed by name.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        self.backbone_lr_mult = float(paramwise_cfg.pop('backbone_lr_mult', 1.))
        if self.backbone_lr_mult != 1.:
            paramwise_cfg.setdefault('custom_keys', {})  # a non-empty paramwise_cfg: per-parameter groups
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', is_dcn_module=None) -> None:
        first = len(params)
        super().add_params(params, module, prefix, is_dcn_module)
        if prefix or self.backbone_lr_mult == 1.:  # recursive calls; the top-level one sees every group
            return
        backbone = {id(p) for name, p in module.named_parameters() if name.startswith('backbone.')}
        for group in params[first:]:
            if id(group['params'][0]) in backbone:
                group['lr'] = group.get('lr', self.base_lr) * self.backbone_lr_mult
