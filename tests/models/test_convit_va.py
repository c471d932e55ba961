"""ConViT: equality with timm's convit_* (same weights), any input size, checkpoint conversion."""
import pytest
import timm
import torch

import visionattn  # noqa: F401
from visionattn.models.convit_va import checkpoint_filter_fn, rel_indices, resample_pos_embed


def _perturbed_state_dict(model, seed=0, std=0.02):
    g = torch.Generator().manual_seed(seed)
    return {k: v + std * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in model.state_dict().items() if 'rel_indices' not in k}


def _pair(variant, **kwargs):
    ref = timm.create_model(f'convit_{variant}', **kwargs).eval()
    ours = timm.create_model(f'va_convit_{variant}').eval()
    sd = _perturbed_state_dict(ref)
    ref.load_state_dict(sd, strict=False)
    ours.load_state_dict(checkpoint_filter_fn(sd, ours), strict=True)
    return ref, ours


@pytest.mark.parametrize('variant', ['tiny', pytest.param('small', marks=pytest.mark.slow),
                                     pytest.param('base', marks=pytest.mark.slow)])
def test_equals_timm_convit_at_224(variant):
    torch.manual_seed(0)
    ref, ours = _pair(variant)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff32 = (ref(x) - ours(x)).abs().max().item()
        ref.double(), ours.double()
        diff64 = (ref(x.double()) - ours(x.double())).abs().max().item()
    assert diff32 <= 1e-5, f'fp32 logits differ by {diff32}'
    assert diff64 <= 1e-10, f'fp64 logits differ by {diff64}'


def test_equals_timm_convit_at_other_square_size():
    # timm's convit is fixed to its img_size; built at 288 with our resampled embedding it must equal ours at 288
    torch.manual_seed(0)
    ours = timm.create_model('va_convit_tiny', depth=4, local_up_to_layer=3).eval()
    ref = timm.create_model('convit_tiny', img_size=288, depth=4, local_up_to_layer=3).eval()
    sd = _perturbed_state_dict(ours)
    ours.load_state_dict(sd)
    sd288 = dict(sd, pos_embed=resample_pos_embed(sd['pos_embed'], (18, 18), (14, 14)))
    ref.load_state_dict(sd288, strict=False)
    x = torch.randn(1, 3, 288, 288).double()
    with torch.no_grad():
        diff = (ref.double()(x) - ours.double()(x)).abs().max().item()
    assert diff <= 1e-10


def test_rel_indices_definition():
    # (dx, dy, dx^2+dy^2) of key minus query on a row-major 3x5 grid, checked against the definition
    r = rel_indices((3, 5))
    assert r.shape == (15, 15, 3)
    for q in range(15):
        for k in range(15):
            dy, dx = k // 5 - q // 5, k % 5 - q % 5
            assert r[q, k].tolist() == [dx, dy, dx * dx + dy * dy]
    # on square grids it equals timm's (official) construction
    ref = timm.create_model('convit_tiny', depth=1, local_up_to_layer=1).blocks[0].attn.get_rel_indices(49)
    torch.testing.assert_close(rel_indices((7, 7)), ref[0], rtol=0, atol=0)


def test_non_square_and_odd_inputs():
    model = timm.create_model('va_convit_tiny', depth=3, local_up_to_layer=2, features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 100, 230))  # padded to 112 x 240: a 7 x 15 grid
    assert [tuple(f.shape) for f in feats] == [(1, 192, 7, 15)] * 3


def test_checkpoint_filter_fn_formats():
    model = timm.create_model('va_convit_tiny', depth=2, local_up_to_layer=1)
    sd = _perturbed_state_dict(model)
    # a training dict with a DataParallel prefix and cached relative positions, fine-tuned at 384 (24x24 grid)
    pos384 = resample_pos_embed(sd['pos_embed'], (24, 24), (14, 14))
    wrapped = {'model': {f'module.{k}': v for k, v in dict(sd, pos_embed=pos384).items()}}
    wrapped['model']['module.blocks.0.attn.rel_indices'] = torch.zeros(1, 196, 196, 3)
    out = checkpoint_filter_fn(wrapped, model)
    assert set(out) == set(sd)
    assert out['pos_embed'].shape == sd['pos_embed'].shape
    model.load_state_dict(out, strict=True)
    with pytest.raises(ValueError, match='square'):
        checkpoint_filter_fn({'pos_embed': torch.zeros(1, 10, 192)}, model)


def test_timm_convit_weights_load_strictly():
    ref = timm.create_model('convit_tiny', depth=2, local_up_to_layer=1)
    ours = timm.create_model('va_convit_tiny', depth=2, local_up_to_layer=1)
    ours.load_state_dict(checkpoint_filter_fn(ref.state_dict(), ours), strict=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match='local_up_to_layer'):
        timm.create_model('va_convit_tiny', depth=4, local_up_to_layer=5)
    with pytest.raises(ValueError, match='global_pool'):
        timm.create_model('va_convit_tiny', global_pool='max')
