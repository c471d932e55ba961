_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# TransNeXt-Tiny Mask R-CNN 1x, COCO: 49.9 box AP, 44.6 mask AP (TransNeXt README (DaiShiResearch/TransNeXt)); drop
# path 0.4
model = dict(
    backbone=dict(
        arch='transnext_tiny',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-tiny-224-1k/resolve/main/transnext_tiny_224_1k.pth')),
    neck=dict(in_channels=[72, 144, 288, 576]))
