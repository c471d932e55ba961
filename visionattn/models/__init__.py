"""timm-registered backbones, one module per family (unique module names so timm never merges the groups)."""
from ._registry import list_models, model_modules
from .agent import *
from .convit_va import *
from .evit import *
from .nat import *
