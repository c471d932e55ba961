"""Recipe rows for LITv2 (tests/mm/test_recipes.py): values read from the official configs of ziplab/LITv2 (8 GPUs;
classification: the yaml files with the defaults of classification/config.py and main.py's lr scaling; detection:
the mmdet 2.x configs with their schedule_1x base; segmentation: the mmseg 0.x configs with schedule_80k)."""
_REPO = 'ziplab/LITv2@7501c8662991cad6db780b61fac0886b56a76588'
# variant: (official letter, classification drop path, dense drop path)
_VARIANTS = {'small': ('s', 0.2, 0.2), 'medium': ('m', 0.3, 0.2), 'base': ('b', 0.5, 0.3)}
_CKPT = 'https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_{}.pth'

RECIPES = []
for _v, (_s, _dp_cls, _dp) in _VARIANTS.items():
    RECIPES.append(dict(
        config=f'configs/litv2/litv2_{_v}_in1k.py',
        official=f'{_REPO}:classification/configs/litv2-{_v}.yaml', gpus=8, expect={
            'model.model_name': f'litv2_{_v}',
            'model.drop_path_rate': _dp_cls,
            'train_dataloader.batch_size': 128,
            'optim_wrapper.type': 'AmpOptimWrapper',  # apex O1
            'optim_wrapper.loss_scale': 'dynamic',
            'optim_wrapper.optimizer.type': 'AdamW',
            'optim_wrapper.optimizer.lr': 1e-3,  # 5e-4 x 1024 / 512
            'optim_wrapper.optimizer.weight_decay': 0.05,
            'optim_wrapper.optimizer.eps': 1e-8,
            'optim_wrapper.optimizer.betas': (0.9, 0.999),
            'optim_wrapper.clip_grad.max_norm': 5.0,
            'optim_wrapper.paramwise_cfg.norm_decay_mult': 0.0,  # 1-D parameters and biases: no decay
            'optim_wrapper.paramwise_cfg.bias_decay_mult': 0.0,
            'optim_wrapper.paramwise_cfg.flat_decay_mult': 0.0,
            # no_weight_decay() / _keywords(): absolute_pos_embed, relative_position_bias_table (LITv2 has neither);
            # OFFSET_LR_MULTI 0.01 on the offset convolutions' weights
            'optim_wrapper.paramwise_cfg.custom_keys': {
                '.pos_embed': {'decay_mult': 0.0}, '.cls_token': {'decay_mult': 0.0}, '.rpb': {'decay_mult': 0.0},
                '.relative_position_bias_table': {'decay_mult': 0.0}, '.conv_offset.weight': {'lr_mult': 0.01}},
            'param_scheduler.0.type': 'LinearLR',
            'param_scheduler.0.start_factor': 1e-3,  # WARMUP_LR 5e-7 x 2 / 1e-3
            'param_scheduler.0.end': 20,
            'param_scheduler.1.type': 'CosineAnnealingLR',
            'param_scheduler.1.eta_min': 1e-5,  # MIN_LR 5e-6 x 2
            'train_cfg.max_epochs': 300,
            'model.loss.label_smooth_val': 0.1,
            'model.train_cfg.augments.0.alpha': 0.8,
            'model.train_cfg.augments.1.alpha': 1.0,
            'train_dataloader.sampler.type': 'DefaultSampler',
        }))
    for _suffix, _ws in (('', (0, 0, 2, 1)), ('_ws_4', (0, 0, 4, 1))):
        _backbone = {
            'model.backbone.arch': f'litv2_{_v}',
            'model.backbone.drop_path_rate': _dp,
            'model.backbone.init_cfg.checkpoint': _CKPT.format(_s),
            'train_dataloader.batch_size': 2,
            'optim_wrapper.type': 'AmpOptimWrapper',  # DistOptimizerHook use_fp16=True (apex O1)
            'optim_wrapper.loss_scale': 'dynamic',
            'optim_wrapper.optimizer.type': 'AdamW',
            'optim_wrapper.optimizer.weight_decay': 1e-4,
            'param_scheduler.0.type': 'LinearLR',
            'param_scheduler.0.start_factor': 0.001,
            'param_scheduler.0.end': 500,
            'param_scheduler.1.milestones': [8, 11],
            'train_cfg.max_epochs': 12,
        }
        if _ws != (0, 0, 2, 1):
            _backbone['model.backbone.local_ws'] = _ws
        RECIPES.append(dict(
            config=f'configs/litv2/mask_rcnn_litv2_{_v}_fpn_1x_coco{_suffix}.py',
            official=f'{_REPO}:detection/configs/litv2/mask_rcnn_litv2_{_s}_fpn_1x_coco{_suffix}.py', gpus=8,
            expect=dict(_backbone, **{
                'optim_wrapper.optimizer.lr': 2e-4,
                'optim_wrapper.paramwise_cfg': {'custom_keys': {'norm': {'decay_mult': 0.0}}},
            })))
        RECIPES.append(dict(
            config=f'configs/litv2/retinanet_litv2_{_v}_fpn_1x_coco{_suffix}.py',
            official=f'{_REPO}:detection/configs/litv2/retinanet_litv2_{_s}_fpn_1x_coco{_suffix}.py', gpus=8,
            expect=dict(_backbone, **{
                'optim_wrapper.optimizer.lr': 1e-4,
                'optim_wrapper.paramwise_cfg': {},  # the official dict({'norm': ...}) is ignored by mmcv
                'model.neck.add_extra_convs': 'on_input',
                'model.neck.num_outs': 5,
            })))
    RECIPES.append(dict(
        config=f'configs/litv2/fpn_litv2_{_v}_ade20k.py',
        official=f'{_REPO}:segmentation/configs/litv2/litv2_{_s}_fpn_r50_512x512_80k_ade20k.py', gpus=8, expect={
            'model.backbone.arch': f'litv2_{_v}',
            'model.backbone.drop_path_rate': _dp,
            'train_dataloader.batch_size': 2,
            'crop_size': (512, 512),
            'optim_wrapper.type': 'OptimWrapper',  # no fp16 in the official config
            'optim_wrapper.optimizer.type': 'AdamW',
            'optim_wrapper.optimizer.lr': 1e-4,
            'optim_wrapper.optimizer.weight_decay': 1e-4,
            'param_scheduler': [{'type': 'PolyLR', 'eta_min': 1e-6, 'power': 0.9, 'begin': 0, 'end': 80000,
                                 'by_epoch': False}],
            'train_cfg.max_iters': 80000,
            'model.test_cfg.mode': 'whole',
            'model.neck.num_outs': 4,
            'model.decode_head.num_classes': 150,
        }))
