_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# Agent-PVT-S Mask R-CNN 1x, COCO: 44.5 box AP, 41.2 mask AP (Agent-Attention README (LeapLabTHU/Agent-Attention));
# AdamW lr 2e-4 wd 1e-4
model = dict(
    backbone=dict(
        arch='agent_pvt_small',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='https://cloud.tsinghua.edu.cn/f/36b8be9a8863456685a3/?dl=1')),
    neck=dict(in_channels=[64, 128, 320, 512]))
optim_wrapper = dict(optimizer=dict(lr=2e-4, weight_decay=1e-4))
