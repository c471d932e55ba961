"""The shared model bases (models/_base.py) and checkpoint conversion (models/_convert.py)."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from visionattn.models import _convert
from visionattn.models._base import StagedModel, StageNorms, TokenModel, out_norm_stages
from visionattn.models.biformer import BiFormer, checkpoint_filter_fn

TINY_BIFORMER = dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), head_dim=8, topks=(1, 1, 1, -2), n_win=2,
                     num_classes=0)


def test_strip_prefix():
    sd = {'backbone.a': 1, 'backbone.b.c': 2, 'decode_head.w': 3}
    assert _convert.strip_prefix(sd) == {'a': 1, 'b.c': 2}
    assert _convert.strip_prefix({'a': 1}) == {'a': 1}
    assert _convert.strip_prefix({'module.x': 1, 'y': 2}, 'module.') == {'x': 1}


def test_unwrap_state_dict():
    w = torch.ones(1)
    assert _convert.unwrap_state_dict({'model': {'module.a': w}, 'epoch': 3}) == {'a': w}
    assert _convert.unwrap_state_dict({'a': w}) == {'a': w}


def test_square_grid():
    assert _convert.square_grid(196) == (14, 14)
    with pytest.raises(ValueError, match=r'pos_embed has 195 patch tokens, not a square grid'):
        _convert.square_grid(195, 'pos_embed')


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
@pytest.mark.parametrize('prefix', [0, 1])
def test_resample_pos_embed(interpolation, prefix):
    pos = torch.randn(1, prefix + 6 * 4, 8, dtype=torch.float64)
    assert _convert.resample_pos_embed(pos, (6, 4), (6, 4), prefix, interpolation) is pos
    out = _convert.resample_pos_embed(pos, (9, 5), (6, 4), prefix, interpolation)
    grid = pos[:, prefix:].reshape(1, 6, 4, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(9, 5), mode=interpolation, align_corners=False).flatten(2).transpose(1, 2)
    assert out.dtype == torch.float64 and out.shape == (1, prefix + 45, 8)
    torch.testing.assert_close(out[:, prefix:], ref, rtol=0, atol=0)
    torch.testing.assert_close(out[:, :prefix], pos[:, :prefix], rtol=0, atol=0)


def test_reshape_patch_embed_and_remap_stage_key():
    w = torch.randn(8, 3 * 4 * 4)
    assert _convert.reshape_patch_embed(w, (8, 3, 4, 4)).shape == (8, 3, 4, 4)
    conv = torch.randn(8, 3, 4, 4)
    assert _convert.reshape_patch_embed(conv, (8, 3, 4, 4)) is conv
    assert _convert.remap_stage_key('layers.1.downsample.norm.weight') == 'stages.2.downsample.norm.weight'
    assert _convert.remap_stage_key('layers.1.blocks.0.attn.qkv.weight') == 'stages.1.blocks.0.attn.qkv.weight'
    assert _convert.remap_stage_key('levels.0.blocks.0.x', 'levels') == 'stages.0.blocks.0.x'
    assert _convert.remap_stage_key('norm.weight') == 'norm.weight'


def test_out_norm_stages():
    assert out_norm_stages(True, 4) == [0, 1, 2, 3]
    assert out_norm_stages(False, 4) == [] == out_norm_stages((), 4)
    assert out_norm_stages('mmdet', 4, {'mmdet': (1, 2, 3)}) == [1, 2, 3]
    assert out_norm_stages((3, 1, 1), 4) == [1, 3]
    with pytest.raises(ValueError, match='out_norms'):
        out_norm_stages((4,), 4)
    with pytest.raises(ValueError, match='out_norms'):
        out_norm_stages('mmseg', 4)
    with pytest.warns(DeprecationWarning, match='extra_norms is deprecated'):
        assert out_norm_stages(False, 3, deprecated=('extra_norms', True)) == [0, 1, 2]


def test_stage_norms():
    norms = StageNorms([0, 2], lambda i: nn.LayerNorm(4 + i))
    assert list(norms) == ['0', '2'] and 2 in norms and '2' in norms and 1 not in norms
    assert norms[2].normalized_shape == (6,) and norms['0'] is norms[0]
    assert set(nn.Sequential(norms).state_dict()) == {'0.0.weight', '0.0.bias', '0.2.weight', '0.2.bias'}
    norms.prune(lambda i: i < 2)
    assert list(norms) == ['0']


def test_biformer_out_norms_and_deprecated_extra_norms():
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match='extra_norms'):
        old = BiFormer(**TINY_BIFORMER, extra_norms=True).eval()
    torch.manual_seed(0)
    new = BiFormer(**TINY_BIFORMER, out_norms=True).eval()
    assert set(old.state_dict()) == set(new.state_dict())
    assert {k for k in new.state_dict() if 'norms' in k} == {f'out_norms.{i}.{p}' for i in range(4)
                                                            for p in ('weight', 'bias')}
    with pytest.warns(DeprecationWarning, match='extra_norms'):
        assert old.extra_norms is old.out_norms
    with pytest.warns(DeprecationWarning):
        assert BiFormer(**TINY_BIFORMER).extra_norms is None
    # a checkpoint saved with the former name loads
    saved = {('extra_norms.' + k[len('out_norms.'):] if k.startswith('out_norms.') else k): v.clone() + 1
             for k, v in new.state_dict().items()}
    converted = checkpoint_filter_fn(saved, new)
    assert set(converted) == set(new.state_dict())
    torch.testing.assert_close(converted['out_norms.3.weight'], new.out_norms[3].weight.detach() + 1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = new.forward_intermediates(x, intermediates_only=True)
        plain = BiFormer(**TINY_BIFORMER).eval()
        plain.load_state_dict(checkpoint_filter_fn(new.state_dict(), plain))
        raw = plain.forward_intermediates(x, intermediates_only=True)
    for i, (m, r) in enumerate(zip(maps, raw)):
        torch.testing.assert_close(m, new.out_norms[i](r))


@pytest.mark.parametrize('name', ['nat_mini', 'litv2_small', 'transnext_micro', 'biformer_tiny', 'ravlt_tiny',
                                  'agent_pvt_tiny'])
def test_staged_models_share_the_base(name):
    model = timm.create_model(name, pretrained=False, depths=(1, 1, 1, 1), num_classes=3)
    assert isinstance(model, StagedModel)
    model.set_grad_checkpointing(True)  # the model's flag too (NAT's drifted)
    assert model.grad_checkpointing and all(s.grad_checkpointing for s in model.stages)
    with pytest.raises(ValueError, match='output_fmt must be'):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), output_fmt='NLC')
    if name != 'ravlt_tiny':  # RAVLT pools with timm's SelectAdaptivePool2d (max, avgmax... too)
        with pytest.raises(ValueError, match='global_pool must be'):
            model.reset_classifier(0, 'max')


@pytest.mark.parametrize('name,kwargs', [
    ('evit_deit_tiny_patch16_224', dict(drop_loc=(1,))), ('sparsifiner_deit_small_patch16_224', {}),
    ('agent_deit_tiny', {}), ('va_convit_tiny', dict(local_up_to_layer=1))])
def test_token_models_share_the_base(name, kwargs):
    model = timm.create_model(name, pretrained=False, depth=2, num_classes=3, **kwargs)
    assert isinstance(model, TokenModel)
    assert {'pos_embed', 'cls_token'} <= model.no_weight_decay()
    model.reset_classifier(5, 'avg')
    assert model.get_classifier().out_features == 5 and model.global_pool == 'avg'
    with pytest.raises(ValueError, match='global_pool must be one of'):
        model.reset_classifier(0, 'max')
