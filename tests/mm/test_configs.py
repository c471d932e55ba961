"""The configs: every family has them, every config builds through the registries, the family types and the
demo data behave, and a config trains on the bundled data (seg, det) through the runner."""
import os.path as osp

import pytest
import torch

from . import require

pytestmark = pytest.mark.mm
require('mmseg')
require('mmdet')
require('mmpretrain')
mm = require('visionattn.mm')

import visionattn  # noqa: E402

from .configs import CONFIG_DIR, CONFIGS, arch, families_with_configs, on_demo_data, strip_pretrained, task  # noqa

# families whose papers report no dense-prediction result (isotropic token-reduction/ViT variants): classification
# configs only; they still work as backbones (tests/mm/test_backbone.py)
CLS_ONLY = {'convit_va', 'evit', 'sparsifiner'}


def _first_per_family_and_task():
    seen, out = set(), []
    for family, paths in sorted(families_with_configs().items()):
        for path in paths:
            if (family, task(path)) not in seen:
                seen.add((family, task(path)))
                out.append(path)
    return out


FIRST = set(_first_per_family_and_task())
TIERED = [p if p in FIRST else pytest.param(p, marks=pytest.mark.slow) for p in CONFIGS if not p.startswith('demo')]


def test_every_family_has_configs_and_a_type():
    have = families_with_configs()
    assert '?' not in have, f'configs name models that are not registered: {have.get("?")}'
    for family in visionattn.models.model_modules():
        tasks = {task(p) for p in have.get(family, [])}
        need = {'cls'} if family in CLS_ONLY else {'cls', 'seg', 'det'}
        assert need <= tasks, f'family {family}: configs for {sorted(need - tasks)} missing under configs/'
        assert family in mm.FAMILY_TYPES, f'family {family} has no OpenMMLab type in visionattn.mm.FAMILY_TYPES'


def test_family_types_resolve_variants():
    from mmseg.registry import MODELS
    b = MODELS.build(dict(type='NAT', arch='dinat_mini', out_indices=(3,)))
    assert type(b).__name__ == 'NAT' and b.channels == [512]
    with pytest.raises(ValueError, match='candidates'):
        MODELS.build(dict(type='NAT', arch='mini'))  # nat_mini or dinat_mini
    with pytest.raises(ValueError, match='unknown family NAT model'):
        MODELS.build(dict(type='NAT', arch='va_convit_tiny'))
    from mmpretrain.registry import MODELS as PRE
    assert PRE.build(dict(type='VAConViT', arch='tiny', out_indices=(-1,))).channels == [192]


def _registry(scope):
    import importlib
    return importlib.import_module(f'{scope}.registry')


