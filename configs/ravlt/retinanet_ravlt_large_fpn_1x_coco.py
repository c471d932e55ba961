_base_ = [
    '../_base_/models/retinanet_visionattn_fpn.py', '../_base_/datasets/coco_detection.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# RAVLT-L RetinaNet 1x, COCO: 50.9 box AP (RALA README (qhfan/RALA)); AdamW wd 1e-4
model = dict(
    backbone=dict(
        arch='ravlt_large',
        out_indices=(1, 2, 3),
        drop_path_rate=0.55,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_L.pth')),
    neck=dict(in_channels=[192, 448, 640]))
optim_wrapper = dict(optimizer=dict(weight_decay=1e-4))
