"""Backend registry and choice for the ops.

Every op registers its backends here with a priority and an ``unsupported`` check that returns ``None`` when the
backend can run a call, or a short reason when it cannot. ``backend='auto'`` picks the highest-priority backend that
can run; with ``VISIONATTN_LOG=debug`` the reasons for every skipped backend are logged (NATTEN style).
"""
import contextlib
import contextvars
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

__all__ = [
    'register_backend', 'get_backend', 'list_backends', 'BackendUnavailable', 'force_backend', 'opaque_ops',
    'use_opaque_ops', 'counting_ops', 'triton_unsupported']

_logger = logging.getLogger('visionattn.ops')
if os.environ.get('VISIONATTN_LOG', '').lower() == 'debug':
    _logger.setLevel(logging.DEBUG)
    if not _logger.handlers:
        _logger.addHandler(logging.StreamHandler())
# the debug logging would break torch.compile(fullgraph=True) graphs: let dynamo skip it
try:
    import torch._dynamo
    torch._dynamo.config.ignore_logger_methods.add(_logger.debug)
except (ImportError, AttributeError):  # older torch without the option
    pass


_OPAQUE = contextvars.ContextVar('visionattn_opaque_ops', default=False)
_FORCED = contextvars.ContextVar('visionattn_forced_backend', default=None)


@contextlib.contextmanager
def force_backend(name: str):
    """Within this context, ops called with ``backend='auto'`` use backend ``name`` where they have one (e.g.
    ``'reference'`` to run a whole model on the oracles); explicit backend arguments are left alone."""
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


@contextlib.contextmanager
def opaque_ops():
    """Within this context the pure-PyTorch backends run as their registered custom ops (one opaque call each, as
    under torch.compile), e.g. so that ``visionattn.ops.flops`` counts an op by its formula, not its tiles."""
    token = _OPAQUE.set(True)
    try:
        yield
    finally:
        _OPAQUE.reset(token)


def counting_ops() -> bool:
    """Whether an ``opaque_ops()`` context is active (FLOP counting): backends that are not custom ops stand aside."""
    return _OPAQUE.get()


def use_opaque_ops() -> bool:
    """Whether a backend should call its custom op instead of the eager implementation."""
    import torch
    return torch.compiler.is_compiling() or _OPAQUE.get()


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this call."""


@dataclass
class _Backend:
    name: str
    fn: Callable
    priority: int
    unsupported: Optional[Callable[..., Optional[str]]]
    priority_fn: Optional[Callable[..., int]] = None

    def priority_for(self, call: Dict[str, Any]) -> int:
        return self.priority if self.priority_fn is None else self.priority_fn(**call)


_REGISTRY: Dict[str, Dict[str, _Backend]] = {}


def register_backend(
        op: str,
        name: str,
        fn: Callable,
        priority: int = 0,
        unsupported: Optional[Callable[..., Optional[str]]] = None,
        priority_fn: Optional[Callable[..., int]] = None,
) -> None:
    """Register ``fn`` as backend ``name`` of ``op``; ``unsupported(**call)`` returns a reason or None.

    ``priority_fn(**call)``, if given, replaces ``priority`` when ``backend='auto'`` chooses for a call (e.g. a
    backend that is the fastest on one device and the slowest on another); ``priority`` is its order without a call.
    """
    _REGISTRY.setdefault(op, {})[name] = _Backend(name, fn, priority, unsupported, priority_fn)


def list_backends(op: str, **call: Any) -> List[str]:
    """Backends of ``op``, best first (for ``call``, when given, with call-dependent priorities)."""
    backends = _REGISTRY.get(op, {}).values()
    if call:
        return [b.name for b in sorted(backends, key=lambda b: -b.priority_for(call))]
    return [b.name for b in sorted(backends, key=lambda b: -b.priority)]


def get_backend(op: str, backend: str = 'auto', **call: Any) -> Callable:
    """Return the implementation of ``op`` to run for ``call`` (the op's arguments, by keyword)."""
    backends = _REGISTRY.get(op)
    if not backends:
        raise KeyError(f'No backends registered for op {op!r}')
    if backend == 'auto' and _FORCED.get() in backends:
        backend = _FORCED.get()
    if backend != 'auto':
        if backend not in backends:
            raise ValueError(f'Unknown backend {backend!r} for {op}; available: {list_backends(op)}')
        b = backends[backend]
        reason = b.unsupported(**call) if b.unsupported is not None else None
        if reason:
            raise BackendUnavailable(f'{op}: backend {backend!r} cannot run this call: {reason}')
        return b.fn
    for name in list_backends(op, **call):
        b = backends[name]
        reason = b.unsupported(**call) if b.unsupported is not None else None
        if reason is None:
            _logger.debug('%s: using backend %r', op, name)
            return b.fn
        _logger.debug('%s: skipped backend %r: %s', op, name, reason)
    raise BackendUnavailable(f'{op}: no backend can run this call')


def triton_unsupported(query, value, max_head_dim: int = 256) -> Optional[str]:
    """The checks every Triton backend shares (device or interpreter, dtype, triton importable, head dim): a reason,
    or None when a Triton kernel can run on these tensors."""
    import torch
    if not (query.is_cuda or os.environ.get('TRITON_INTERPRET', '0') == '1'):
        return 'needs CUDA tensors (or TRITON_INTERPRET=1)'
    if query.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f'dtype {query.dtype} not supported (fp32, fp16, bf16 only)'
    if query.dtype == torch.bfloat16 and not query.is_cuda:
        return 'bf16 is not supported by the Triton interpreter (numpy has no bf16)'
    try:
        import triton  # noqa: F401
    except ImportError:
        return 'triton is not installed'
    if max(query.shape[-1], value.shape[-1]) > max_head_dim:
        return f'head_dim {max(query.shape[-1], value.shape[-1])} > {max_head_dim}'
    return None
