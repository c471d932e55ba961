# Agent-Swin-T Mask R-CNN 3x, COCO: 47.3 box AP, 42.7 mask AP (Agent-Attention downstream/detection/README.md).
# Follows LeapLabTHU/Agent-Attention@207ce3eb357b22ef8a15f8fa21cd1f14697bbaba:downstream/detection/configs/agent_swin/agent_swin_t_mrcnn_3x_9-12-14-7.py
# (mmdet 2.x), with its _base_ files and the backbone downstream/detection/mmdet/models/backbones/agent_swin.py
# (window 56, attn_type AAAB).
# Remaining differences: mmdet 3.x config form only (AutoAugment of two policies -> RandomChoice; the same
# multi-scale + crop schedule of sizes); fp32 as the official run.
_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw_agent_swin.py'
]
model = dict(
    backbone=dict(
        arch='agent_swin_tiny',
        drop_path_rate=0.1,
        agent_shapes=((9, 9), (12, 12), (14, 14), (7, 7)),  # official downstream agent grids
        window_clamp=False,  # the downstream window rule on every map size
        init_cfg=dict(type='Pretrained', checkpoint='https://cloud.tsinghua.edu.cn/f/a2ddc1190c224f768a41/?dl=1')),
    neck=dict(in_channels=[96, 192, 384, 768]))
# 8 GPUs x 2 images, multi-scale + crop training (DETR / Sparse R-CNN augmentation); the optimizer and schedule
# of the official 3x configs: ../_base_/schedules/schedule_3x_adamw_agent_swin.py
train_dataloader = dict(batch_size=2)
