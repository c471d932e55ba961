"""Pretrained weights: download (cached, hash-checked, never a poisoned cache) and safe loading of official files.

``timm.create_model(name, pretrained=True)`` on a visionattn model goes through ``build_model``: the weight file of
the model's pretrained_cfg (an official URL) is downloaded into torch hub's cache (``$TORCH_HOME/hub/checkpoints``,
or ``cache_dir=``), read with ``weights_only`` semantics, and handed to timm as a state dict, so timm's own
machinery (the family's ``checkpoint_filter_fn``, ``num_classes`` and ``in_chans`` adaptation) does the rest.

Official training checkpoints hold harmless non-tensor objects besides the weights: ``argparse.Namespace`` (DeiT/
EViT/TransNeXt ``args``), a yacs ``CfgNode`` (Swin-style ``config``: Agent attention, LITv2), numpy scalars.
``OFFICIAL_SAFE_GLOBALS`` allow exactly those, as plain data (yacs need not be installed); anything else that a
pickle would import or call is refused with a message naming it.
"""
import argparse
import hashlib
import os
import pickle
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import urlparse

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, resolve_pretrained_cfg

from visionattn.layers import guard_cpu_bf16_convs

__all__ = ['build_model', 'download_pretrained', 'safe_load', 'allow_official_checkpoints']

_HASH = re.compile(r'-([a-f0-9]{8,64})\.')  # torch hub / timm convention: name-<sha256 prefix>.ext


def _numpy_globals() -> List[Any]:
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = {type(np.dtype(t)) for t in (np.bool_, np.int32, np.int64, np.float32, np.float64)}
    return [_reconstruct, scalar, np.ndarray, np.dtype, *sorted(dtypes, key=str)]


def official_safe_globals() -> List[Any]:
    """Data-only types that official checkpoints contain besides tensors."""
    # a yacs CfgNode is a dict with attributes: read as an OrderedDict (whose items and attributes torch's safe
    # unpickler restores), so yacs need not be installed and nothing of it runs
    return [argparse.Namespace, (OrderedDict, 'yacs.config.CfgNode'), *_numpy_globals()]


def allow_official_checkpoints() -> None:
    """Add ``official_safe_globals`` to torch's ``weights_only`` allow-list (idempotent; data types only)."""
    torch.serialization.add_safe_globals(official_safe_globals())


_UNSAFE_MARKERS = ('Unsupported global', 'Trying to call reduce', 'is not allowed', 'not an allowed global',
                   'Unsupported class')
_GLOBAL_IN_MESSAGE = re.compile(r'GLOBAL ([\w.]+)')


def _python3_name(name: str) -> str:
    """'commands.run' -> 'subprocess.run', 'eval' -> 'builtins.eval': pickle protocol 2 writes Python 2 module names
    (fix_imports) and torch's message drops the 'builtins.' prefix."""
    import _compat_pickle
    module, _, attr = name.rpartition('.')
    if not module:
        return f'builtins.{attr}'
    return f'{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attr}'


def _unsafe_names(path: str, error: BaseException) -> List[str]:
    """The globals a pickle asks for beyond the allow-list, or [] when the failure is not about unsafe content."""
    message = str(error)
    names = [_python3_name(n) for n in _GLOBAL_IN_MESSAGE.findall(message)]  # the one that stopped the load first
    try:
        scanned = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) files, or a file too damaged to scan
        scanned = []
    allowed = {'argparse.Namespace', 'yacs.config.CfgNode', 'collections.OrderedDict'}
    names += [_python3_name(n) for n in scanned if n not in allowed and not n.startswith(('numpy', 'torch'))]
    if not names and any(marker in message for marker in _UNSAFE_MARKERS):
        names = [next(line for line in message.splitlines() if any(m in line for m in _UNSAFE_MARKERS)).strip()]
    return list(dict.fromkeys(names))


