_base_ = [
    '../_base_/models/fpn_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_80k_adamw.py'
]
# BiFormer-B Semantic FPN, ADE20K 80k, 512x512: 49.9 mIoU (BiFormer README (rayleizhu/BiFormer)); drop path 0.3, n_win
# 8, AdamW lr 2e-4 with cosine decay
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='biformer_base',
        drop_path_rate=0.3, n_win=8,
        init_cfg=dict(type='Pretrained', checkpoint='https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content')),
    neck=dict(in_channels=[96, 192, 384, 768]),
    decode_head=dict(num_classes=150))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=80000, eta_min=0.0, by_epoch=False, begin=0, end=80000)
]
