"""The GPU a Triton launch targets, as far as tile sizes care: its per-block shared memory."""
from typing import Dict, Optional

__all__ = ['SMEM_LIMIT', 'current_arch', 'shared_memory_limit']

# Maximum shared memory per block with opt-in (cudaDevAttrMaxSharedMemoryPerBlockOptin), bytes, from the CUDA C++
# Programming Guide's table of technical specifications per compute capability: 163 KB on 8.0/8.7, 99 KB on
# 8.6/8.9/12.x, 227 KB on 9.0/10.x, 64 KB on 7.5.
SMEM_LIMIT: Dict[int, int] = {
    75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 103: 232448, 120: 101376,
}
_SMALLEST_SUPPORTED = 101376  # sm_86 / sm_89 / sm_120: what an unknown target (or the interpreter) gets


def current_arch() -> Optional[int]:
    """Compute capability (e.g. 86) of the target Triton compiles for now, or None (interpreter, no driver)."""
    try:
        from triton.runtime import driver
        target = driver.active.get_current_target()
    except Exception:  # noqa: BLE001 - no active driver: TRITON_INTERPRET=1 on a machine without a GPU
        return None
    arch = getattr(target, 'arch', None)
    return arch if isinstance(arch, int) and getattr(target, 'backend', None) == 'cuda' else None


_DEVICE_LIMIT: Dict[object, int] = {}


def _device_limit() -> Optional[int]:
    """What the current CUDA device itself reports (None without one, e.g. under the compile-only driver)."""
    try:
        from triton.runtime import driver
        device = driver.active.get_current_device()
        if device not in _DEVICE_LIMIT:
            _DEVICE_LIMIT[device] = int(driver.active.utils.get_device_properties(device)['max_shared_mem'])
        return _DEVICE_LIMIT[device]
    except Exception:  # noqa: BLE001 - no device behind the driver
        return None


def shared_memory_limit(arch: Optional[int] = None) -> int:
    """Per-block opt-in shared memory, bytes: of compute capability ``arch`` from the table, or by default of the
    current device (as it reports it, else the table entry of the current target); the smallest limit of the
    supported GPUs when unknown."""
    if arch is None:
        limit = _device_limit()
        if limit:
            return limit
        arch = current_arch()
    return SMEM_LIMIT.get(arch, _SMALLEST_SUPPORTED) if arch is not None else _SMALLEST_SUPPORTED
