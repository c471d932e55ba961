"""Sparsifiner's two-phase training through the project's runner (tools/train.py's load_config + build_runner): the
attention-reconstruction loss falls while only the predictors train, then the phase switches (predictors frozen, the
backbone trains with CE + distillation against the frozen dense teacher). Reduced-width model, 32x32 images
generated in tmp_path."""
import os.path as osp

import numpy as np
import pytest
import torch

from . import require

pytestmark = pytest.mark.mm
require('mmpretrain')
mm = require('visionattn.mm')

from .configs import CONFIG_DIR, strip_pretrained  # noqa: E402

CONFIG = osp.join(CONFIG_DIR, 'sparsifiner', 'sparsifiner_deit_small_patch16_224_2phase_in1k.py')
SWITCH, ITERS = 5, 8


def _images(root, per_class: int = 4, size: int = 32) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(('a', 'b')):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            img[..., c] = 255  # a class-coloured channel
            Image.fromarray(img).save(root / name / f'{i}.png')


def _config(data_root: str, work_dir: str, launcher: str = 'none'):
    from visionattn.mm.runner import load_config

    cfg = load_config(CONFIG, work_dir=work_dir, launcher=launcher)
    strip_pretrained(cfg._cfg_dict)
    assert cfg.model.pretrained is False
    # a reduced-width Sparsifiner (65 tokens: 16 reduced tokens >= the basis top-8), no stochastic depth, no mixup
    cfg.model.update(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=2, reduce_n_factor=4,
                     drop_path_rate=0.)
    cfg.model.pop('train_cfg', None)
    cfg.model.data_preprocessor = dict(
        type='ClsDataPreprocessor', num_classes=2, mean=[127.5] * 3, std=[64.] * 3, to_rgb=True)
    pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(32, 32)), dict(type='PackInputs')]
    cfg.train_dataloader = dict(
        batch_size=8, num_workers=0, persistent_workers=False,
        dataset=dict(type='CustomDataset', data_root=data_root, pipeline=pipeline),
        sampler=dict(type='InfiniteSampler', shuffle=False))
    for key in ('val_dataloader', 'val_evaluator', 'val_cfg', 'test_dataloader', 'test_evaluator', 'test_cfg'):
        cfg[key] = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=ITERS)
    cfg.custom_hooks = [dict(type='SparsifinerPhaseHook', switch_iter=SWITCH)]
    cfg.optim_wrapper.optimizer.lr = 1e-2
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=ITERS)]
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1, log_metric_by_epoch=False)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=ITERS)
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=0)
    if launcher == 'none':
        cfg.model_wrapper_cfg = None
    return cfg


