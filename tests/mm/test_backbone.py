"""VisionAttnBackbone: built from the OpenMMLab registries, pretrained loading through the family's filter,
freezing, norm_eval, checkpointing, and one training iteration of an mmseg UperNet."""
import pytest
import timm
import torch

from . import require

pytestmark = pytest.mark.mm
require('mmseg')
mm = require('visionattn.mm')


def _backbone(arch='nat_mini', **kwargs):
    from mmseg.registry import MODELS
    return MODELS.build(dict(type='VisionAttnBackbone', arch=arch, **kwargs))


def test_registered_in_every_installed_registry():
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as PRE
    for registry in (DET, PRE):
        b = registry.build(dict(type='VisionAttnBackbone', arch='va_convit_tiny', out_indices=(3, 7, 11)))
        assert b.channels == [192] * 3 and b.reductions == [16] * 3
    with pytest.raises(ValueError, match='unknown visionattn model'):
        _backbone(arch='resnet50')
    with pytest.raises(ValueError, match='out_indices'):
        _backbone(out_indices=(0, 4))


def test_outputs_and_pretrained_through_filter(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model('nat_mini').eval()
    x = torch.randn(1, 3, 70, 96)
    with torch.no_grad():
        expected = ref.forward_intermediates(x, intermediates_only=True)
    # a whole segmentor checkpoint of ours (backbone.model.*), a raw state dict as safetensors, official keys
    from safetensors.torch import save_file
    seg = tmp_path / 'segmentor.pth'
    torch.save({'meta': {'epoch': 3}, 'state_dict': {f'backbone.model.{k}': v for k, v in ref.state_dict().items()}},
               seg)
    raw = tmp_path / 'raw.safetensors'
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(raw))
    for path in (seg, raw):
        b = _backbone(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
        b.init_weights()
        b.eval()
        with torch.no_grad():
            out = b(x)
        assert [o.shape[1] for o in out] == b.channels == [64, 128, 256, 512]
        for o, e in zip(out, expected):
            torch.testing.assert_close(o, e)
    bad = tmp_path / 'other.pth'
    torch.save({'state_dict': {'conv.weight': torch.zeros(1)}}, bad)
    b = _backbone(init_cfg=dict(type='Pretrained', checkpoint=str(bad)))
    with pytest.raises(ValueError, match='matched no parameter'):
        b.init_weights()


def test_frozen_stages_norm_eval_with_cp():
    b = _backbone(frozen_stages=1, with_cp=True, norm_eval=True)
    b.init_weights()
    frozen = {n for n, p in b.named_parameters() if not p.requires_grad}
    assert any(n.startswith('model.patch_embed') for n in frozen)
    assert any(n.startswith('model.stages.0') for n in frozen)
    assert not any(n.startswith('model.stages.1') for n in frozen)
    b.eval()
    with torch.no_grad():
        ref = b(torch.ones(1, 3, 64, 64))
    b.model.set_grad_checkpointing(False)
    with torch.no_grad():
        torch.testing.assert_close(b(torch.ones(1, 3, 64, 64)), ref)
    b.model.set_grad_checkpointing(True)
    b.train()
    x = torch.randn(2, 3, 64, 64)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    opt = torch.optim.AdamW([p for p in b.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
    out = b(x)
    sum(o.mean() for o in out).backward()
    assert all(p.grad is None for n, p in b.named_parameters() if n in frozen)
    assert all(p.grad is not None for n, p in b.named_parameters() if n not in frozen and 'stages.3' in n)
    opt.step()
    after = b.state_dict()
    # frozen parameters (and any norm statistics under norm_eval) are unchanged after a step, the rest moved
    assert all(torch.equal(after[n], before[n]) for n in frozen)
    assert all(torch.equal(after[k], before[k]) for k in after if 'running_' in k)
    assert not torch.equal(after['model.stages.3.blocks.0.attn.qkv.weight'],
                           before['model.stages.3.blocks.0.attn.qkv.weight'])


def test_uper_net_train_iteration():
    from mmengine.config import ConfigDict
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    register_all_modules()
    norm = dict(type='BN', requires_grad=True)
    model = MODELS.build(ConfigDict(
        type='EncoderDecoder',
        backbone=dict(type='VisionAttnBackbone', arch='nat_mini', drop_path_rate=0.1),
        decode_head=dict(
            type='UPerHead', in_channels=[64, 128, 256, 512], in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
            channels=32, dropout_ratio=0.1, num_classes=4, norm_cfg=norm, align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole')))
    model.init_weights()
    model.train()
    inputs = torch.randn(2, 3, 64, 64)
    samples = []
    for _ in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64), ori_shape=(64, 64)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, 64, 64)))
        samples.append(s)
    losses = model.loss(inputs, samples)
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.model.stages[0].blocks[0].attn.qkv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        pred = model.predict(inputs, samples)
    assert pred[0].pred_sem_seg.data.shape == (1, 64, 64)


def _smallest_per_family():
    from timm.models._registry import _model_entrypoints, _model_to_module

    import visionattn
    names = visionattn.list_models()
    order = {n: i for i, n in enumerate(_model_entrypoints)}
    return sorted(min((n for n in names if _model_to_module[n] == m), key=order.get)
                  for m in {_model_to_module[n] for n in names})


@pytest.mark.parametrize('arch', _smallest_per_family())
def test_every_family_is_a_backbone(arch):
    # the adapter is generic: a family that lands is usable from configs, and this checks it
    b = _backbone(arch=arch, out_indices=(-3, -2, -1))
    b.init_weights()
    b.eval()
    with torch.no_grad():
        out = b(torch.randn(1, 3, 96, 80))
    assert [o.shape[1] for o in out] == b.channels
    assert all(o.ndim == 4 and o.shape[2] <= -(-96 // r) + 1 for o, r in zip(out, b.reductions))


def test_norm_eval_keeps_batchnorm_statistics():
    # BiFormer's stem and head use BatchNorm: with norm_eval a training forward leaves their statistics alone
    b = _backbone(arch='biformer_tiny', norm_eval=True, frozen_stages=0)
    b.init_weights()
    b.train()
    stats = {k: v.clone() for k, v in b.state_dict().items() if 'running_' in k}
    assert stats
    b(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(b.state_dict()[k], v) for k, v in stats.items())
    assert not b.model.stem.training and b.model.stages[1].training
