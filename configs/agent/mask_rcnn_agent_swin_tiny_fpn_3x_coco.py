_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# Agent-Swin-T Mask R-CNN 3x, COCO: 47.3 box AP, 42.7 mask AP (Agent-Attention README (LeapLabTHU/Agent-Attention);
# the official pipeline uses DETR-style multi-scale AutoAugment also for 1x); the official downstream agent grids
model = dict(
    backbone=dict(
        arch='agent_swin_tiny',
        drop_path_rate=0.2, agent_shapes=((9, 9), (12, 12), (14, 14), (7, 7)),
        init_cfg=dict(type='Pretrained', checkpoint='https://cloud.tsinghua.edu.cn/f/a2ddc1190c224f768a41/?dl=1')),
    neck=dict(in_channels=[96, 192, 384, 768]))
