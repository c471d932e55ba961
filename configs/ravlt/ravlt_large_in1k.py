# official: qhfan/RALA@a86314f62103c21a1c7e6d826fe4cb0f5586e7b0:classfication/run.sh (with the defaults of classfication/main.py)
# remaining differences: run.sh is the RAVLT-T command; the GPU count is not given (torchrun
# without --nproc-per-node): 8 x 128 = 1024 images (the DeiT setting) is assumed, with main.py's lr rule (5e-4 x total
# batch / 512) and EMA rule (decay 0.99996 ** (total batch / 512)); mmpretrain's RandAugment / random erasing /
# Mixup-CutMix stand for timm's; timm's 10 cool-down epochs at min_lr are not reproduced (300 epochs in all)
_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# RAVLT-L ImageNet-1k 300 epochs: 85.8% top-1 (RALA README (qhfan/RALA), README until 2025-02; the abstract gives
# 84.4% for RAVLT-S)
# drop path 0.55: the repository publishes no classification drop path for RAVLT-L (run.sh is
# RAVLT-T's); the rate of its downstream configs is used
model = dict(model_name='ravlt_large', drop_path_rate=0.55)
# 8 GPUs x 128 images (--batch-size 128), DeiT repeated augmentation (RASampler, 3 repeats: main.py default)
train_dataloader = dict(batch_size=128, sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True))
# timm NativeScaler AMP (dynamic loss scale), no gradient clipping (--clip-grad None); fp32 on CPU. AdamW wd 0.05,
# 5 warm-up epochs from 1e-6 (run.sh --warmup-epochs 5), cosine to 1e-5
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic', optimizer=dict(lr=5e-4 * 1024 / 512), clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 1e-3, by_epoch=True, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5)
]
# model EMA on by default in main.py (ModelEma, decay 0.99996 ** (1024 / 512) per iteration)
custom_hooks = [dict(type='EMAHook', momentum=1 - 0.99996 ** 2, priority='ABOVE_NORMAL')]
