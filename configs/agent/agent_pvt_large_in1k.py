# official: LeapLabTHU/Agent-Attention@207ce3eb357b22ef8a15f8fa21cd1f14697bbaba:agent_transformer/cfgs/agent_pvt_b.yaml
# (README: python -m torch.distributed.launch --nproc_per_node=8 main.py
# --cfg cfgs/agent_pvt_b.yaml;
# with the defaults of agent_transformer/config.py and the linear lr scaling of main.py)
# remaining differences: mmpretrain's RandAugment / random erasing / Mixup-CutMix stand for timm's; the official (Swin)
# cosine spans all epochs under the warm-up, here it follows the warm-up; the 10 cool-down epochs at min_lr are
# not reproduced (300 epochs in all)
_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# Agent-PVT-L ImageNet-1k 300 epochs: 83.7% top-1 (Agent-Attention README (LeapLabTHU/Agent-Attention))
model = dict(model_name='agent_pvt_large', drop_path_rate=0.3)
# 8 GPUs x 64 images
train_dataloader = dict(batch_size=64)
# AdamW lr 5e-4 x 512 / 512, wd 0.05, 5 warm-up epochs, cosine; grad clip 1.0
# fp32 as the official run (AMP off by default)
# the official Agent-PVT no_weight_decay() is {'cls_token'}: its position embeddings decay
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.pos_embed': dict(decay_mult=1.)}), optimizer=dict(lr=5e-4 * 512 / 512, weight_decay=0.05), clip_grad=dict(max_norm=1.0))
auto_scale_lr = dict(base_batch_size=512)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-06 / 5e-4, by_epoch=True, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-05 * 512 / 512, by_epoch=True, begin=5)
]
