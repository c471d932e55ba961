# Agent-PVT-L RetinaNet 1x, COCO: 46.8 box AP (Agent-Attention downstream/detection/README.md).
# Follows LeapLabTHU/Agent-Attention@207ce3eb357b22ef8a15f8fa21cd1f14697bbaba:downstream/detection/configs/agent_pvt/agent_pvt_l_rtn_1x_12-16-28-28.py
# (mmdet 2.x), with its _base_ files and the backbone downstream/detection/mmdet/models/backbones/agent_pvt.py.
# Remaining differences: the backbone returns stages 1-3 to an FPN with start_level 0 (official: all four stages,
# start_level 1: the same network, stage 0 is never used); mmdet 3.x config form; fp32 as the official run.
_base_ = [
    '../_base_/models/retinanet_visionattn_fpn.py', '../_base_/datasets/coco_detection.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
model = dict(
    backbone=dict(
        arch='agent_pvt_large',
        out_indices=(1, 2, 3),
        drop_path_rate=0.3,
        agent_shapes=((12, 12), (16, 16), (28, 28), (28, 28)),  # official downstream agent grids
        init_cfg=dict(type='Pretrained', checkpoint='https://cloud.tsinghua.edu.cn/f/040cfe0cfbbe4762ad09/?dl=1')),
    neck=dict(in_channels=[128, 320, 512]))
# 8 GPUs x 2 images; AdamW lr 1e-4, wd 1e-4 on every parameter (no paramwise_cfg in the official optimizer)
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=1e-4), paramwise_cfg=dict(_delete_=True))