def test_two_phase_recipe(tmp_path):
    from mmengine.hooks import Hook

    from visionattn.mm.runner import build_runner
    from visionattn.mm.sparsifiner import SparsifinerClassifier

    _images(tmp_path / 'data')
    runner = build_runner(_config(str(tmp_path / 'data'), str(tmp_path / 'work')))
    clf = runner.model
    assert isinstance(clf, SparsifinerClassifier)
    records = []

    def snapshot():
        student = clf.model
        return dict(
            pred=torch.cat([p.detach().flatten().clone() for n, p in student.named_parameters()
                            if '.mask_predictor.' in n]),
            backbone=torch.cat([p.detach().flatten().clone() for n, p in student.named_parameters()
                                if '.mask_predictor.' not in n]),
            teacher=torch.cat([p.detach().flatten().clone() for p in clf.teacher.parameters()]))

    class Recorder(Hook):
        def before_train(self, runner):
            records.append(dict(phase=None, losses={}, **snapshot()))

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            losses = {k: float(v.detach()) for k, v in outputs.items()}
            records.append(dict(phase=clf.phase, losses=losses, **snapshot()))

    runner.register_hook(Recorder(), 'LOWEST')
    runner.train()

    start, iters = records[0], records[1:]
    assert [r['phase'] for r in iters] == ['recon'] * SWITCH + ['distill'] * (ITERS - SWITCH)
    # phase 1: only the reconstruction loss, it falls; the backbone stays, the predictors train
    recon = [r['losses']['loss_attn_recon'] for r in iters[:SWITCH]]
    assert all(r['losses'][k] == 0 for r in iters[:SWITCH]
               for k in ('loss_cls', 'loss_cls_distill', 'loss_token_distill'))
    assert recon[-1] < 0.8 * recon[0], recon
    assert all(torch.equal(r['backbone'], start['backbone']) for r in iters[:SWITCH])
    assert not torch.equal(iters[SWITCH - 1]['pred'], start['pred'])
    # the teacher: the student's starting weights (same parameter order), never trained
    assert torch.equal(start['teacher'], torch.cat([start['backbone'], start['pred']])) or torch.equal(
        torch.sort(start['teacher'])[0], torch.sort(torch.cat([start['backbone'], start['pred']]))[0])
    assert all(torch.equal(r['teacher'], start['teacher']) for r in iters)
    # phase 2: CE + KL + token distillation; the predictors are frozen, the backbone trains
    for r in iters[SWITCH:]:
        assert {'loss_cls', 'loss_cls_distill', 'loss_token_distill'} <= set(r['losses'])
        assert r['losses']['loss_attn_recon'] == 0 and r['losses']['loss_cls'] > 0
        assert torch.equal(r['pred'], iters[SWITCH - 1]['pred'])
    assert not torch.equal(iters[-1]['backbone'], start['backbone'])
    assert all(r['losses']['loss_cls_distill'] > -1e-6 for r in iters[SWITCH:])  # a KL divergence
    student = clf.model
    assert not student.attn_recon
    assert not any(p.requires_grad for n, p in student.named_parameters() if '.mask_predictor.' in n)
    assert all(p.requires_grad for n, p in student.named_parameters() if '.mask_predictor.' not in n)
    assert not any(p.requires_grad for p in clf.teacher.parameters()) and not clf.teacher.training

    # the checkpoint holds the teacher and loads back into the classifier (a resumed run keeps the teacher)
    ckpt = torch.load(osp.join(str(tmp_path / 'work'), f'iter_{ITERS}.pth'), map_location='cpu', weights_only=False)
    assert any(k.startswith('teacher.') for k in ckpt['state_dict'])
    fresh = SparsifinerClassifier(
        'sparsifiner_deit_small_patch16_224', pretrained=False, img_size=32, patch_size=4, embed_dim=32, depth=2,
        num_heads=2, num_classes=2, reduce_n_factor=4)
    fresh.load_state_dict(ckpt['state_dict'], strict=True)
    assert torch.equal(torch.cat([p.flatten() for p in fresh.teacher.parameters()]), start['teacher'])
    # the student alone, as a timm model (checkpoint_filter_fn drops the teacher)
    from visionattn.models.sparsifiner import checkpoint_filter_fn
    student = fresh.model.__class__(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=2,
                                    reduce_n_factor=4)
    student.load_state_dict(checkpoint_filter_fn(ckpt, student), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), clf.model.state_dict().values()))


def _ddp_worker(rank: int, world: int, port: int, data_root: str, work_dir: str) -> None:
    import os

    from mmengine.hooks import Hook

    from visionattn.mm.runner import build_runner

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = _config(data_root, work_dir, launcher='pytorch')  # gloo, the config's DDP wrapper (find_unused_parameters)
    assert cfg.model_wrapper_cfg.find_unused_parameters
    runner = build_runner(cfg)
    records = []

    class Recorder(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            student = runner.model.module.model
            records.append(dict(
                phase=runner.model.module.phase,
                pred=[p.detach().clone() for n, p in student.named_parameters() if '.mask_predictor.' in n],
                backbone=[p.detach().clone() for n, p in student.named_parameters() if '.mask_predictor.' not in n]))

    runner.register_hook(Recorder(), 'LOWEST')
    runner.train()
    torch.save(records, osp.join(work_dir, f'rank{rank}.pth'))


def test_two_phase_recipe_ddp(tmp_path):
    # two processes (gloo, CPU), the config's DDP wrapper: the phase switch (requires_grad flipped on parameters DDP
    # already tracks) happens on both ranks, and they stay identical through both phases
    import socket

    import torch.multiprocessing as tmp

    _images(tmp_path / 'data')
    work = str(tmp_path / 'work')
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    tmp.spawn(_ddp_worker, args=(2, port, str(tmp_path / 'data'), work), nprocs=2, join=True)
    r0, r1 = (torch.load(osp.join(work, f'rank{r}.pth'), weights_only=False) for r in (0, 1))
    assert [r['phase'] for r in r0] == [r['phase'] for r in r1] == ['recon'] * SWITCH + ['distill'] * (ITERS - SWITCH)
    for a, b in zip(r0, r1):
        for key in ('pred', 'backbone'):
            for x, y in zip(a[key], b[key]):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert all(torch.equal(x, y) for x, y in zip(r0[0]['backbone'], r0[SWITCH - 1]['backbone']))  # frozen, phase 1
    assert all(torch.equal(x, y) for x, y in zip(r0[SWITCH - 1]['pred'], r0[-1]['pred']))  # frozen, phase 2
    assert not all(torch.equal(x, y) for x, y in zip(r0[SWITCH - 1]['backbone'], r0[-1]['backbone']))
