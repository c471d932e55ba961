"""One generic OpenMMLab backbone over the timm model API of every visionattn family.

``dict(type='VisionAttnBackbone', arch='nat_tiny', out_indices=(0, 1, 2, 3), ...)`` builds the registered timm model,
prunes what the selected outputs do not need (head, final norm, trailing blocks) and returns a tuple of NCHW maps from
``forward_intermediates``. Pretrained weights (``init_cfg=dict(type='Pretrained', checkpoint=...)``) go through the
family's ``checkpoint_filter_fn``, so official files, visionattn safetensors and whole detector/segmentor checkpoints
(``backbone.`` prefix) all load; missing and unexpected keys are reported, and a checkpoint that matches nothing is an
error.
"""
import sys
from typing import Dict, List, Optional, Sequence, Type

import timm
import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.models import group_parameters

import visionattn  # noqa: F401  (registers the models)
from visionattn.models._convert import unwrap_state_dict
from visionattn.models._hub import download_pretrained, safe_load

__all__ = ['VisionAttnBackbone', 'FAMILY_TYPES', 'family_backbones', 'load_checkpoint_file']

# The config type of each family (``type='NAT', arch='dinat_tiny'``): the generic adapter restricted to the models of
# one family module. Every family module needs an entry (tested), so a new family cannot land without one.
FAMILY_TYPES: Dict[str, str] = {
    'agent': 'AgentAttention',
    'biformer': 'BiFormer',
    'convit_va': 'VAConViT',
    'nat': 'NAT',
    'evit': 'EViT',
    'litv2': 'LITv2',
    'sparsifiner': 'Sparsifiner',
    'ravlt': 'RAVLT',
    'transnext': 'TransNeXt',
}


def load_checkpoint_file(path: str) -> dict:
    """Read a checkpoint safely (``visionattn.models._hub``): safetensors, or torch files with ``weights_only``
    semantics and the official data types allowed; ``http(s)://`` paths are downloaded once into torch hub's cache."""
    if path.startswith(('http://', 'https://')):
        return download_pretrained(path)
    return safe_load(path)


def _unwrap(state_dict: dict, prefix: Optional[str]) -> dict:
    state_dict = unwrap_state_dict(state_dict)
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'  # a whole detector / segmentor checkpoint
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    # our own mm checkpoints nest the timm model under `model.`
    if state_dict and all(k.startswith('model.') for k in state_dict):
        state_dict = {k[len('model.'):]: v for k, v in state_dict.items()}
    return state_dict


