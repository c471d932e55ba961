"""One way to register the ops' ``torch.library`` custom ops: the op, its fake (meta) implementation and its autograd.

Every backend that must be one opaque call under ``torch.compile(fullgraph=True)`` (or for FLOP counting, see
``visionattn.ops.flops``) registers through these two helpers:

* ``custom_op``: a forward op whose schema is inferred from ``fn``'s annotations, its fake, and optionally a backward
  op (``backward``, with its own annotated schema and fake) wired in as the op's autograd: the backward op receives
  the gradient of the first output and ``backward_inputs(inputs, output)`` (what the backward needs, tensors saved for
  backward, the rest kept as is) and returns the gradients of the forward inputs named in ``grad_inputs``, in order
  (gradients of inputs that were None are dropped).
* ``recompute_custom_op``: for a differentiable eager function; the op runs it without autograd, and a backward op
  ``<name>_backward`` (schema ``(Tensor grad_out, <the op's arguments>) -> Tensor[]``) recomputes it under
  ``torch.func.vjp`` and returns one gradient per tensor argument (an empty tensor for an absent optional one).

The op names and schemas are part of the API: compiled graphs and exporters key on them
(tests/ops/test_custom_op.py pins them).
"""
import inspect
from typing import Any, Callable, Optional, Sequence

import torch

__all__ = ['custom_op', 'recompute_custom_op']


def _infer_schema(fn: Callable) -> str:
    try:
        from torch.library import infer_schema
    except ImportError:  # torch < 2.5
        from torch._library.infer_schema import infer_schema
    return infer_schema(fn, mutates_args=())


def custom_op(
        name: str,
        fn: Callable,
        fake: Callable,
        *,
        backward: Optional[Callable] = None,
        backward_name: Optional[str] = None,
        backward_fake: Optional[Callable] = None,
        backward_inputs: Optional[Callable[[tuple, Any], Sequence[Any]]] = None,
        grad_inputs: Sequence[str] = (),
        schema: Optional[str] = None,
        backward_schema: Optional[str] = None,
):
    """Register ``fn`` as the custom op ``name`` (``'visionattn::...'``) with fake ``fake``; see the module docstring.

    Args:
        name: Qualified op name.
        fn: Implementation; its annotations give the schema unless ``schema`` is given.
        fake: Fake implementation (output shapes and dtypes only).
        backward: Implementation of the backward op (None: no autograd).
        backward_name: Its qualified name.
        backward_fake: Its fake implementation.
        backward_inputs: ``(inputs, output) -> arguments`` of the backward op after the gradient (default: the inputs).
        grad_inputs: Names of the forward arguments whose gradients the backward op returns, in its output order.
        schema: Explicit schema of the op (``'(Tensor x, ...) -> Tensor'``).
        backward_schema: Explicit schema of the backward op.

    Returns:
        The forward op (a ``torch.library.CustomOpDef``, callable).
    """
    params = list(inspect.signature(fn).parameters)
    if backward is not None:
        if backward_name is None or backward_fake is None:
            raise ValueError(f'{name}: a backward op needs backward_name and backward_fake')
        unknown = [g for g in grad_inputs if g not in params]
        if unknown:
            raise ValueError(f'{name}: grad_inputs {unknown} are not arguments of the op ({params})')
    op = torch.library.custom_op(name, fn, mutates_args=(), schema=schema)
    op.register_fake(fake)
    if backward is None:
        return op
    bwd = torch.library.custom_op(backward_name, backward, mutates_args=(), schema=backward_schema)
    bwd.register_fake(backward_fake)
    grad_pos = [params.index(g) for g in grad_inputs]

    def setup_context(ctx, inputs, output):
        args = tuple(inputs) if backward_inputs is None else tuple(backward_inputs(inputs, output))
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in args]
        ctx.save_for_backward(*[a for a, t in zip(args, ctx.is_tensor) if t])
        ctx.others = [None if t else a for a, t in zip(args, ctx.is_tensor)]
        ctx.present = [inputs[i] is not None for i in grad_pos]

    def autograd_backward(ctx, grad, *unused):
        saved = iter(ctx.saved_tensors)
        args = [next(saved) if t else a for a, t in zip(ctx.others, ctx.is_tensor)]
        grads = bwd(grad.contiguous(), *args)
        out = [None] * len(params)
        for pos, g, present in zip(grad_pos, grads, ctx.present):
            if present:
                out[pos] = g
        return tuple(out)

    op.register_autograd(autograd_backward, setup_context=setup_context)
    return op


def recompute_custom_op(name: str, fn: Callable, fake: Callable):
    """Register the differentiable eager function ``fn`` (annotated) as custom op ``name``, run without autograd, with
    the backward op ``<name>_backward`` that recomputes ``fn`` under ``torch.func.vjp`` (see the module docstring)."""
    schema = _infer_schema(fn)
    args_schema = schema[1:schema.rindex(') ->')]
    sig = inspect.signature(fn)
    tensor_types = (torch.Tensor, Optional[torch.Tensor])
    tensor_args = [i for i, p in enumerate(sig.parameters.values()) if p.annotation in tensor_types]

    def forward(*inputs):
        with torch.no_grad():
            return fn(*inputs).contiguous()

    def backward(grad_out, *inputs):
        present = [i for i in tensor_args if inputs[i] is not None]

        def f(*xs):
            full = list(inputs)
            for i, x in zip(present, xs):
                full[i] = x
            return fn(*full)

        # the op runs below the autograd dispatch key, so differentiate with torch.func (its own transform layer)
        _, vjp_fn = torch.func.vjp(f, *[inputs[i] for i in present])
        grads = iter(vjp_fn(grad_out))
        return [next(grads) if inputs[i] is not None else grad_out.new_empty(0) for i in tensor_args]

    def backward_fake(grad_out, *inputs):
        return [grad_out.new_empty(0) if inputs[i] is None else torch.empty_like(inputs[i]) for i in tensor_args]

    forward.__signature__ = sig  # grad_inputs are named after fn's arguments
    return custom_op(
        name, forward, fake, schema=schema, backward=backward, backward_name=f'{name}_backward',
        backward_fake=backward_fake, backward_schema=f'(Tensor grad_out, {args_schema}) -> Tensor[]',
        grad_inputs=[list(sig.parameters)[i] for i in tensor_args])
