"""OpenMMLab adapters. Imported only by configs (``custom_imports=dict(imports=['visionattn.mm'])``) or explicitly;
the core never imports this. Registers ``VisionAttnBackbone`` in mmengine's root MODELS registry and in those of
mmseg, mmdet and mmpretrain that are installed.
"""
import importlib

from mmengine.registry import MODELS

from .backbone import VisionAttnBackbone, load_checkpoint_file

MODELS.register_module(module=VisionAttnBackbone, force=True)
for _pkg in ('mmseg', 'mmdet', 'mmpretrain'):
    try:
        importlib.import_module(f'{_pkg}.registry').MODELS.register_module(module=VisionAttnBackbone, force=True)
    except ImportError:
        pass
