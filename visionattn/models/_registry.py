"""The visionattn part of timm's model registry."""
import pkgutil
import sys
from typing import Callable, Dict, List, Optional, Tuple, Union

import timm
from timm.models import register_model

__all__ = ['list_models', 'model_modules', 'register_variants']


def model_modules() -> List[str]:
    """Names of the family modules in ``visionattn.models`` (timm groups models by module name)."""
    from visionattn import models
    return sorted(m.name for m in pkgutil.iter_modules(models.__path__) if not m.name.startswith('_'))


def list_models(filter: Union[str, List[str]] = '', pretrained: bool = False, **kwargs) -> List[str]:
    """List visionattn models only (timm's ``list_models`` over our family modules)."""
    return timm.list_models(filter, module=model_modules(), pretrained=pretrained, **kwargs)


ModelArgs = Union[dict, Callable[[dict], dict]]


def _entrypoint(name: str, doc: str, create: Callable, model_args: ModelArgs, module: str, returns: Optional[type]):
    def entrypoint(pretrained: bool = False, **kwargs):
        args = model_args(kwargs) if callable(model_args) else model_args
        return create(name, pretrained=pretrained, **dict(args, **kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module
    entrypoint.__doc__ = doc
    if returns is not None:
        entrypoint.__annotations__['return'] = returns
    return entrypoint


def register_variants(
        module: str,
        create: Callable,
        variants: Dict[str, Tuple[str, ModelArgs]],
        returns: Optional[type] = None,
) -> None:
    """Register one timm entrypoint per variant of a family, in table order (smallest first).

    The entrypoint ``name(pretrained=False, **kwargs)`` returns ``create(name, pretrained=pretrained,
    **dict(model_args, **kwargs))`` (explicit kwargs win over the table's), as a family's explicit ``@register_model``
    function would: it is a function of ``module`` (set as its attribute) named ``name``, with the table's docstring
    and ``returns`` as return annotation, so timm files it under the family's module and pretrained tags.

    Args:
        module: The family module's ``__name__`` (its ``default_cfgs`` must be defined already).
        create: The family's ``_create_x(variant, pretrained=False, **kwargs)``.
        variants: ``{name: (docstring, model_args)}``; ``model_args`` is a dict, or a function of the call's kwargs
            that returns one (settings that depend on the pretrained tag).
        returns: The model class (return annotation).
    """
    mod = sys.modules[module]
    for name, (doc, model_args) in variants.items():
        fn = _entrypoint(name, doc, create, model_args, module, returns)
        setattr(mod, name, fn)
        register_model(fn)
