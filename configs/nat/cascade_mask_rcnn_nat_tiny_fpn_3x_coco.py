_base_ = [
    '../_base_/models/cascade_mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# NAT-Tiny Cascade Mask R-CNN 3x (multi-scale + crop), COCO: 51.4 box AP, 44.5 mask AP (NAT paper /
# SHI-Labs/Neighborhood-Attention-Transformer README)
model = dict(
    backbone=dict(
        arch='nat_tiny',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
