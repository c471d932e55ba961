"""The [mm] extra as installed: mmcv with compiled ops, mmseg, mmdet, mmpretrain importable and working on CPU."""
import pytest
import torch

pytestmark = pytest.mark.mm


def test_mmcv_compiled_ops_match_torchvision():
    ops = pytest.importorskip('mmcv.ops')
    import torchvision
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=g) * 20], 1)
    scores = torch.rand(50, generator=g)
    _, keep = ops.nms(boxes, scores, iou_threshold=0.5)
    ref = torchvision.ops.nms(boxes, scores, 0.5)
    assert keep.tolist() == ref.tolist()
    feats = torch.randn(1, 4, 16, 16, generator=g)
    rois = torch.tensor([[0, 1.0, 2.0, 10.0, 12.0], [0, 0.5, 0.5, 15.0, 7.0]])
    out = ops.roi_align(feats, rois, (3, 3), 1.0, 2, 'avg', True)
    ref = torchvision.ops.roi_align(feats, rois, (3, 3), 1.0, 2, aligned=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_openmmlab_packages_import():
    for name in ('mmengine', 'mmseg', 'mmdet', 'mmpretrain'):
        pytest.importorskip(name)
