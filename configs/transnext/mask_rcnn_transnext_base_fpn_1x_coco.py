_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# TransNeXt-Base Mask R-CNN 1x, COCO: 51.7 box AP, 45.9 mask AP (TransNeXt README (DaiShiResearch/TransNeXt)); drop
# path 0.7
model = dict(
    backbone=dict(
        arch='transnext_base',
        drop_path_rate=0.7,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-base-224-1k/resolve/main/transnext_base_224_1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
