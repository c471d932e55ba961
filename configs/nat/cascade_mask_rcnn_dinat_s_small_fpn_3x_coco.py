_base_ = [
    '../_base_/models/cascade_mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# DiNAT_s-Small Cascade Mask R-CNN 3x (multi-scale + crop), COCO: 52.3 box AP, 45.2 mask AP (DiNAT_s paper /
# SHI-Labs/Neighborhood-Attention-Transformer README); the official COCO dilations
model = dict(
    backbone=dict(
        arch='dinat_s_small',
        drop_path_rate=0.5, dilations='coco',
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_small_in1k_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
