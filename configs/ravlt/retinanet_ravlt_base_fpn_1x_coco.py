_base_ = [
    '../_base_/models/retinanet_visionattn_fpn.py', '../_base_/datasets/coco_detection.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# RAVLT-B RetinaNet 1x, COCO: 49.8 box AP (RALA README (qhfan/RALA)); AdamW wd 1e-4
model = dict(
    backbone=dict(
        arch='ravlt_base',
        out_indices=(1, 2, 3),
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_B.pth')),
    neck=dict(in_channels=[192, 384, 512]))
optim_wrapper = dict(optimizer=dict(weight_decay=1e-4))
