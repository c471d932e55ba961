"""Small C kernels for the CPU (``kernels/cpu/topk.c``), compiled on first use with the system C compiler and called
via ctypes.

The sources are found by ``_sources.source_dir()`` (the checkout's ``kernels/cpu/`` or the wheel's package data).
One module per op family uses the library: ``topk.py`` (top-k attention forward and ``topk_indices``).

No torch headers and no Python extension module: the library is plain C99 with OpenMP, or pthreads where the
compiler has no OpenMP (a compile takes about a second), built with ``-O3 -march=native`` into ``$VISIONATTN_CACHE``
(default ``~/.cache/visionattn``) ``/cpu_kernels/<hash>/`` once per source, compiler and CPU, and loaded with
``ctypes`` (which releases the GIL during the call) after torch, so that its OpenMP calls bind to the libgomp torch
loaded and share its thread pool. Everything that uses it has a pure-PyTorch fallback: without a C compiler (``$CC``,
else ``cc``/``gcc``/``clang``) or with ``VISIONATTN_NO_CPU_KERNELS=1`` the backends that need it report why and are
skipped.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

from ._sources import load_once, source_dir

__all__ = ['load', 'unavailable_reason', 'num_threads']

_SOURCE: Optional[Path] = None  # the C source; None: ``source_dir() / 'topk.c'``
_FLAGS = ['-O3', '-march=native', '-fno-math-errno', '-fno-trapping-math', '-fPIC', '-shared', '-pthread', '-std=gnu99']
# OpenMP first (the kernels then share torch's libgomp thread pool, see topk.c's run_split), else pthreads
_THREADING = (['-fopenmp'], ['-fopenmp-simd'])
_LOCK = threading.Lock()
_STATE: dict = {}  # 'lib': the loaded library, or 'error': why there is none

_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    'va_topk_attn_fwd_f32': [_P] * 6 + [_I] * 8 + [_P] * 3 + [ctypes.c_double, ctypes.c_int],
    'va_topk_attn_fwd_f64': [_P] * 6 + [_I] * 8 + [_P] * 3 + [ctypes.c_double, ctypes.c_int],
    'va_topk_select_f32': [_P, _I, _I, _I, _I, _P, _P, ctypes.c_int],
}


def _compiler() -> Optional[str]:
    for cc in (os.environ.get('CC'), 'cc', 'gcc', 'clang'):
        if cc and shutil.which(cc):
            return cc
    return None


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        with open('/proc/cpuinfo') as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(('model name', 'flags', 'Features'))]
        return '\n'.join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _source() -> Path:
    return _SOURCE if _SOURCE is not None else source_dir() / 'topk.c'


def _build() -> ctypes.CDLL:
    source = _source()
    if not source.is_file():
        raise FileNotFoundError(f'C source {source} not found')
    cc = _compiler()
    if cc is None:
        raise RuntimeError('no C compiler found (set CC)')
    version = subprocess.run([cc, '--version'], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256('\n'.join([source.read_text(), cc, *version, *_FLAGS, _cpu_id()]).encode()).hexdigest()[:16]
    root = Path(os.environ.get('VISIONATTN_CACHE', Path.home() / '.cache' / 'visionattn'))
    lib_path = root / 'cpu_kernels' / key / 'libvisionattn_cpu.so'
    if not lib_path.exists():
        lib_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix='.so', dir=lib_path.parent)
        os.close(fd)
        try:
            for threading_flags in _THREADING:
                cmd = [cc, *_FLAGS, *threading_flags, '-o', tmp, str(source), '-lm']
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if not proc.returncode:
                    break
            if proc.returncode:
                raise RuntimeError(f'{cc} failed to compile {source.name}: {proc.stderr.strip()[-2000:]}')
            os.replace(tmp, lib_path)  # atomic: concurrent builds (e.g. DDP ranks) each write their own temp file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    import torch  # noqa: F401  (loaded first: its libgomp is the one this library binds to)
    lib = ctypes.CDLL(str(lib_path))
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return lib


def load() -> Optional[ctypes.CDLL]:
    """The compiled library (built on the first call), or None when it cannot be had (see ``unavailable_reason``)."""
    load_once(_STATE, _LOCK, 'lib', _build, (OSError, RuntimeError, subprocess.SubprocessError), 'CPU kernels')
    return _STATE.get('lib')


def unavailable_reason() -> Optional[str]:
    """None when the C kernels can run, else why not."""
    return None if load() is not None else _STATE['error']


def num_threads() -> int:
    """Threads the kernels split their rows over: torch's intra-op thread count."""
    import torch
    return max(1, torch.get_num_threads())
