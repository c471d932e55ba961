"""Backend registry and choice for the ops.

Every op registers its backends here with a priority and an ``unsupported`` check that returns ``None`` when the
backend can run a call, or a short reason when it cannot. ``backend='auto'`` picks the highest-priority backend that
can run; with ``VISIONATTN_LOG=debug`` the reasons for every skipped backend are logged (NATTEN style).

Fallback: a kernel backend (``register_backend(kernel=True)``; by default those named ``triton``, ``flex``,
``natten``, ``cuda``; pure-PyTorch backends are returned as they are) chosen by ``auto`` that fails to compile or
launch (a Triton ``CompilationError`` or ``OutOfResources``, any other exception from the ``triton`` package, a CUDA
driver/runtime error, an inductor or FlexAttention lowering error; see ``is_kernel_error``) is skipped with one
``BackendFallbackWarning`` naming the backend, the call's shapes and dtypes and the error; the (op, backend,
configuration) is remembered as broken for the process, so later calls of that configuration go straight to the next
backend without a new warning. Other exceptions (``ValueError`` from argument checks, ``torch.OutOfMemoryError``,
assertion errors, bugs) propagate unchanged. ``VISIONATTN_STRICT=1`` raises instead of falling back; an explicit
``backend=`` (or ``force_backend``) always raises.

The configuration of a call is its op, backend, device, the dtype, rank and last (head) dim of every tensor argument
and the value of every other argument (see ``config_key``); spatial sizes are left out, so one failure marks every
size of that configuration broken (a kernel's compile and resources depend on its constants, not on the sizes).

Autograd: a backward kernel fails only when ``.backward()`` runs, where the op can no longer choose. So the first
call of each configuration that needs gradients runs a probe backward (``torch.autograd.grad`` of the op's output
w.r.t. its inputs, zero cotangent, graph retained) for the backends that compile kernels (``kernel=True``: by default
``triton``, ``flex``, ``natten``, ``cuda``); a kernel error there falls back like a forward error. It costs one
extra backward of that op per configuration and process. A backward that still fails later (e.g. a CUDA error that
only some sizes hit) raises from ``.backward()``, and is not remembered.

Under ``torch.compile`` the chosen backend is returned unwrapped (no Python ``try`` enters the graph; a backend
found broken eagerly for any configuration of the op is skipped while tracing); a kernel error inside a compiled
graph raises.
"""
import contextlib
import contextvars
import functools
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

__all__ = [
    'register_backend', 'get_backend', 'list_backends', 'BackendUnavailable', 'force_backend', 'opaque_ops',
    'use_opaque_ops', 'counting_ops', 'triton_unsupported', 'BackendFallbackWarning', 'is_kernel_error', 'config_key',
    'broken_backends', 'reset_broken_backends', 'is_exporting']

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


def is_exporting() -> bool:
    """``torch.compiler.is_exporting()``, False under TorchScript (which cannot compile it)."""
    if not torch.jit.is_scripting():
        return torch.compiler.is_exporting()
    return False


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this call."""


class BackendFallbackWarning(RuntimeWarning):
    """A backend chosen by ``auto`` failed to compile or launch; the next backend ran instead."""


_KERNEL_BACKENDS = frozenset({'triton', 'flex', 'natten', 'cuda'})
_CUDA_ERROR_MARKERS = (
    'CUDA error', 'CUDA driver error', 'CUDA kernel errors', 'cudaError', 'CUDA_ERROR', 'no kernel image is available',
    'Triton Error', 'CUBLAS_STATUS', 'cuDNN error')


def is_kernel_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a compile or launch failure that ``auto`` falls back from: any exception defined in the
    ``triton`` package (``CompilationError``, ``OutOfResources``, ``PTXASError``, ...), torch's inductor / dynamo
    backend-compiler errors (FlexAttention lowering), ``torch.AcceleratorError``, or a ``RuntimeError`` carrying a
    CUDA driver/runtime error message. ``torch.OutOfMemoryError`` is not one (a smaller backend would not fit either).
    Matched by class module and name, so triton need not be importable."""
    import torch
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    for cls in type(exc).__mro__:
        mod = cls.__module__ or ''
        if mod == 'triton' or mod.startswith('triton.'):
            return True
        if mod.startswith('torch._inductor') and cls.__name__ not in ('Exception', 'RuntimeError'):
            return True
        if cls.__name__ in ('BackendCompilerFailed', 'InductorError', 'LoweringException', 'AcceleratorError'):
            return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _CUDA_ERROR_MARKERS)


def _describe(v: Any) -> Any:
    import torch
    if isinstance(v, torch.Tensor):
        return ('tensor', v.dtype, v.dim(), v.shape[-1] if v.dim() else None)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list)):
        return tuple(_describe(x) for x in v)
    return type(v).__name__


def config_key(op: str, backend: str, args: tuple, kwargs: Dict[str, Any]) -> tuple:
    """The configuration of a call as the fallback remembers it (see the module docstring)."""
    import torch
    dev = next((str(v.device) for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor)), None)
    return (op, backend, dev, tuple(_describe(a) for a in args),
            tuple(sorted((k, _describe(v)) for k, v in kwargs.items())))


def _shapes(args: tuple, kwargs: Dict[str, Any]) -> str:
    import torch
    items = [(str(i), a) for i, a in enumerate(args)] + list(kwargs.items())
    return ', '.join(f'{k}={list(v.shape)} {str(v.dtype).replace("torch.", "")}' for k, v in items
                     if isinstance(v, torch.Tensor))


