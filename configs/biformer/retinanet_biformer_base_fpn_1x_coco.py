_base_ = [
    '../_base_/models/retinanet_visionattn_fpn.py', '../_base_/datasets/coco_detection.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# BiFormer-B RetinaNet 1x, COCO: 47.1 box AP (BiFormer README (rayleizhu/BiFormer)); drop path 0.3, n_win 16, AdamW wd
# 1e-4
model = dict(
    backbone=dict(
        arch='biformer_base',
        out_indices=(1, 2, 3),
        drop_path_rate=0.3, n_win=16,
        init_cfg=dict(type='Pretrained', checkpoint='https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content')),
    neck=dict(in_channels=[192, 384, 768]))
optim_wrapper = dict(optimizer=dict(weight_decay=1e-4))
