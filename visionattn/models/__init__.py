"""timm-registered backbones, one module per family (unique module names so timm never merges the groups)."""
from ._registry import list_models, model_modules
from .agent import *
from .biformer import *
from .convit_va import *
from .evit import *
from .litv2 import *
from .nat import *
from .ravlt import *
from .sparsifiner import *
from .transnext import *
