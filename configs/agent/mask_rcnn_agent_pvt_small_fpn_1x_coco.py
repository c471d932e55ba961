# Agent-PVT-S Mask R-CNN 1x, COCO: 44.5 box AP (Agent-Attention downstream/detection/README.md).
# Follows LeapLabTHU/Agent-Attention@207ce3eb357b22ef8a15f8fa21cd1f14697bbaba:downstream/detection/configs/agent_pvt/agent_pvt_s_mrcnn_1x_12-16-28-28.py
# (mmdet 2.x), with its _base_ files and the backbone downstream/detection/mmdet/models/backbones/agent_pvt.py.
# Remaining differences: mmdet 3.x config form only (data preprocessor instead of Normalize/Pad; 500-iteration linear
# warm-up ratio 0.001 and steps at epochs 8 and 11 as the official schedule_1x); fp32 as the official run.
_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
model = dict(
    backbone=dict(
        arch='agent_pvt_small',
        drop_path_rate=0.2,
        # official downstream agent grids (the classification weights' 3x3, 4x4, 7x7, 7x7 agents pooled to these;
        # img_size stays 224, the biases are interpolated to every input as the official backbone does)
        agent_shapes=((12, 12), (16, 16), (28, 28), (28, 28)),
        init_cfg=dict(type='Pretrained', checkpoint='https://cloud.tsinghua.edu.cn/f/36b8be9a8863456685a3/?dl=1')),
    neck=dict(in_channels=[64, 128, 320, 512]))
# 8 GPUs x 2 images; AdamW lr 2e-4, wd 1e-4 on every parameter (the official optimizer has no paramwise_cfg)
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(optimizer=dict(lr=2e-4, weight_decay=1e-4), paramwise_cfg=dict(_delete_=True))
