"""OpenMMLab adapters. Imported only by configs (``custom_imports=dict(imports=['visionattn.mm'])``) or explicitly;
the core never imports this. Registers ``VisionAttnBackbone`` and one type per family (``FAMILY_TYPES``, e.g.
``type='NAT'``) in mmengine's root MODELS registry and in those of mmseg, mmdet and mmpretrain that are installed,
registers ``BackboneLrMultOptimWrapperConstructor``, and lets torch's safe
(``weights_only``) loader read the checkpoints mmengine writes.
"""
import importlib

from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from .backbone import FAMILY_TYPES, VisionAttnBackbone, family_backbones, load_checkpoint_file
from .checkpoint import allow_mmengine_checkpoints
from .hooks import KeepRateHook, RNGStateHook, SparsifinerPhaseHook
from .optim import BackboneLrMultOptimWrapperConstructor

_TYPES = dict(VisionAttnBackbone=VisionAttnBackbone, **family_backbones())
_registries = [MODELS]
for _pkg in ('mmseg', 'mmdet', 'mmpretrain'):
    try:
        _registries.append(importlib.import_module(f'{_pkg}.registry').MODELS)
    except ImportError:
        pass
for _registry in _registries:
    for _name, _cls in _TYPES.items():
        _registry.register_module(name=_name, module=_cls, force=True)
HOOKS.register_module(module=KeepRateHook, force=True)
HOOKS.register_module(module=SparsifinerPhaseHook, force=True)
HOOKS.register_module(module=RNGStateHook, force=True)
OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=BackboneLrMultOptimWrapperConstructor, force=True)
try:  # registers SparsifinerClassifier in mmpretrain's MODELS
    from .sparsifiner import SparsifinerClassifier  # noqa: F401
except ImportError:  # mmpretrain not installed
    pass
allow_mmengine_checkpoints()
