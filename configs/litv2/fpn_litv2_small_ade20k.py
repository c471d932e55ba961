_base_ = [
    '../_base_/models/fpn_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_80k_adamw.py'
]
# LITv2-S Semantic FPN, ADE20K 80k, 512x512: 44.3 mIoU (LITv2 README (ziplab/LITv2))
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='litv2_small',
        drop_path_rate=0.2, out_norms='mmseg',
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_s.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]),
    decode_head=dict(num_classes=150))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
