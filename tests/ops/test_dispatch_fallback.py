"""Fallback of ``backend='auto'`` from a backend that fails to compile or launch (visionattn.ops._dispatch)."""
import warnings

import pytest
import torch

from visionattn.ops import _dispatch
from visionattn.ops._dispatch import (
    BackendFallbackWarning,
    broken_backends,
    get_backend,
    is_kernel_error,
    register_backend,
    reset_broken_backends,
)

OP = 'test_fallback_op'


class CompilationError(Exception):
    """Stands for triton.compiler.errors.CompilationError (same module path, so no triton import is needed)."""


CompilationError.__module__ = 'triton.compiler.errors'


class OutOfResources(Exception):
    """Stands for triton.runtime.errors.OutOfResources."""


OutOfResources.__module__ = 'triton.runtime.errors'


def _good(x, scale=1.0):
    return x * scale


@pytest.fixture
def op(monkeypatch):
    """A fresh op with a fake kernel backend on top of a good one; counts the calls of each."""
    monkeypatch.delenv('VISIONATTN_STRICT', raising=False)
    reset_broken_backends()
    calls = {'kernel': 0, 'good': 0}
    state = {'error': CompilationError('at 3:4: unsupported ptx instruction')}

    def kernel(x, scale=1.0):
        calls['kernel'] += 1
        raise state['error']

    def good(x, scale=1.0):
        calls['good'] += 1
        return _good(x, scale)

    register_backend(OP, 'triton', kernel, priority=20)
    register_backend(OP, 'blocked', good, priority=10)
    yield calls, state
    _dispatch._REGISTRY.pop(OP, None)
    reset_broken_backends()


def test_is_kernel_error():
    assert is_kernel_error(CompilationError('x'))
    assert is_kernel_error(OutOfResources('out of resource: shared memory, Required: 114696, Hardware limit: 101376'))
    assert is_kernel_error(RuntimeError('CUDA error: no kernel image is available for execution on the device'))
    assert is_kernel_error(RuntimeError('Triton Error [CUDA]: invalid argument'))
    assert not is_kernel_error(ValueError('bad shape'))
    assert not is_kernel_error(RuntimeError('mat1 and mat2 shapes cannot be multiplied'))
    assert not is_kernel_error(torch.OutOfMemoryError('CUDA out of memory'))


