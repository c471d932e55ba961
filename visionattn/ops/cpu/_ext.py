"""The fused C++ CPU kernels (``kernels/cpu/*.cpp``): one torch C++ extension, JIT-built on first use.

The sources register their ops with ``TORCH_LIBRARY_FRAGMENT(visionattn_cpu, ...)`` (``torch.ops.visionattn_cpu.*``),
are compiled by ``torch.utils.cpp_extension.load`` with ``-O3 -march=native -fopenmp`` (without ``-march`` when the
compiler refuses it) and cached in torch's extension folder (``$TORCH_EXTENSIONS_DIR``) under a name keyed by the
source folder, the sources' contents and the flags, so that two checkouts or versions never rebuild over each other.
OpenMP makes ``at::parallel_for`` run on torch's own thread pool. Without a C++ compiler, with
``VISIONATTN_NO_CPU_KERNELS=1`` or when the build fails, ``load()`` is False, ``unavailable_reason()`` says why (the
build error is logged once) and the pure-PyTorch backends take over.
"""
import hashlib
import logging
import os
import shutil
import threading
from typing import List, Optional

from ._sources import load_once, source_dir

__all__ = ['load', 'unavailable_reason', 'SOURCES']

SOURCES = ('gna.cpp', 'block_sparse.cpp')
_NAME = 'visionattn_cpu_kernels'
_LOCK = threading.Lock()
_STATE: dict = {}  # 'ok': True, or 'error': why the extension is unavailable
_logger = logging.getLogger('visionattn.ops')


def _flag_sets() -> List[List[str]]:
    base = ['-O3', '-fopenmp', '-fno-math-errno', '-fno-trapping-math']
    return [base + ['-march=native'], base]


def _build_name(src, flags: List[str]) -> str:
    h = hashlib.sha1(f'{src}|{" ".join(flags)}'.encode())
    for path in sorted(src.iterdir()):
        if path.suffix in ('.c', '.cpp', '.h'):
            h.update(path.name.encode() + path.read_bytes())
    return f'{_NAME}_{h.hexdigest()[:12]}'


def _build() -> bool:
    """Build and load the extension; True once its ops are registered."""
    import torch
    from torch.utils import cpp_extension
    cxx = os.environ.get('CXX') or next((c for c in ('c++', 'g++', 'clang++') if shutil.which(c)), None)
    if cxx is None or not shutil.which(cxx):
        raise RuntimeError('no C++ compiler found (set CXX)')
    src = source_dir()
    sources = [str(src / name) for name in SOURCES if (src / name).exists()]
    if not sources:
        raise RuntimeError(f'kernel sources not found in {src}')
    errors = []
    for flags in _flag_sets():
        try:
            cpp_extension.load(
                name=_build_name(src, flags), sources=sources,
                extra_cflags=flags, extra_ldflags=['-fopenmp'], extra_include_paths=[str(src)],
                is_python_module=False, verbose=False)
            break
        except Exception as e:  # compiler error, missing headers, ninja missing...
            lines = [ln for ln in str(e).splitlines() if 'error' in ln.lower()] or str(e).splitlines()
            errors.append(f'{type(e).__name__}: ' + ' / '.join(lines[:3])[:800])
    else:
        raise RuntimeError('building the CPU kernels failed: ' + ' | '.join(errors))
    if not hasattr(torch.ops.visionattn_cpu, 'gna_fwd'):
        raise RuntimeError('the CPU kernel library loaded but registered no ops')
    return True


def load() -> bool:
    """Whether the fused CPU kernels are available (built and loaded on the first call)."""
    if load_once(_STATE, _LOCK, 'ok', _build, (OSError, RuntimeError, ImportError), 'fused CPU kernels'):
        _logger.warning('%s', _STATE['error'])
    return bool(_STATE.get('ok'))


def unavailable_reason() -> Optional[str]:
    """None when the fused CPU kernels can run, else why not."""
    return None if load() else _STATE['error']