def safe_load(path: str) -> Dict[str, Any]:
    """Read a checkpoint without running pickled code: safetensors, or ``torch.load(weights_only=True)`` with the
    official data types allowed. A file that needs anything else is refused with the offending names; a truncated or
    damaged file is reported as corrupt or incomplete (a RuntimeError either way)."""
    if str(path).endswith('.safetensors'):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as e:  # SafetensorError: header or buffer sizes do not match the file
            raise RuntimeError(f'{path}: corrupt or incomplete safetensors file ({e})') from e
    allow_official_checkpoints()
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        names = _unsafe_names(path, e) if isinstance(e, pickle.UnpicklingError) else []
        if not names:
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise RuntimeError(
                f'{path}: corrupt or incomplete checkpoint ({type(e).__name__}: {first}); download or save it again'
            ) from e
        raise RuntimeError(
            f'{path}: refused to load, unpickling it would import or call {", ".join(names)}, which is not plain '
            f'data. visionattn never loads checkpoints with weights_only=False; if you trust the file, convert it '
            f'in a trusted environment (torch.load(..., weights_only=False), save the state dict as safetensors).'
        ) from e


def _cache_dir(cache_dir: Optional[str]) -> str:
    return str(cache_dir) if cache_dir else os.path.join(torch.hub.get_dir(), 'checkpoints')


def download_pretrained(
        url: str,
        cache_dir: Optional[str] = None,
        progress: bool = True,
        filename: Optional[str] = None,
) -> Dict[str, Any]:
    """The checkpoint at ``url``, downloaded once into the cache (as ``filename``, default the URL's last path
    component) and read with ``safe_load``.

    A hash prefix in the file name (``name-<sha256 prefix>.pth``) is checked on download; a download that fails or
    mismatches leaves nothing in the cache, and a cached file that cannot be read is removed, so a retry downloads
    it again.
    """
    cache = _cache_dir(cache_dir)
    os.makedirs(cache, exist_ok=True)
    if filename is None:
        filename = os.path.basename(urlparse(url).path)
        if '.' not in filename:  # e.g. OneDrive's .../root/content: a name per URL, not one shared file
            filename = f'{filename}_{hashlib.sha256(url.encode()).hexdigest()[:12]}.pth'
    path = os.path.join(cache, filename)
    if not os.path.exists(path):
        m = _HASH.search(filename)
        # writes to a temporary file and moves it into place only when complete and matching
        torch.hub.download_url_to_file(url, path, hash_prefix=m.group(1) if m else None, progress=progress)
    try:
        return safe_load(path)
    except Exception as e:
        os.remove(path)
        raise RuntimeError(
            f'pretrained weights from {url} could not be read ({type(e).__name__}: {str(e)[:300]}); the cached file '
            f'{path} was removed, so the next attempt downloads it again') from e


def default_cfg(url: str = '', fields: Optional[dict] = None, **kwargs) -> dict:
    """A pretrained cfg: timm's ImageNet-1k classification defaults, then a family's ``fields``, then ``kwargs``."""
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        **(fields or {}),
        **kwargs,
    }


def build_model(
        model_cls: Callable,
        variant: str,
        pretrained: bool,
        pretrained_filter_fn: Callable,
        default_out_indices: Optional[Union[int, Tuple[int, ...]]] = None,
        **kwargs,
) -> torch.nn.Module:
    """``timm.models.build_model_with_cfg`` with visionattn's download and safe loading of the official weights.

    ``default_out_indices``: the ``features_only`` outputs when ``out_indices`` is not given (timm's getter feature
    wrapper over ``forward_intermediates``).
    """
    if default_out_indices is not None:
        kwargs['feature_cfg'] = dict(out_indices=kwargs.pop('out_indices', default_out_indices), feature_cls='getter')
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
        if cfg.get('url') and not (cfg.get('file') or cfg.get('state_dict') or cfg.get('source') == 'hf-hub'):
            # timm's (url, file name) form names the cache file of URLs without a usable one (BiFormer's OneDrive)
            url, filename = cfg['url'] if isinstance(cfg['url'], (tuple, list)) else (cfg['url'], None)
            state_dict = download_pretrained(url, cache_dir=kwargs.get('cache_dir'), filename=filename)
            kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, state_dict=state_dict)
        elif cfg.get('file'):
            kwargs['pretrained_cfg_overlay'] = dict(
                kwargs.get('pretrained_cfg_overlay') or {}, state_dict=safe_load(cfg['file']))
    model = build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=pretrained_filter_fn, **kwargs)
    return guard_cpu_bf16_convs(model)  # torch's CPU bf16 strided conv is wrong on one-column outputs