@pytest.mark.parametrize('error', [CompilationError('at 3:4: bad'), OutOfResources('out of resource: shared memory')])
def test_fallback_warns_once(op, error):
    calls, state = op
    state['error'] = error
    x = torch.randn(3, 4)
    with pytest.warns(BackendFallbackWarning) as rec:
        out = get_backend(OP, x=x, scale=2.0)(x, scale=2.0)
    torch.testing.assert_close(out, x * 2)
    assert calls == {'kernel': 1, 'good': 1}
    msg = str(rec[0].message)
    assert "'triton'" in msg and '[3, 4]' in msg and 'float32' in msg and type(error).__name__ in msg
    assert "'blocked'" in msg
    assert len(broken_backends()) == 1
    # second call of the same configuration (another size): straight to the next backend, no new warning
    x2 = torch.randn(5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        out = get_backend(OP, x=x2, scale=2.0)(x2, scale=2.0)
    torch.testing.assert_close(out, x2 * 2)
    assert calls == {'kernel': 1, 'good': 2}
    # another configuration (dtype) is tried again, and warns again
    x3 = x.double()
    with pytest.warns(BackendFallbackWarning):
        get_backend(OP, x=x3)(x3)
    assert calls == {'kernel': 2, 'good': 3}


def test_strict_raises(op, monkeypatch):
    calls, _ = op
    monkeypatch.setenv('VISIONATTN_STRICT', '1')
    x = torch.randn(2, 2)
    with pytest.raises(CompilationError):
        get_backend(OP, x=x)(x)
    assert calls == {'kernel': 1, 'good': 0} and not broken_backends()


def test_explicit_backend_raises(op):
    calls, _ = op
    x = torch.randn(2, 2)
    with pytest.raises(CompilationError):
        get_backend(OP, 'triton', x=x)(x)
    with pytest.raises(CompilationError), _dispatch.force_backend('triton'):
        get_backend(OP, x=x)(x)
    assert not broken_backends()


@pytest.mark.parametrize('error', [ValueError('bad argument'), RuntimeError('shapes cannot be multiplied')])
def test_other_errors_propagate(op, error):
    calls, state = op
    state['error'] = error
    x = torch.randn(2, 2)
    with pytest.raises(type(error)):
        get_backend(OP, x=x)(x)
    assert calls['good'] == 0 and not broken_backends()


def test_backward_probe_falls_back(monkeypatch):
    """A kernel whose backward fails to launch (the fp32 block-sparse backward on sm_86) falls back in the forward."""
    monkeypatch.delenv('VISIONATTN_STRICT', raising=False)
    reset_broken_backends()
    calls = []

    class BadBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            calls.append('bwd')
            raise OutOfResources('out of resource: shared memory, Required: 114696, Hardware limit: 101376')

    register_backend(OP, 'triton', lambda x: BadBackward.apply(x), priority=20)
    register_backend(OP, 'blocked', lambda x: x * 2, priority=10)
    try:
        x = torch.randn(4, 3, requires_grad=True)
        with pytest.warns(BackendFallbackWarning, match='OutOfResources'):
            y = get_backend(OP, x=x)(x)
        y.sum().backward()
        torch.testing.assert_close(x.grad, torch.full_like(x, 2.))
        assert calls == ['bwd']
        # without gradients the probe does not run, and the kernel is not broken for that configuration
        with torch.no_grad():
            get_backend(OP, x=x)(x)
    finally:
        _dispatch._REGISTRY.pop(OP, None)
        reset_broken_backends()


def test_probe_runs_once_per_configuration(monkeypatch):
    monkeypatch.delenv('VISIONATTN_STRICT', raising=False)
    reset_broken_backends()
    count = []

    class Counted(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 3

        @staticmethod
        def backward(ctx, g):
            count.append(1)
            return g * 3

    register_backend(OP, 'triton', lambda x: Counted.apply(x), priority=20)
    register_backend(OP, 'blocked', lambda x: x * 3, priority=10)
    try:
        for _ in range(3):
            x = torch.randn(2, 5, requires_grad=True)
            get_backend(OP, x=x)(x).sum().backward()
            torch.testing.assert_close(x.grad, torch.full_like(x, 3.))
        assert len(count) == 4  # one probe + three real backwards
    finally:
        _dispatch._REGISTRY.pop(OP, None)
        reset_broken_backends()


def test_real_op_fallback_and_compile(monkeypatch):
    """na2d on CPU with a failing top backend: falls back to blocked; under torch.compile(fullgraph=True) the dispatch
    traces (no try in the graph) and skips the backend found broken."""
    from visionattn.ops import na2d
    monkeypatch.delenv('VISIONATTN_STRICT', raising=False)
    reset_broken_backends()

    def broken(*args, **kwargs):
        raise CompilationError('injected')

    register_backend('gna', 'triton_fake', broken, priority=100, kernel=True)
    try:
        q = torch.randn(1, 6, 7, 2, 8)
        with pytest.warns(BackendFallbackWarning, match='triton_fake'):
            out = na2d(q, q, q, 3)
        ref = na2d(q, q, q, 3, backend='reference')
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch._dynamo.reset()
        fn = torch.compile(lambda t: na2d(t, t, t, 3), fullgraph=True, backend='eager')
        torch.testing.assert_close(fn(q), ref, atol=1e-5, rtol=1e-5)
    finally:
        _dispatch._REGISTRY['gna'].pop('triton_fake', None)
        reset_broken_backends()
        torch._dynamo.reset()
