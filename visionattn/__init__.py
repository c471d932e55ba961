"""visionattn: efficient vision attention backbones, timm-registered, with fused kernels and OpenMMLab adapters.

``import visionattn`` registers every visionattn model in timm's registry, so ``timm.create_model('<name>')`` works;
``visionattn.list_models()`` lists ours only.
"""
from . import layers, models, ops
from .models import list_models
from .version import __version__
