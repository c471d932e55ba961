"""Export-time paths of the Agent and BiFormer layers: equal to eager, and dynamic in H and W once exported."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import visionattn.layers.agent as agent_layer
from visionattn.export import export_mode
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
    from torch.export import Dim
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(32, 2, n_win=7, topk=4).eval()
    x = torch.randn(1, 14, 14, 32)
    shapes = ({1: Dim('h', min=8, max=512), 2: Dim('w', min=8, max=512)},)
    with torch.no_grad(), export_mode():
        ep = torch.export.export(m, (x,), dynamic_shapes=shapes, strict=False,
                                 prefer_deferred_runtime_asserts_over_guards=True)
    run = ep.module()
    for size in [(14, 14), (15, 23), (9, 30)]:
        x = torch.randn(1, *size, 32)
        with torch.no_grad():
            torch.testing.assert_close(run(x), m(x), rtol=0, atol=1e-5)
