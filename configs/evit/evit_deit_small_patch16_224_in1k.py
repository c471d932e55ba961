# official: youweiliang/evit@5ca95a7cf4a8637193284895c5bc0dd9dc365982:run_code.sh (with main.py defaults)
# remaining differences: the timm/DeiT data pipeline (RandAugment, mixup/cutmix switch prob, random erasing) is
# mmpretrain's equivalent; timm's 10 cool-down epochs at min_lr are not reproduced (300 epochs in all)
_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# EViT/0.7-DeiT-S ImageNet-1k 300 epochs, DeiT recipe with the keep-rate warm-up (1 for 10 epochs, cosine to 0.7 over
# 100): 79.5% top-1 at keep rate 0.7 with fusion (78.5-79.9% over keep rates 0.5-0.9) (EViT README (youweiliang/evit))
model = dict(model_name='evit_deit_small_patch16_224', drop_path_rate=0.1, keep_rate=0.7, fuse_token=True)
# 8 GPUs x 256 images (EViT README: --batch-size 256 on 8 GPUs), DeiT repeated augmentation (RASampler, 3 repeats);
# DeiT lr 5e-4 x total batch / 512
train_dataloader = dict(batch_size=256, sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True))
# timm NativeScaler AMP (dynamic loss scale), no gradient clipping (main.py: --clip-grad None); fp32 on CPU
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic', optimizer=dict(lr=5e-4 * 2048 / 512), clip_grad=None)
auto_scale_lr = dict(base_batch_size=2048)
custom_hooks = [dict(type='KeepRateHook', base_keep_rate=0.7, shrink_start_epoch=10, shrink_epochs=100)]
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 2e-3, by_epoch=True, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5)
]
