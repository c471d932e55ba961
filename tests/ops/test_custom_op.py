"""The custom-op registration helper (``visionattn.ops._custom_op``), the per-axis argument normaliser, and the names
and schemas of the registered ops (compiled graphs and exporters key on them: they must not change)."""
from typing import Optional

import pytest
import torch

import visionattn.ops  # noqa: F401  (registers the ops)
from visionattn.ops._args import gna_axes, per_axis
from visionattn.ops._custom_op import custom_op, recompute_custom_op

SCHEMAS = {
    'gna_blocked': '(Tensor query, Tensor key, Tensor value, SymInt[] kernel_size, SymInt[] stride, SymInt[] dilation, '
                   'bool[] is_causal, Tensor? rpb, float scale, Tensor? additional_keys, Tensor? additional_values) '
                   '-> Tensor',
    'gna_blocked_backward': '(Tensor grad_out, Tensor query, Tensor key, Tensor value, SymInt[] kernel_size, '
                            'SymInt[] stride, SymInt[] dilation, bool[] is_causal, Tensor? rpb, float scale, '
                            'Tensor? additional_keys, Tensor? additional_values) -> Tensor[]',
    'aggregated_blocked': '(Tensor query, Tensor key, Tensor value, Tensor? pool_key, Tensor? pool_value, '
                          'SymInt kernel_size, Tensor? local_bias, Tensor? pool_bias, Tensor? local_weights, '
                          'float scale) -> Tensor',
    'aggregated_blocked_backward': '(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor? pool_key, '
                                   'Tensor? pool_value, SymInt kernel_size, Tensor? local_bias, Tensor? pool_bias, '
                                   'Tensor? local_weights, float scale) -> Tensor[]',
    'block_sparse_attn_fwd': '(Tensor q, Tensor k, Tensor v, Tensor idx, Tensor? bias, Tensor? kbias, float scale, '
                             'str impl) -> (Tensor, Tensor)',
    'block_sparse_attn_bwd': '(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor idx, '
                             'Tensor? bias, Tensor? kbias, float scale, str impl) -> (Tensor, Tensor, Tensor, Tensor)',
    'topk_attn_fwd': '(Tensor q, Tensor k, Tensor v, Tensor index, float scale, SymInt num_dense, float dropout_p, '
                     'str impl) -> (Tensor, Tensor, Tensor, Tensor)',
    'topk_attn_bwd': '(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor index, Tensor a, Tensor b, '
                     'Tensor c, float scale, SymInt num_dense, float dropout_p, str impl) -> (Tensor, Tensor, Tensor)',
    'topk_indices': '(Tensor scores, SymInt k) -> Tensor',
}


@pytest.mark.parametrize('name', sorted(SCHEMAS))
def test_op_names_and_schemas_are_stable(name):
    assert str(getattr(torch.ops.visionattn, name).default._schema) == f'visionattn::{name}{SCHEMAS[name]}'


def _scaled_mul(x: torch.Tensor, y: Optional[torch.Tensor], scale: float, n: int) -> torch.Tensor:
    out = x * scale if y is None else x * y * scale
    return out.sin() ** n


_recompute_op = recompute_custom_op(
    'visionattn_test::scaled_mul', _scaled_mul, lambda x, y, scale, n: torch.empty_like(x))


def test_recompute_op_schema_forward_and_gradients():
    assert str(torch.ops.visionattn_test.scaled_mul_backward.default._schema) == (
        'visionattn_test::scaled_mul_backward(Tensor grad_out, Tensor x, Tensor? y, float scale, SymInt n) -> Tensor[]')
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: _recompute_op(a, b, 0.7, 3), (x, y))
    torch.autograd.gradcheck(lambda a: _recompute_op(a, None, 0.7, 3), (x,))  # absent optional input: no gradient
    out = _recompute_op(x.t(), y.t(), 0.7, 2)
    assert out.is_contiguous()
    torch.testing.assert_close(out, _scaled_mul(x.t(), y.t(), 0.7, 2), rtol=0, atol=0)
    torch.library.opcheck(_recompute_op, (x.detach().requires_grad_(), None, 0.7, 3))
    compiled = torch.compile(lambda a, b: _recompute_op(a, b, 0.7, 3), fullgraph=True, backend='eager')
    torch.testing.assert_close(compiled(x, y), _scaled_mul(x, y, 0.7, 3))


def _two_out(x: torch.Tensor, w: torch.Tensor, tag: str) -> tuple[torch.Tensor, torch.Tensor]:
    y = x @ w
    return y, y.exp().sum(-1)


def _two_out_bwd(
        g: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return g @ w.t(), x.t() @ g


_explicit_op = custom_op(
    'visionattn_test::two_out', _two_out,
    lambda x, w, tag: (x.new_empty(x.shape[0], w.shape[1]), x.new_empty(x.shape[0])),
    backward=_two_out_bwd, backward_name='visionattn_test::two_out_bwd',
    backward_fake=lambda g, x, y, w: (torch.empty_like(x), torch.empty_like(w)),
    backward_inputs=lambda inputs, output: (inputs[0], output[0], inputs[1]), grad_inputs=('x', 'w'))


def test_explicit_backward_maps_gradients_to_inputs():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: _explicit_op(a, b, 't')[0], (x, w))
    with pytest.raises(ValueError, match=r"grad_inputs \['z'\]"):
        custom_op('visionattn_test::bad', _two_out, lambda x, w, tag: (x, x), backward=_two_out_bwd,
                  backward_name='visionattn_test::bad_bwd', backward_fake=lambda *a: a, grad_inputs=('z',))


def test_per_axis():
    assert per_axis(3, 2, 'kernel_size') == (3, 3)
    assert per_axis([3, 5], 2, 'kernel_size') == (3, 5)
    assert per_axis((1, 0), 2, 'is_causal', kind=bool) == (True, False)
    assert gna_axes(3, 7, (1, 2, 1), 2, True) == ((7, 7, 7), (1, 2, 1), (2, 2, 2), (True, True, True))
    with pytest.raises(ValueError, match='kernel_size has 3 entries: .* have 2 entries'):
        per_axis((3, 3, 3), 2, 'kernel_size')
    with pytest.raises(ValueError, match='stride entries must be int'):
        per_axis(True, 2, 'stride')
    with pytest.raises(ValueError, match='dilation entries must be int'):
        per_axis(2.0, 1, 'dilation')
    with pytest.raises(ValueError, match='is_causal entries must be bool'):
        per_axis('yes', 1, 'is_causal', kind=bool)