@pytest.mark.parametrize('path', TIERED)
def test_config_builds(path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(osp.join(CONFIG_DIR, path))
    init_default_scope(cfg.default_scope)
    strip_pretrained(cfg._cfg_dict)
    assert cfg.default_scope == {'cls': 'mmpretrain', 'seg': 'mmseg', 'det': 'mmdet'}[task(path)]
    assert arch(cfg) in visionattn.list_models()
    reg = _registry(cfg.default_scope)
    for pipeline in ('train_pipeline', 'test_pipeline'):
        for t in cfg.get(pipeline, []):
            reg.TRANSFORMS.build(t)
    model = reg.MODELS.build(cfg.model)
    model.init_weights()
    if task(path) == 'seg':
        # the decode head's in_channels are the backbone's
        assert list(cfg.model.decode_head.in_channels) == model.backbone.channels or 'neck' in cfg.model
    if 'neck' in cfg.model and task(path) != 'cls':
        assert list(cfg.model.neck.in_channels) == model.backbone.channels


def _demo_runs():
    # default tier: UperNet and Mask R-CNN on NAT; slow tier: the first config of every head type (UperNet, FPN,
    # Mask2Former, Mask R-CNN, Cascade Mask R-CNN, RetinaNet, DINO) of every family
    default = ['nat/upernet_nat_mini_ade20k.py', 'nat/mask_rcnn_nat_mini_fpn_3x_coco.py']
    slow = []
    for paths in families_with_configs().values():
        for prefix in ('upernet_', 'fpn_', 'mask2former_', 'mask_rcnn_', 'cascade_mask_rcnn_', 'retinanet_',
                       'dino_'):
            # the smaller variants first: a base/large backbone only where a family has nothing else for that head
            smaller_first = sorted(paths, key=lambda p: (any(s in p for s in ('_base_', '_large_')), p))
            first = next((p for p in smaller_first if osp.basename(p).startswith(prefix)), None)
            if first and first not in default and not (prefix == 'fpn_' and any(
                    osp.basename(p).startswith('upernet_') for p in paths)):
                slow.append(first)
    return default + [pytest.param(p, marks=pytest.mark.slow) for p in sorted(slow)]


@pytest.mark.parametrize('path', _demo_runs())
def test_train_iteration_and_evaluation_on_demo_data(path, tmp_path):
    from mmengine.runner import Runner

    cfg = on_demo_data(path, str(tmp_path), iters=1)
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    key = 'mIoU' if task(path) == 'seg' else 'coco/bbox_mAP'
    assert key in metrics and metrics[key] >= 0
    assert osp.exists(osp.join(str(tmp_path), 'iter_1.pth'))


def test_classification_config_trains_one_iteration(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.structures import DataSample

    cfg = Config.fromfile(osp.join(CONFIG_DIR, 'convit/va_convit_tiny_in1k.py'))
    init_default_scope('mmpretrain')
    reg = _registry('mmpretrain')
    cfg.model.data_preprocessor = dict(type='ClsDataPreprocessor', num_classes=1000, **{
        k: cfg.data_preprocessor[k] for k in ('mean', 'std', 'to_rgb')})
    model = reg.MODELS.build(cfg.model)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = dict(inputs=[torch.randint(0, 255, (3, 224, 224), dtype=torch.uint8) for _ in range(2)],
                data_samples=[DataSample().set_gt_label(i) for i in (3, 7)])
    model.train()
    batch = model.data_preprocessor(data, training=True)
    losses = model(**batch, mode='loss')
    loss = sum(losses.values())
    loss.backward()
    optim.step()
    assert torch.isfinite(loss)


def test_backbone_lr_mult_constructor():
    # the Mask2Former recipe: backbone at 0.1x the learning rate, and its biases, norms and position biases still
    # without weight decay (a plain custom key 'backbone' would give them decay)
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(osp.join(CONFIG_DIR, 'transnext', 'mask2former_transnext_tiny_ade20k.py'))
    init_default_scope('mmseg')
    strip_pretrained(cfg._cfg_dict)
    cfg.model.backbone.arch = 'transnext_micro'
    cfg.model.decode_head.in_channels = [48, 96, 192, 384]
    model = _registry('mmseg').MODELS.build(cfg.model)
    groups = build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
    by_name = {n: g for n, p in model.named_parameters() for g in groups if g['params'][0] is p}
    assert len(by_name) == len(list(model.parameters()))

    def lr_wd(name):
        return by_name[name]['lr'], by_name[name]['weight_decay']

    blk = 'backbone.model.stages.0.blocks.0.'
    assert lr_wd(blk + 'attn.q.weight') == pytest.approx((1e-5, 0.05))
    for name in ('attn.q.bias', 'norm1.weight', 'attn.query_embedding', 'attn.relative_pos_bias_local',
                 'attn.cpb.cpb_fc1.weight', 'attn.temperature'):
        assert lr_wd(blk + name) == pytest.approx((1e-5, 0.)), name
    assert lr_wd(blk + 'attn.learnable_tokens') == pytest.approx((1e-5, 0.05))
    head = [n for n in by_name if n.startswith('decode_head.')]
    assert lr_wd(next(n for n in head if n.endswith('query_embed.weight'))) == pytest.approx((1e-4, 0.))
    assert lr_wd(next(n for n in head if n.endswith('.weight') and 'norm' not in n and 'embed' not in n
                      and by_name[n]['params'][0].ndim > 1)) == pytest.approx((1e-4, 0.05))
