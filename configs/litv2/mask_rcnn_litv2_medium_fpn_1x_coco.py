_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# LITv2-M Mask R-CNN 1x, COCO: 46.8 box AP, 42.3 mask AP (LITv2 README (ziplab/LITv2)); AdamW lr 2e-4 wd 1e-4
model = dict(
    backbone=dict(
        arch='litv2_medium',
        drop_path_rate=0.2, out_norms='mmdet',
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_m.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(optimizer=dict(lr=2e-4, weight_decay=1e-4))
