_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
# Agent-Swin-S UperNet, ADE20K 160k, 512x512: 48.08 mIoU (Agent-Attention README (LeapLabTHU/Agent-Attention)); the
# official downstream agent grids
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='agent_swin_small',
        drop_path_rate=0.3, agent_shapes=((9, 9), (12, 12), (7, 7), (7, 7)),
        init_cfg=dict(type='Pretrained', checkpoint='https://cloud.tsinghua.edu.cn/f/f607172c9fea4d6e99bb/?dl=1')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
