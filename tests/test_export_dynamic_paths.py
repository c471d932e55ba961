"""Export-time paths of the Agent and BiFormer layers: equal to eager, and dynamic in H and W once exported."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import visionattn.layers.agent as agent_layer
from tests._helpers import export_dynamic_hw
from visionattn.layers.routing import BiLevelRoutingAttention


@pytest.mark.parametrize('hw, out', [((14, 14), (7, 7)), ((16, 20), (7, 7)), ((9, 11), (7, 7)), ((5, 3), (7, 7)),
                                     ((13, 17), (4, 5))])
def test_export_adaptive_pool_equals_eager(hw, out):
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    with mock.patch.object(agent_layer, 'is_exporting', lambda: True):
        got = agent_layer.adaptive_avg_pool2d(x, out)
    torch.testing.assert_close(got, F.adaptive_avg_pool2d(x, out), rtol=0, atol=1e-12)


def test_bra_exports_dynamic_size():
    """Exported at a size divisible by n_win, the graph runs at sizes that need padding (and the reverse)."""
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(32, 2, n_win=7, topk=4).eval()
    x = torch.randn(1, 14, 14, 32)
    run = export_dynamic_hw(m, x, min_size=8)
    for size in [(14, 14), (15, 23), (9, 30)]:
        x = torch.randn(1, *size, 32)
        with torch.no_grad():
            torch.testing.assert_close(run(x), m(x), rtol=0, atol=1e-5)



@pytest.mark.parametrize('fmt', ['torch-export', 'onnx'])
def test_bra_masked_exports_dynamic_size(fmt, tmp_path):
    """padding='masked' (key mask, regions of padding never routed) through the export formulation of block-sparse
    attention (gathered K/V blocks, no dense [N, N] bias): one graph for divisible and padded sizes."""
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(32, 2, n_win=7, topk=4, padding='masked').eval()
    onnx_dir = str(tmp_path) if fmt == 'onnx' else None
    run = export_dynamic_hw(m, torch.randn(1, 15, 23, 32), min_size=8, onnx_dir=onnx_dir)
    for size in [(15, 23), (14, 14), (9, 30)]:
        x = torch.randn(1, *size, 32)
        with torch.no_grad():
            torch.testing.assert_close(run(x), m(x), rtol=0, atol=1e-5)

@pytest.mark.parametrize('shift', [False, True])
@pytest.mark.parametrize('hw', [(7, 7), (8, 10), (14, 14), (7, 12), (15, 9)])
def test_swin_block_export_path_equals_eager(hw, shift):
    """Agent-Swin's export-time window path (symbolic shift, gathered roll, region-id mask) is the eager one."""
    from visionattn.models.agent import SwinBlock
    torch.manual_seed(0)
    blk = SwinBlock(16, 2, 7, shift=shift).eval().double()
    x = torch.randn(2, hw[0] * hw[1], 16, dtype=torch.float64)
    with torch.no_grad():
        ref = blk._attn(x, hw)
        got = blk._attn_export(x, hw)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize('idx', [-1, 0, 1])
@pytest.mark.parametrize('hw', [(7, 7), (8, 10), (14, 14)])
def test_cswin_stripes_export_path_equals_eager(hw, idx):
    """Agent-CSwin's export-time stripe path (ceil-div padding, key mask always built) is the eager one."""
    from visionattn.models.agent import LePEAttention
    torch.manual_seed(0)
    m = LePEAttention(16, 2, 7, idx).eval().double()
    q, k, v = torch.randn(3, 2, hw[0] * hw[1], 16, dtype=torch.float64).unbind(0)
    with torch.no_grad():
        ref = m(q, k, v, hw)
        with mock.patch('visionattn.models.agent.is_exporting', lambda: True):
            got = m(q, k, v, hw)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize('fmt', ['torch-export', 'onnx'])
@pytest.mark.parametrize('example', [(7, 7), (8, 9)], ids=['one_window', 'padded'])
def test_swin_block_exports_dynamic_size(example, fmt, tmp_path):
    """Exported at one size, Agent-Swin's window block runs at sizes of one window, of several and with padding
    (the graph is not specialized to the example's window count or padding; the clamp turns the shift off <= 7)."""
    from visionattn.models.agent import SwinBlock

    class ChannelsLast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blk = SwinBlock(16, 2, 7, shift=True).eval()

        def forward(self, x):
            B, H, W, C = x.shape
            return self.blk(x.reshape(B, H * W, C), (H, W))

    torch.manual_seed(0)
    m = ChannelsLast()
    if fmt == 'onnx':  # the symbolic window and shift arithmetic in standard ONNX operators
        pytest.importorskip('onnxruntime')
    run = export_dynamic_hw(m, torch.randn(1, *example, 16), min_size=7, max_size=64,
                            onnx_dir=str(tmp_path) if fmt == 'onnx' else None)
    for size in [(7, 7), (8, 9), (14, 14), (7, 21), (16, 10)]:
        x = torch.randn(1, *size, 16)
        with torch.no_grad():
            torch.testing.assert_close(run(x), m(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize('idx', [0, 1])
def test_cswin_stripes_export_dynamic_size(idx):
    """Exported at a size of whole stripes, Agent-CSwin's stripe attention runs at sizes that need padding (the
    gathered padding and crop leave the graph nothing to specialize on)."""
    from visionattn.models.agent import LePEAttention

    class ChannelsLast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = LePEAttention(16, 2, 7, idx).eval()

        def forward(self, x):
            B, H, W, C = x.shape
            t = x.reshape(B, H * W, C)
            return self.attn(t, t * 0.5, t * 2, (H, W))

    torch.manual_seed(0)
    m = ChannelsLast()
    run = export_dynamic_hw(m, torch.randn(1, 14, 14, 16), min_size=8, max_size=64)
    for size in [(14, 14), (16, 20), (21, 28)]:
        x = torch.randn(1, *size, 16)
        with torch.no_grad():
            torch.testing.assert_close(run(x), m(x), rtol=0, atol=1e-5)
