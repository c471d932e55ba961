_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# RAVLT-S Mask R-CNN 1x, COCO: 49.8 box AP, 44.6 mask AP (RALA README (qhfan/RALA))
model = dict(
    backbone=dict(
        arch='ravlt_small',
        drop_path_rate=0.15,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_S.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))