_BROKEN: Dict[tuple, str] = {}  # config key -> error summary
_VERIFIED: set = set()  # config keys whose backward probe passed


def broken_backends() -> Dict[tuple, str]:
    """The (op, backend, configuration) keys found broken in this process, with their errors."""
    return dict(_BROKEN)


def reset_broken_backends() -> None:
    """Forget every broken configuration and backward probe (tests, or after fixing the environment)."""
    _BROKEN.clear()
    _VERIFIED.clear()


def _strict() -> bool:
    return os.environ.get('VISIONATTN_STRICT', '0').lower() not in ('', '0', 'false', 'no')


@dataclass
class _Backend:
    name: str
    fn: Callable
    priority: int
    unsupported: Optional[Callable[..., Optional[str]]]
    priority_fn: Optional[Callable[..., int]] = None
    kernel: bool = False

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
        kernel: Optional[bool] = None,
) -> None:
    """Register ``fn`` as backend ``name`` of ``op``; ``unsupported(**call)`` returns a reason or None.

    ``priority_fn(**call)``, if given, replaces ``priority`` when ``backend='auto'`` chooses for a call (e.g. a
    backend that is the fastest on one device and the slowest on another); ``priority`` is its order without a call.
    ``kernel``: the backend compiles or launches device kernels: ``auto`` falls back from its compile/launch errors
    and probes its first backward per configuration (see the module docstring); default: ``name`` is one of triton,
    flex, natten, cuda.
    """
    kernel = name in _KERNEL_BACKENDS if kernel is None else bool(kernel)
    _REGISTRY.setdefault(op, {})[name] = _Backend(name, fn, priority, unsupported, priority_fn, kernel)


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
    order = list_backends(op, **call)
    compiling = False
    try:
        import torch
        compiling = torch.compiler.is_compiling()
    except (ImportError, AttributeError):
        pass
    for i, name in enumerate(order):
        b = backends[name]
        reason = b.unsupported(**call) if b.unsupported is not None else None
        if reason is not None:
            _logger.debug('%s: skipped backend %r: %s', op, name, reason)
            continue
        if compiling and any(k[:2] == (op, name) for k in _BROKEN):
            # no Python try in a traced graph: skip a backend found broken eagerly (any configuration)
            _logger.debug('%s: skipped backend %r: found broken eagerly', op, name)
            continue
        _logger.debug('%s: using backend %r', op, name)
        if compiling or not b.kernel or i == len(order) - 1:
            return b.fn
        return _with_fallback(op, b, [backends[n] for n in order[i + 1:]], call)
    raise BackendUnavailable(f'{op}: no backend can run this call')


def _needs_probe(b: _Backend, key: tuple, out: Any, args: tuple, kwargs: Dict[str, Any]) -> bool:
    import torch
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    if not b.kernel or key in _VERIFIED or not torch.is_grad_enabled() or counting_ops():
        return False
    if not isinstance(out, torch.Tensor) or not out.requires_grad or _get_current_dispatch_mode() is not None:
        return False
    return out.device.type != 'meta'


def _probe_backward(out, args: tuple, kwargs: Dict[str, Any]) -> None:
    """Run the op's backward once (zero cotangent, graph kept for the real backward)."""
    import torch
    inputs = [v for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor) and v.requires_grad]
    if inputs:
        torch.autograd.grad(out, inputs, torch.zeros_like(out), retain_graph=True, allow_unused=True)


def _with_fallback(op: str, first: _Backend, rest: List[_Backend], call: Dict[str, Any]) -> Callable:
    """``first`` wrapped so that a kernel error falls back to the next of ``rest`` that can run ``call`` (checked
    lazily, only on a failure; see the module docstring)."""

    def candidates():
        yield first
        for b in rest:
            reason = b.unsupported(**call) if b.unsupported is not None else None
            if reason is None:
                yield b
            else:
                _logger.debug('%s: fallback skipped backend %r: %s', op, b.name, reason)

    @functools.wraps(first.fn)
    def call_with_fallback(*args, **kwargs):
        error: Optional[BaseException] = None
        failed: Optional[str] = None
        for b in candidates():
            key = config_key(op, b.name, args, kwargs)
            if key in _BROKEN:
                continue
            if error is not None:
                warnings.warn(
                    f'visionattn: {op} backend {failed!r} failed to compile or launch for ({_shapes(args, kwargs)}) '
                    f'with {_BROKEN[config_key(op, failed, args, kwargs)]}; using {b.name!r} instead for this '
                    'configuration from now on (VISIONATTN_STRICT=1 raises instead)', BackendFallbackWarning,
                    stacklevel=3)
                error = None
            try:
                out = b.fn(*args, **kwargs)
                if _needs_probe(b, key, out, args, kwargs):
                    _probe_backward(out, args, kwargs)
                    _VERIFIED.add(key)
                return out
            except Exception as e:
                if _strict() or not is_kernel_error(e):
                    raise
                _BROKEN[key] = f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
                error, failed = e, b.name
        if error is not None:
            raise error
        raise BackendUnavailable(f'{op}: every backend that can run this call failed to compile or launch: '
                                 f'{ {k[1]: v for k, v in _BROKEN.items() if k[0] == op} }')

    return call_with_fallback


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
