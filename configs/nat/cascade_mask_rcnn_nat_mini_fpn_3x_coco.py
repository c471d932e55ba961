_base_ = [
    '../_base_/models/cascade_mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# NAT-Mini Cascade Mask R-CNN 3x (multi-scale + crop), COCO: 50.3 box AP, 43.6 mask AP (NAT paper /
# SHI-Labs/Neighborhood-Attention-Transformer README)
model = dict(
    backbone=dict(
        arch='nat_mini',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
