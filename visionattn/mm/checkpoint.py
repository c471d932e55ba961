"""Safe loading of the checkpoints mmengine writes, under torch >= 2.6's ``weights_only`` default.

mmengine 0.10.7 reads checkpoints with ``torch.load(path)``. Since torch 2.6 that means ``weights_only=True``, which
refuses the few non-tensor objects mmengine itself stores (its ``HistoryBuffer`` of logged scalars, numpy arrays and
scalars in the message hub), so ``--resume``, ``load_from`` and ``tools/test.py`` fail on mmengine's own files. The
usual workaround, ``weights_only=False``, lets a checkpoint run arbitrary code when unpickled. Instead, these exact
data types are added to torch's allow-list: everything else (a class, a function, ``os.system``) is still refused.
"""
import pickle
from typing import List

import numpy as np
import torch

__all__ = ['allow_mmengine_checkpoints', 'mmengine_safe_globals']


def _history_buffer_getattr(obj, name: str):
    """``getattr`` as mmengine's pickles use it: the statistics methods of ``HistoryBuffer`` and nothing else."""
    from mmengine.logging.history_buffer import HistoryBuffer

    names = {'min', 'max', 'current', 'mean', *HistoryBuffer._statistics_methods}  # the table fills on first use
    if (obj is HistoryBuffer or isinstance(obj, HistoryBuffer)) and name in names:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint')


def mmengine_safe_globals() -> List[object]:
    """The non-tensor types mmengine writes into checkpoints (plain data, no code runs when they are rebuilt)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = {type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.float16, np.float32, np.float64)}
    # HistoryBuffer pickles its statistics table as getattr(HistoryBuffer, 'min') etc.: a getattr restricted to that
    return [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr'), _reconstruct, scalar, np.ndarray, np.dtype,
            *sorted(dtypes, key=str)]


def allow_mmengine_checkpoints() -> None:
    """Add mmengine's checkpoint data types to torch's ``weights_only`` allow-list (idempotent)."""
    torch.serialization.add_safe_globals(mmengine_safe_globals())
