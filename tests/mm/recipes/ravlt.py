"""Recipe rows for RAVLT (tests/mm/test_recipes.py): values read from the official configs of qhfan/RALA (mmdet 2.x /
mmseg 0.x with their _base_ files; classification: classfication/run.sh with the defaults of classfication/main.py,
8 GPUs assumed, see the config headers). Official letters: t, s, m (= RAVLT-B), l."""
_REPO = 'qhfan/RALA@a86314f62103c21a1c7e6d826fe4cb0f5586e7b0'
# variant: (official letter, drop path of the downstream configs)
_VARIANTS = {'tiny': ('t', 0.1), 'small': ('s', 0.15), 'base': ('m', 0.4), 'large': ('l', 0.55)}
_NO_DECAY = {'decay_mult': 0.0}
_KEYS = {'absolute_pos_embed': _NO_DECAY, 'relative_position_bias_table': _NO_DECAY, 'norm': _NO_DECAY}
_AMP512 = {'optim_wrapper.type': 'AmpOptimWrapper', 'optim_wrapper.loss_scale': 512.0}  # mmcv Fp16OptimizerHook

RECIPES = []
for _v, (_o, _dp) in _VARIANTS.items():
    _glta = {  # the official GLTA backbone: per-output LayerNorms, BatchNorms in eval mode
        'model.backbone.arch': f'ravlt_{_v}', 'model.backbone.drop_path_rate': _dp,
        'model.backbone.out_norms': True, 'model.backbone.norm_eval': True}
    RECIPES.append(dict(
        config=f'configs/ravlt/ravlt_{_v}_in1k.py', official=f'{_REPO}:classfication/run.sh', gpus=8, expect={
            'model.model_name': f'ravlt_{_v}',
            # run.sh (RAVLT-T): --drop-path 0.05; none published for S/B/L (the downstream rate is used)
            'model.drop_path_rate': 0.05 if _v == 'tiny' else _dp,
            'train_dataloader.batch_size': 128,
            'train_dataloader.sampler.type': 'RepeatAugSampler',
            'train_dataloader.sampler.num_repeats': 3,
            'optim_wrapper.type': 'AmpOptimWrapper',  # NativeScaler
            'optim_wrapper.loss_scale': 'dynamic',
            'optim_wrapper.clip_grad': None,
            'optim_wrapper.optimizer.type': 'AdamW',
            'optim_wrapper.optimizer.lr': 1e-3,  # 5e-4 x 1024 / 512
            'optim_wrapper.optimizer.weight_decay': 0.05,
            'param_scheduler.0.end': 5,
            'param_scheduler.0.start_factor': 1e-3,  # warmup-lr 1e-6
            'param_scheduler.1.type': 'CosineAnnealingLR',
            'param_scheduler.1.eta_min': 1e-5,
            'train_cfg.max_epochs': 300,
            'custom_hooks.0.type': 'EMAHook',
            'custom_hooks.0.momentum': 1 - 0.99996 ** 2,  # decay 0.99996 ** (1024 / 512)
            'model.loss.label_smooth_val': 0.1,
            'model.train_cfg.augments.0.alpha': 0.8,
            'model.train_cfg.augments.1.alpha': 1.0,
        }))
    _fpn = f'RALA_FPN_{_o}_1x.py' if _v != 'tiny' else 'RALA_FPN_s_1x.py'  # no RAVLT-T file: the S one
    RECIPES.append(dict(
        config=f'configs/ravlt/fpn_ravlt_{_v}_ade20k.py', official=f'{_REPO}:segmentation/configs/RALA/{_fpn}',
        gpus=8, expect=dict(_glta, **{
            'train_dataloader.batch_size': 2,
            'crop_size': (512, 512),
            'optim_wrapper.type': 'OptimWrapper',  # no fp16 in the official Semantic FPN configs
            'optim_wrapper.optimizer.type': 'AdamW',
            'optim_wrapper.optimizer.lr': 1e-4,
            'optim_wrapper.optimizer.weight_decay': 1e-4,
            'param_scheduler': [{'type': 'PolyLR', 'eta_min': 1e-6, 'power': 0.9, 'begin': 0, 'end': 80000,
                                 'by_epoch': False}],
            'train_cfg.max_iters': 80000,
            'model.test_cfg.mode': 'whole',
        })))
    if _v != 'tiny':
        RECIPES.append(dict(
            config=f'configs/ravlt/upernet_ravlt_{_v}_ade20k.py',
            official=f'{_REPO}:segmentation/configs/RALA/RALA_Uper_{_o}_2x.py', gpus=8,
            expect=dict(_glta, **_AMP512, **{
                'train_dataloader.batch_size': 2,
                'crop_size': (512, 512),
                'optim_wrapper.optimizer.type': 'AdamW',
                'optim_wrapper.optimizer.lr': 6e-5,
                'optim_wrapper.optimizer.betas': (0.9, 0.999),
                'optim_wrapper.optimizer.weight_decay': 0.01,
                'optim_wrapper.paramwise_cfg': {'custom_keys': _KEYS},
                'param_scheduler.0.type': 'LinearLR',
                'param_scheduler.0.start_factor': 1e-6,
                'param_scheduler.0.end': 1500,
                'param_scheduler.1.type': 'PolyLR',
                'param_scheduler.1.power': 1.0,
                'param_scheduler.1.eta_min': 0.0,
                'train_cfg.max_iters': 160000,
                'model.test_cfg.mode': 'whole',
            })))
    _det = dict(_glta, **_AMP512, **{
        'train_dataloader.batch_size': 2,
        'optim_wrapper.optimizer.type': 'AdamW',
        'optim_wrapper.optimizer.lr': 1e-4,
        'param_scheduler.0.type': 'LinearLR',
        'param_scheduler.0.start_factor': 0.001,
        'param_scheduler.0.end': 500,
    })
    RECIPES.append(dict(
        config=f'configs/ravlt/mask_rcnn_ravlt_{_v}_fpn_1x_coco.py',
        official=f'{_REPO}:detection/configs/RALA/maskrcnn_{_o}_1x.py', gpus=8, expect=dict(_det, **{
            'optim_wrapper.optimizer.weight_decay': 0.05,
            'optim_wrapper.paramwise_cfg': {'custom_keys': _KEYS},
            'param_scheduler.1.milestones': [8, 11],
            'train_cfg.max_epochs': 12,
        })))
    RECIPES.append(dict(
        config=f'configs/ravlt/retinanet_ravlt_{_v}_fpn_1x_coco.py',
        official=f'{_REPO}:detection/configs/RALA/retinanet_{_o}_1x.py', gpus=8, expect=dict(_det, **{
            'model.backbone.out_indices': (1, 2, 3),
            'optim_wrapper.optimizer.weight_decay': 1e-4,
            'optim_wrapper.paramwise_cfg': {},
            'param_scheduler.1.milestones': [8, 11],
            'train_cfg.max_epochs': 12,
        })))
    if _v != 'tiny':
        _3x = dict(_det, **{
            'optim_wrapper.optimizer.weight_decay': 0.05,
            'param_scheduler.1.milestones': [27, 33],
            'train_cfg.max_epochs': 36,
            # the two AutoAugment policies (multi-scale, or crop + rescale)
            'train_dataloader.dataset.pipeline.3.type': 'RandomChoice',
            'train_dataloader.dataset.pipeline.3.transforms.1.1.crop_size': (384, 600),
        })
        RECIPES.append(dict(
            config=f'configs/ravlt/mask_rcnn_ravlt_{_v}_fpn_3x_coco.py',
            official=f'{_REPO}:detection/configs/RALA/maskrcnn_{_o}_3x.py', gpus=8, expect=dict(_3x, **{
                'optim_wrapper.paramwise_cfg': {'custom_keys': _KEYS},
                'model.type': 'MaskRCNN',
            })))
        RECIPES.append(dict(
            config=f'configs/ravlt/cascade_mask_rcnn_ravlt_{_v}_fpn_3x_coco.py',
            official=f'{_REPO}:detection/configs/RALA/casrcnn_{_o}_3x.py', gpus=8, expect=dict(_3x, **{
                'optim_wrapper.paramwise_cfg': {'norm_decay_mult': 0.0,
                                                'custom_keys': dict(_KEYS, rpe_table=_NO_DECAY)},
                'model.type': 'CascadeRCNN',
                'model.roi_head.bbox_head.0.loss_bbox.type': 'GIoULoss',
            })))
