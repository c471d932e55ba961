# official: rayleizhu/BiFormer@1697bbbeafb8680524898f1dcaac10defd0604be:configs/train_args.yaml
# (README: python hydra_main.py ... batch_size=128 slurm.nodes=1 slurm.ngpus=8 model=biformer_small drop_path=0.15
# lr=5e-4, with the defaults of configs/train_args.yaml and main.py;
# drop path 0.15: the repository gives only BiFormer-S's (0.15), kept from the earlier config)
# remaining differences: mmpretrain's RandAugment / random erasing / Mixup-CutMix stand for timm's; timm's 10
# cool-down epochs at min_lr are not reproduced (300 epochs in all)
_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# BiFormer-T ImageNet-1k 300 epochs (DeiT recipe, EMA): 81.4% top-1 (BiFormer README (rayleizhu/BiFormer))
model = dict(model_name='biformer_tiny', drop_path_rate=0.15)
# 8 GPUs x 128 images, DeiT repeated augmentation (RASampler, 3 repeats)
train_dataloader = dict(batch_size=128, sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True))
# AdamW lr 5e-4 x 1024 / 512, wd 0.05, 5 warm-up epochs, cosine; no gradient clipping (clip_grad null)
# timm NativeScaler / torch AMP (dynamic loss scale); fp32 on CPU (visionattn.mm.runner.load_config)
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic', optimizer=dict(lr=5e-4 * 1024 / 512, weight_decay=0.05), clip_grad=None)
auto_scale_lr = dict(base_batch_size=1024)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 1e-3, by_epoch=True, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5)
]
# model EMA (train_args.yaml: model_ema true, decay 0.99996 per iteration, unscaled)
custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]
