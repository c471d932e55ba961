_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# TransNeXt-Small Mask R-CNN 1x, COCO: 51.1 box AP, 45.5 mask AP (TransNeXt README (DaiShiResearch/TransNeXt)); drop
# path 0.6
model = dict(
    backbone=dict(
        arch='transnext_small',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-small-224-1k/resolve/main/transnext_small_224_1k.pth')),
    neck=dict(in_channels=[72, 144, 288, 576]))
