_base_ = [
    '../_base_/models/cascade_mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# NAT-Base Cascade Mask R-CNN 3x (multi-scale + crop), COCO: 52.3 box AP, 45.1 mask AP (NAT paper /
# SHI-Labs/Neighborhood-Attention-Transformer README)
model = dict(
    backbone=dict(
        arch='nat_base',
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_base.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
