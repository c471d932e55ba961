"""block_sparse_gather_export (the export formulation of the block-sparse reference) against the dense oracle."""
import itertools
from unittest import mock

import pytest
import torch

import visionattn.ops.reference.block_sparse as ref_mod
from visionattn.ops.reference.block_sparse import block_sparse_attention_reference, block_sparse_gather_export

# (B, Nq, Tq, H, D, Nk, Tk, Dv, topk): one-token blocks, Nq != Nk, topk = Nk, Dv != D, BiFormer-like
SHAPES = [
    (1, 1, 1, 1, 4, 1, 1, 4, 1),
    (2, 5, 6, 3, 8, 7, 5, 4, 3),
    (1, 4, 3, 2, 5, 9, 1, 6, 9),
    (3, 9, 4, 4, 8, 9, 4, 8, 4),
    (1, 16, 7, 2, 16, 6, 8, 3, 2),
]


def _inputs(B, Nq, Tq, H, D, Nk, Tk, Dv, topk, Hi, Hb, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Nq, Tq, H, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Nk, Tk, H, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Nk, Tk, H, Dv, generator=g, dtype=torch.float64)
    idx = torch.randint(0, Nk, (B, Hi, Nq, topk), generator=g)
    if topk > 1:
        idx[0, 0, 0, 1] = idx[0, 0, 0, 0]  # a duplicate: counts twice
    bias = torch.randn(B, Hb, Nq, topk, generator=g, dtype=torch.float64)
    key_mask = torch.rand(B, Nk, Tk, generator=g) > 0.3
    key_mask[0, idx[0, 0, -1]] = False  # the last query block of batch 0 (head 0) sees no key: zero output
    return q, k, v, idx, bias, key_mask


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('Hi, Hb', [(1, 1), ('H', 1), (1, 'H'), ('H', 'H')])
@pytest.mark.parametrize('extras', ['none', 'bias', 'mask', 'both'])
def test_gather_export_matches_reference(shape, Hi, Hb, extras):
    H = shape[3]
    Hi, Hb = H if Hi == 'H' else 1, H if Hb == 'H' else 1
    for seed in range(3):
        q, k, v, idx, bias, key_mask = _inputs(*shape, Hi=Hi, Hb=Hb, seed=seed)
        kw = {'bias': bias if extras in ('bias', 'both') else None,
              'key_mask': key_mask if extras in ('mask', 'both') else None}
        ref = block_sparse_attention_reference(q, k, v, idx, 0.41, **kw)
        got = block_sparse_gather_export(q, k, v, idx, 0.41, **kw)
        assert got.shape == ref.shape and got.dtype == ref.dtype
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
        if kw['key_mask'] is not None:
            assert got[0, -1, :, 0].abs().max() == 0  # the fully masked query block


def test_gather_export_all_duplicates_and_neg_inf_bias():
    """A block listed topk times equals it listed once; a -inf slot bias removes that slot (all -inf: zero)."""
    q, k, v, idx, bias, _ = _inputs(2, 3, 4, 2, 8, 5, 3, 8, 4, Hi=2, Hb=2, seed=7)
    idx[:, :, 0] = 3
    bias[0, 1, 1, :2] = float('-inf')
    bias[1, 0, 2] = float('-inf')
    ref = block_sparse_attention_reference(q, k, v, idx, 0.3, bias=bias)
    got = block_sparse_gather_export(q, k, v, idx, 0.3, bias=bias)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    assert got[1, 2, :, 0].abs().max() == 0


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_gather_export_dtypes(dtype):
    q, k, v, idx, bias, key_mask = _inputs(2, 5, 6, 3, 8, 7, 5, 4, 3, Hi=1, Hb=3, seed=1)
    q, k, v, bias = (t.to(dtype) for t in (q, k, v, bias))
    got = block_sparse_gather_export(q, k, v, idx, 0.4, bias=bias, key_mask=key_mask)
    assert got.dtype == dtype
    ref = block_sparse_attention_reference(*(t.double() for t in (q, k, v)), idx, 0.4, bias=bias.double(),
                                           key_mask=key_mask)
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=tol)


