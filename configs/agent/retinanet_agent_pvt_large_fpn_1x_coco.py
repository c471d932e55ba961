_base_ = [
    '../_base_/models/retinanet_visionattn_fpn.py', '../_base_/datasets/coco_detection.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# Agent-PVT-L RetinaNet 1x, COCO: 46.8 box AP (Agent-Attention README (LeapLabTHU/Agent-Attention))
model = dict(
    backbone=dict(
        arch='agent_pvt_large',
        out_indices=(1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='https://cloud.tsinghua.edu.cn/f/040cfe0cfbbe4762ad09/?dl=1')),
    neck=dict(in_channels=[128, 320, 512]))
