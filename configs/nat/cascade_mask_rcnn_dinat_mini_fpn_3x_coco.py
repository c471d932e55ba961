_base_ = [
    '../_base_/models/cascade_mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# DiNAT-Mini Cascade Mask R-CNN 3x (multi-scale + crop), COCO: 51.2 box AP, 44.4 mask AP (DiNAT paper /
# SHI-Labs/Neighborhood-Attention-Transformer README); the official COCO dilations
model = dict(
    backbone=dict(
        arch='dinat_mini',
        drop_path_rate=0.2, dilations='coco',
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
