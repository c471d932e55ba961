"""Size semantics of pretrained weights: weights trained at one size, a model built for another (``img_size`` or
``n_win`` override), as the official fine-tuning / downstream code builds it. TransNeXt and Agent attention have
their own tests (tests/models/test_transnext.py, test_agent.py)."""
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import visionattn  # noqa: F401


def _deit_finetune_pos_embed(pos_embed_checkpoint: torch.Tensor, num_patches: int, num_extra_tokens: int = 1):
    """The DeiT ``main.py --finetune`` rule that the official EViT ``main.py`` keeps: bicubic, align_corners False,
    class token unchanged, square grids."""
    embedding_size = pos_embed_checkpoint.shape[-1]
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches ** 0.5)
    extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
    pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
    pos_tokens = F.interpolate(pos_tokens, size=(new_size, new_size), mode='bicubic', align_corners=False)
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra_tokens, pos_tokens), dim=1)


def _save(model, path):
    torch.manual_seed(1)
    sd = {k: (v + 0.1 * torch.randn_like(v)).contiguous() if v.is_floating_point() else v.contiguous()
          for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    return sd


def test_evit_pos_embed_at_another_img_size_is_the_official_finetune_resize(tmp_path):
    name, kw = 'evit_deit_tiny_patch16_224', dict(depth=4, num_classes=10, drop_loc=(1, 2))
    sd = _save(timm.create_model(name, **kw), tmp_path / 'w.safetensors')
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'w.safetensors')),
                              img_size=288, **kw)
    ref = _deit_finetune_pos_embed(sd['pos_embed'], (288 // 16) ** 2)
    torch.testing.assert_close(model.pos_embed.data, ref, rtol=0, atol=0)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 288, 288)).shape == (1, 10)


def test_sparsifiner_keeps_its_training_size(tmp_path):
    """Sparsifiner's mask predictor has a token-count axis (``proj_n``/``proj_back_n``, reduced width from the
    token count): weights trained at 224 load only into a model built for 224 (another ``img_size`` is refused,
    naming the shapes) and are resampled along the token axis at run time for other inputs, as the position
    embedding is (the DeiT bicubic rule). The official code has no other-size path."""
    kw = dict(depth=4, num_classes=10, embed_dim=48, num_heads=2)
    name = 'sparsifiner_deit_small_patch16_224'
    _save(timm.create_model(name, **kw), tmp_path / 'w.safetensors')
    overlay = dict(file=str(tmp_path / 'w.safetensors'))
    with pytest.raises(ValueError, match='reduced tokens'):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, img_size=288, **kw)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kw).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 288, 288)).shape == (1, 10)


def test_convit_pos_embed_at_another_img_size_follows_timm():
    """The official ConViT has no fine-tuning or downstream path at another size (its main.py has no ``--finetune``
    resize): weights load into an ``img_size`` override with timm's resampling of the absolute embedding, and the
    GPSA relative positions are computed for the new grid (no parameter holds them)."""
    from timm.layers import resample_abs_pos_embed

    from visionattn.models.convit_va import checkpoint_filter_fn
    kw = dict(depth=2, local_up_to_layer=1, num_classes=10)
    src = timm.create_model('va_convit_tiny', **kw)
    dst = timm.create_model('va_convit_tiny', img_size=288, **kw)
    out = checkpoint_filter_fn(src.state_dict(), dst)
    dst.load_state_dict(out, strict=True)
    ref = resample_abs_pos_embed(src.pos_embed.data, new_size=[18, 18], old_size=[14, 14], num_prefix_tokens=0)
    torch.testing.assert_close(dst.pos_embed.data, ref, rtol=0, atol=0)
    assert {k for k, v in dst.state_dict().items() if v.shape != src.state_dict()[k].shape} == {'pos_embed'}


@pytest.mark.parametrize('name, kwargs', [
    ('biformer_tiny', dict(n_win=8)),  # the official ADE20K backbones: ImageNet weights (n_win 7) at n_win 8
    ('biformer_tiny', dict(n_win=16)),  # the official COCO backbones
])
def test_no_size_dependent_parameters(name, kwargs, tmp_path):
    """BiFormer's weights hold no size- or ``n_win``-dependent tensor: the official downstream backbones load the
    ImageNet checkpoint unchanged at another ``n_win``; so does this model (strict)."""
    src = timm.create_model(name, depths=(1, 1, 1, 1), num_classes=0)
    dst = timm.create_model(name, depths=(1, 1, 1, 1), num_classes=0, **kwargs)
    assert {k: v.shape for k, v in src.state_dict().items()} == {k: v.shape for k, v in dst.state_dict().items()}
    dst.load_state_dict(src.state_dict(), strict=True)


def test_litv2_has_no_size_dependent_parameters():
    """LITv2 (HiLo windows, DTM offsets) holds no position table: the 224 and 384 variants have the same tensors,
    and the official detection/segmentation backbones load the ImageNet weights unchanged at any input size."""
    a = timm.create_model('litv2_small', num_classes=0)
    b = timm.create_model('litv2_base', num_classes=0)
    c = timm.create_model('litv2_base_384', num_classes=0)
    assert {k: v.shape for k, v in b.state_dict().items()} == {k: v.shape for k, v in c.state_dict().items()}
    assert not any('pos' in k or 'relative' in k for k in a.state_dict())


def test_ravlt_weights_run_at_any_size_as_the_official_downstream_backbone():
    """RAVLT holds no size-dependent tensor (RoPE tables computed per map size, as the official GLTA backbone does
    every forward): 224 weights load strictly into a model run at 320, and running 224 first (a cached RoPE table)
    changes nothing at 320."""
    torch.manual_seed(0)
    kw = dict(depths=(1, 1, 1, 1), num_classes=0)
    src = timm.create_model('ravlt_tiny', **kw).eval()
    sd = src.state_dict()
    assert not any('rope' in k or 'angle' in k or 'table' in k for k in sd)
    assert all(v.shape[-2:] == (3, 3) for k, v in sd.items() if k.endswith('.pos.weight'))  # CPE: 3x3 depthwise
    dst = timm.create_model('ravlt_tiny', **kw).eval()
    dst.load_state_dict(src.state_dict(), strict=True)
    x224, x320 = torch.randn(1, 3, 224, 224), torch.randn(1, 3, 320, 256)
    with torch.no_grad():
        src(x224)
        after_224 = src.forward_features(x320)
        fresh = dst.forward_features(x320)
    assert after_224.shape[-2:] == (10, 8)
    torch.testing.assert_close(after_224, fresh, rtol=0, atol=0)
