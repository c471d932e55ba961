"""The argument normaliser of the windowed ops: per-axis ``kernel_size`` / ``stride`` / ``dilation`` / ``is_causal``."""
import numbers
from typing import Sequence, Tuple, Union

__all__ = ['per_axis', 'gna_axes']

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]


def per_axis(value, n: int, name: str, kind: type = int) -> tuple:
    """``value`` (one value, or a list/tuple with one per spatial axis) as an ``n``-tuple of ``kind`` (int or bool).

    Raises:
        ValueError: naming the argument, when the length is not ``n`` or an entry is not an int (bool entries are
            refused for int arguments) or, for ``kind=bool``, not a bool or int.
    """
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f'{name} has {len(value)} entries: it must be a single value or have {n} entries (one per spatial '
                f'axis), got {value}')
        out = tuple(value)
    else:
        out = (value,) * n
    for v in out:
        if kind is bool:
            if not isinstance(v, (bool, numbers.Integral)):
                raise ValueError(f'{name} entries must be bool, got {value}')
        elif isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f'{name} entries must be int, got {value}')
    return tuple(kind(v) for v in out)


def gna_axes(
        n: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...], Tuple[bool, ...]]:
    """``(kernel_size, stride, dilation, is_causal)`` as ``n``-tuples (see ``per_axis``)."""
    return (per_axis(kernel_size, n, 'kernel_size'), per_axis(stride, n, 'stride'), per_axis(dilation, n, 'dilation'),
            per_axis(is_causal, n, 'is_causal', kind=bool))
