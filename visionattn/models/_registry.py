"""The visionattn part of timm's model registry."""
import pkgutil
from typing import List, Union

import timm

__all__ = ['list_models', 'model_modules']


def model_modules() -> List[str]:
    """Names of the family modules in ``visionattn.models`` (timm groups models by module name)."""
    from visionattn import models
    return sorted(m.name for m in pkgutil.iter_modules(models.__path__) if not m.name.startswith('_'))


def list_models(filter: Union[str, List[str]] = '', pretrained: bool = False, **kwargs) -> List[str]:
    """List visionattn models only (timm's ``list_models`` over our family modules)."""
    return timm.list_models(filter, module=model_modules(), pretrained=pretrained, **kwargs)
