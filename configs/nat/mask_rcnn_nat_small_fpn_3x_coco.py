_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# NAT-Small Mask R-CNN 3x (multi-scale), COCO: 48.4 box AP, 43.2 mask AP (NAT paper / SHI-Labs/Neighborhood-Attention-
# Transformer README)
model = dict(
    backbone=dict(
        arch='nat_small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_small.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
