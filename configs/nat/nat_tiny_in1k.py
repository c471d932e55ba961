# official: SHI-Labs/Neighborhood-Attention-Transformer@d334f5bb0bd73cad05e5aeaf7c14cce3876a9650:classification/configs/nat_tiny.yml
# remaining differences: timm's 10 cool-down epochs at min_lr are not reproduced (300 epochs in all); the timm data pipeline (RandAugment, mixup/cutmix, random erasing) is mmpretrain's equivalent
_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# NAT-Tiny ImageNet-1k 300 epochs: 83.2% top-1 (NAT paper / SHI-Labs/Neighborhood-Attention-Transformer README)
model = dict(model_name='nat_tiny', drop_path_rate=0.2)
# 8 GPUs x 128 images
train_dataloader = dict(batch_size=128)
# mixed precision as the official run (timm native AMP, amp: True, dynamic loss scale); fp32 on CPU
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
# official yml: warm-up 20 epochs from 1e-6, cosine to min_lr 5e-6 (timm also cools down 10 more epochs at min_lr:
# not reproduced, 300 epochs in all)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=5e-6, by_epoch=True, begin=20)
]