class VisionAttnBackbone(BaseModule):
    """A visionattn (timm-registered) model as an mmseg/mmdet/mmpretrain backbone.

    Args:
        arch: Registered model name, e.g. ``'nat_tiny'``, ``'va_convit_small'``.
        out_indices: Indices into the model's ``feature_info`` (stages, or blocks for isotropic models).
        frozen_stages: Freeze the stem (0) and the first ``frozen_stages`` parameter groups of the model's
            ``group_matcher(coarse=True)`` (stages for hierarchical models, blocks for isotropic ones); -1: none.
        norm_eval: Keep BatchNorm layers in eval mode while training.
        with_cp: Gradient checkpointing (the model's ``set_grad_checkpointing``).
        drop_path_rate: Stochastic depth rate.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix=None)``; loaded through the family's
            ``checkpoint_filter_fn``.
        **model_kwargs: Family options passed to the model (e.g. ``dilations='ade20k'``, ``n_win=8``).
    """

    family: Optional[str] = None  # set by the family types: the one module whose models ``arch`` may name

    def __init__(
            self,
            arch: str,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            with_cp: bool = False,
            drop_path_rate: float = 0.,
            init_cfg: Optional[dict] = None,
            **model_kwargs,
    ):
        super().__init__(init_cfg=init_cfg)
        arch = self._resolve_arch(arch)
        model = timm.create_model(arch, pretrained=False, drop_path_rate=drop_path_rate, **model_kwargs)
        info = timm.models.FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
        n = len(model.feature_info)
        if any(not -n <= i < n for i in out_indices):
            raise ValueError(f'out_indices {tuple(out_indices)} out of range for {arch} with {n} feature levels')
        self.out_indices = [i % n for i in out_indices]
        self.channels = [info.channels()[i] for i in self.out_indices]
        self.reductions = [info.reduction()[i] for i in self.out_indices]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        model.set_grad_checkpointing(with_cp)
        # drop what the outputs do not need (head, final norm, trailing blocks); checkpoint keys of those parts are
        # reported as unexpected when loading
        self.out_indices = model.prune_intermediate_layers(self.out_indices, prune_norm=True, prune_head=True)
        self.model = model
        self._checkpoint_filter = getattr(sys.modules[type(model).__module__], 'checkpoint_filter_fn', None)
        self._freeze()

    @classmethod
    def _resolve_arch(cls, arch: str) -> str:
        names = timm.list_models(module=cls.family) if cls.family else visionattn.list_models()
        if arch in names:
            return arch
        # a family type also takes the variant alone: type='BiFormer', arch='small'
        matches = [n for n in names if n.endswith(f'_{arch}')] if cls.family else []
        if len(matches) == 1:
            return matches[0]
        where = f'family {cls.__name__}' if cls.family else 'visionattn'
        hint = f'; candidates: {matches}' if matches else ''
        raise ValueError(f'unknown {where} model {arch!r}{hint}; see visionattn.list_models()')

    def init_weights(self) -> None:
        cfg = self.init_cfg if isinstance(self.init_cfg, dict) else None
        if cfg is None or cfg.get('type') != 'Pretrained':
            if cfg is not None:
                super().init_weights()  # other mmengine initialisers; without one the model keeps timm's init
            self._is_init = True
            return
        path = cfg['checkpoint']
        state_dict = _unwrap(load_checkpoint_file(path), cfg.get('prefix'))
        if self._checkpoint_filter is not None:
            state_dict = self._checkpoint_filter(state_dict, self.model)
        own = self.model.state_dict()
        matched = [k for k in state_dict if k in own]
        if not matched:
            raise ValueError(f'checkpoint {path} matched no parameter of {type(self.model).__name__} '
                             f'(first keys: {list(state_dict)[:5]})')
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        print_log(f'VisionAttnBackbone: loaded {len(matched)} tensors from {path}; missing keys: {missing}; '
                  f'unexpected keys: {unexpected}', logger='current')
        self._is_init = True

    def _freeze(self) -> None:
        self._frozen_modules: List[nn.Module] = []
        if self.frozen_stages < 0:
            return
        groups = group_parameters(self.model, self.model.group_matcher(coarse=True))
        for gid in sorted(groups)[:self.frozen_stages + 1]:
            for name in groups[gid]:
                self.model.get_parameter(name).requires_grad_(False)
        # modules whose parameters are all frozen also stay in eval mode (dropout, drop path, norm statistics)
        for m in self.model.modules():
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                self._frozen_modules.append(m)

    def train(self, mode: bool = True) -> 'VisionAttnBackbone':
        super().train(mode)
        if mode:
            for m in self._frozen_modules:
                m.eval()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple:
        return tuple(self.model.forward_intermediates(
            x, indices=self.out_indices, output_fmt='NCHW', intermediates_only=True))


def family_backbones() -> Dict[str, Type[VisionAttnBackbone]]:
    """One subclass of the generic adapter per family type name (``FAMILY_TYPES``), for the registries."""
    out = {}
    for module, name in FAMILY_TYPES.items():
        doc = (f'The visionattn ``{module}`` models as an OpenMMLab backbone: ``VisionAttnBackbone`` whose ``arch`` is '
               f'one of them, by full name or by its unique suffix.')
        out[name] = type(name, (VisionAttnBackbone,), dict(family=module, __doc__=doc, __module__=__name__))
    return out
