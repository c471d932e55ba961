# official: LeapLabTHU/Agent-Attention@207ce3eb357b22ef8a15f8fa21cd1f14697bbaba:agent_transformer/cfgs/agent_deit_t.yaml
# (README: python -m torch.distributed.launch --nproc_per_node=8 main.py
# --cfg cfgs/agent_deit_t.yaml;
# with the defaults of agent_transformer/config.py and the linear lr scaling of main.py)
# remaining differences: mmpretrain's RandAugment / random erasing / Mixup-CutMix stand for timm's; the official (Swin)
# cosine spans all epochs under the warm-up, here it follows the warm-up
_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# Agent-DeiT-T ImageNet-1k 300 epochs: 74.9% top-1 (Agent-Attention README (LeapLabTHU/Agent-Attention))
model = dict(model_name='agent_deit_tiny', drop_path_rate=0.0)
# 8 GPUs x 512 images
train_dataloader = dict(batch_size=512)
# AdamW lr 5e-4 x 4096 / 512, wd 0.05, 20 warm-up epochs, cosine; grad clip 5.0
# fp32 as the official run (AMP off by default)
optim_wrapper = dict(optimizer=dict(lr=5e-4 * 4096 / 512, weight_decay=0.05), clip_grad=dict(max_norm=5.0))
auto_scale_lr = dict(base_batch_size=4096)
param_scheduler = [
    dict(type='LinearLR', start_factor=5e-07 / 5e-4, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=5e-06 * 4096 / 512, by_epoch=True, begin=20)
]
