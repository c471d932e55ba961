_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# DiNAT-Mini Mask R-CNN 3x (multi-scale), COCO: 47.2 box AP, 42.5 mask AP (DiNAT paper / SHI-Labs/Neighborhood-
# Attention-Transformer DiNAT.md); the official COCO dilations
model = dict(
    backbone=dict(
        arch='dinat_mini',
        drop_path_rate=0.2, dilations='coco',
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
