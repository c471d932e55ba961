"""The argument normaliser of the windowed ops (per-axis ``kernel_size`` / ``stride`` / ``dilation`` /
``is_causal``) and the checks that the block-sparse op and its backends share (query/key/value shapes, index range)."""
import numbers
from typing import Sequence, Tuple, Union

from torch import Tensor

__all__ = ['per_axis', 'gna_axes', 'block_sparse_shapes', 'check_index_range']

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


def block_sparse_shapes(query: Tensor, key: Tensor, value: Tensor, name: str) -> Tuple[int, ...]:
    """``(B, Nq, Tq, heads, D, Nk, Tk, Dv)`` of block-sparse query ``[B, Nq, Tq, heads, D]``, key
    ``[B, Nk, Tk, heads, D]`` and value ``[B, Nk, Tk, heads, Dv]``.

    Raises:
        ValueError: naming ``name`` and the shapes, when a rank or a shared size differs.
    """
    if query.ndim != 5 or key.ndim != 5 or value.ndim != 5:
        raise ValueError(
            f'{name} expects query/key/value of shape [B, n_blocks, block_tokens, heads, head_dim], '
            f'got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}')
    B, Nq, Tq, H, D = query.shape
    Bk, Nk, Tk, Hk, Dk = key.shape
    if (Bk, Hk, Dk) != (B, H, D) or value.shape[:4] != key.shape[:4]:
        raise ValueError(
            f'{name}: key must be [B={B}, Nk, Tk, heads={H}, head_dim={D}] and value [B, Nk, Tk, heads, Dv] with the '
            f'same Nk, Tk; got query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}')
    return B, Nq, Tq, H, D, Nk, Tk, value.shape[-1]


def check_index_range(index: Tensor, n: int, name: str, what: str = 'block_index', bound: str = 'Nk') -> None:
    """Raises ValueError (naming ``name``, ``what`` and the offending min/max) unless ``0 <= index < n``."""
    if not index.numel():
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= n:
        raise ValueError(f'{name}: {what} values must lie in [0, {bound}={n}), got min {lo}, max {hi}')
