# Agent-PVT-S Semantic FPN, ADE20K 40k: 44.18 mIoU (Agent-Attention downstream/segmentation/README.md).
# Follows LeapLabTHU/Agent-Attention@207ce3eb357b22ef8a15f8fa21cd1f14697bbaba:downstream/segmentation/configs/agent_pvt/fpn_agent_pvt_s_12-16-28-28.py
# (mmseg 0.x: _base_/models/fpn_r50.py, ade20k, schedule_40k), backbone downstream/segmentation/mmseg/models/
# backbones/agent_pvt.py.
# Remaining differences: mmseg 1.x config form only (SegDataPreProcessor; PolyLR power 0.9 to 0 over 40k iterations
# without warm-up as the official lr_config); fp32 as the official run.
_base_ = [
    '../_base_/models/fpn_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_80k_adamw.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='agent_pvt_small',
        drop_path_rate=0.1,
        agent_shapes=((12, 12), (16, 16), (28, 28), (28, 28)),  # official downstream agent grids
        init_cfg=dict(type='Pretrained', checkpoint='https://cloud.tsinghua.edu.cn/f/36b8be9a8863456685a3/?dl=1')),
    neck=dict(in_channels=[64, 128, 320, 512]),
    decode_head=dict(num_classes=150))
# 8 GPUs x 2 images; AdamW lr 2e-4, wd 1e-4 on every parameter (no paramwise_cfg in the official optimizer)
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(optimizer=dict(lr=2e-4, weight_decay=1e-4))
train_cfg = dict(max_iters=40000, val_interval=4000)
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=40000, by_epoch=False)
]