def test_reference_switches_to_gather_under_export():
    """The reference runs the gather formulation only when exporting; eagerly it is the dense oracle."""
    q, k, v, idx, bias, key_mask = _inputs(2, 5, 6, 3, 8, 7, 5, 4, 3, Hi=3, Hb=1, seed=2)
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return block_sparse_gather_export(*args, **kwargs)

    with mock.patch.object(ref_mod, 'block_sparse_gather_export', spy):
        block_sparse_attention_reference(q, k, v, idx, 0.4, bias, key_mask)
        assert not calls
        with mock.patch.object(ref_mod, '_is_exporting', lambda: True):
            got = block_sparse_attention_reference(q, k, v, idx, 0.4, bias, key_mask)
        assert calls
    torch.testing.assert_close(got, block_sparse_attention_reference(q, k, v, idx, 0.4, bias, key_mask),
                               rtol=0, atol=1e-10)


class _BSA(torch.nn.Module):
    def forward(self, q, k, v, idx, bias, key_mask):
        return block_sparse_attention_reference(q, k, v, idx, 0.4, bias, key_mask)


@pytest.mark.parametrize('Hi', [1, 3])
def test_exported_graph_has_no_dense_bias_and_is_dynamic(Hi):
    """torch.export with dynamic blocks / tokens: the graph gathers (no one_hot, no [N, N] bias), runs other sizes."""
    from torch.export import Dim
    q, k, v, idx, bias, key_mask = _inputs(2, 5, 6, 3, 8, 7, 5, 4, 3, Hi=Hi, Hb=1, seed=3)
    nq, tq, nk, tk = Dim('nq', min=2), Dim('tq', min=2), Dim('nk', min=4), Dim('tk', min=2)
    shapes = ({1: nq, 2: tq}, {1: nk, 2: tk}, {1: nk, 2: tk}, {2: nq}, {2: nq}, {1: nk, 2: tk})
    ep = torch.export.export(_BSA(), (q, k, v, idx, bias, key_mask), dynamic_shapes=shapes)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == 'call_function'}
    assert any('index_select' in t for t in targets), targets
    assert not any('one_hot' in t or 'logsumexp' in t for t in targets), targets
    for Nq, Tq, Nk, Tk in itertools.islice(itertools.product([3, 8], [2, 5], [4, 9], [3, 7]), 0, None, 3):
        args = _inputs(2, Nq, Tq, 3, 8, Nk, Tk, 4, 3, Hi=Hi, Hb=1, seed=Nq + Tk)
        torch.testing.assert_close(ep.module()(*args), _BSA()(*args), rtol=0, atol=1e-10)


@pytest.mark.parametrize('Hi', [1, 3])
def test_onnx_graph_matches_reference(Hi, tmp_path):
    """ONNX (onnxruntime) of the reference, dynamic sizes, bias, key mask and empty rows: the dense oracle's result."""
    pytest.importorskip('onnxruntime')
    import onnxruntime as ort
    from torch.export import Dim

    def inputs(Nq, Tq, Nk, Tk, seed):
        args = list(_inputs(2, Nq, Tq, 3, 8, Nk, Tk, 4, 3, Hi=Hi, Hb=3, seed=seed))
        args[:3] = [t.float() for t in args[:3]]
        args[4] = args[4].float()
        args[4][1, 0, 1] = float('-inf')  # query block 1 of batch 1: no key for head 0
        return tuple(args)

    nq, tq, nk, tk = Dim('nq', min=2), Dim('tq', min=2), Dim('nk', min=4), Dim('tk', min=2)
    shapes = ({1: nq, 2: tq}, {1: nk, 2: tk}, {1: nk, 2: tk}, {2: nq}, {2: nq}, {1: nk, 2: tk})
    ep = torch.export.export(_BSA(), inputs(5, 6, 7, 5, 0), dynamic_shapes=shapes)
    path = str(tmp_path / 'bsa.onnx')
    torch.onnx.export(ep, dynamo=True, optimize=False).save(path)
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    names = [i.name for i in sess.get_inputs()]
    for Nq, Tq, Nk, Tk in [(5, 6, 7, 5), (3, 2, 9, 3), (8, 5, 4, 7)]:
        args = inputs(Nq, Tq, Nk, Tk, seed=Nq)
        got = sess.run(None, {n: t.numpy() for n, t in zip(names, args)})[0]
        torch.testing.assert_close(torch.from_numpy(got), _BSA()(*args), rtol=0, atol=1e-5)
        assert not got[1, 1, :, 0].any()
