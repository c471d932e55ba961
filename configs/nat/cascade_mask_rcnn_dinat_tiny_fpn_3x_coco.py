_base_ = [
    '../_base_/models/cascade_mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# DiNAT-Tiny Cascade Mask R-CNN 3x (multi-scale + crop), COCO: 52.2 box AP, 45.1 mask AP (DiNAT paper /
# SHI-Labs/Neighborhood-Attention-Transformer README); the official COCO dilations
model = dict(
    backbone=dict(
        arch='dinat_tiny',
        drop_path_rate=0.3, dilations='coco',
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
