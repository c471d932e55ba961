_base_ = [
    '../_base_/models/cascade_mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# DiNAT_s-Base Cascade Mask R-CNN 3x (multi-scale + crop), COCO: 52.6 box AP, 45.3 mask AP (DiNAT_s paper /
# SHI-Labs/Neighborhood-Attention-Transformer README); the official COCO dilations
model = dict(
    backbone=dict(
        arch='dinat_s_base',
        drop_path_rate=0.6, dilations='coco',
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_base_in1k_224.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(optimizer=dict(lr=7.5e-05))
