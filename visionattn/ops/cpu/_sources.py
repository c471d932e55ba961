"""Where the C/C++ sources of the CPU kernels are: ``kernels/cpu/`` of a source checkout, or the wheel's copy.

The sources live at the repository root in ``kernels/<device>/`` (one folder per device: ``cpu`` now, ``cuda`` later).
setup.py ships that tree inside the package as ``visionattn/_kernels/`` (package data), so an installed wheel or
sdist install finds them there, and an editable install or a plain checkout on ``PYTHONPATH`` finds them at the
root. ``VISIONATTN_KERNELS_DIR`` overrides both (a folder holding ``cpu/``). ``load_once`` is the build-once step
both kernel libraries (``_ext`` and the package's C library) share.
"""
import os
import threading
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

__all__ = ['source_dir', 'candidates', 'load_once']

_PACKAGE = Path(__file__).resolve().parents[2]  # .../visionattn


def candidates(device: str = 'cpu') -> List[Path]:
    """The folders searched for ``device``'s kernel sources, in order."""
    out = []
    if os.environ.get('VISIONATTN_KERNELS_DIR'):
        out.append(Path(os.environ['VISIONATTN_KERNELS_DIR']) / device)
    out.append(_PACKAGE / '_kernels' / device)  # installed: package data
    if (_PACKAGE.parent / 'setup.py').is_file():  # a source checkout (not some other top-level ``kernels`` package)
        out.append(_PACKAGE.parent / 'kernels' / device)
    return out


def source_dir(device: str = 'cpu') -> Path:
    """The folder that holds ``device``'s kernel sources (``topk.c``, ...).

    Raises:
        FileNotFoundError: naming the folders searched, when none exists (a broken install).
    """
    for path in candidates(device):
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f'no {device} kernel sources: none of {[str(p) for p in candidates(device)]} exists (an install without the '
        f'package data visionattn/_kernels?)')


def load_once(state: dict, lock: threading.Lock, key: str, build: Callable[[], Any], errors: Tuple[type, ...],
              what: str) -> Optional[str]:
    """Fill the empty ``state`` once (thread-safe): ``state[key] = build()``, or ``state['error']``, why not (``build``
    raised one of ``errors``, or ``VISIONATTN_NO_CPU_KERNELS`` is set).

    Returns:
        The build error when this call recorded one (to be logged once), else None.
    """
    if not state:
        with lock:
            if not state:
                if os.environ.get('VISIONATTN_NO_CPU_KERNELS', '0') not in ('', '0'):
                    state['error'] = 'disabled by VISIONATTN_NO_CPU_KERNELS'
                else:
                    try:
                        state[key] = build()
                    except errors as e:
                        state['error'] = f'{what} unavailable: {e}'
                        return state['error']
    return None
