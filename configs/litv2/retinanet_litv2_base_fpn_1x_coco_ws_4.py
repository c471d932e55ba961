# official: ziplab/LITv2@7501c8662991cad6db780b61fac0886b56a76588:detection/configs/litv2/retinanet_litv2_b_fpn_1x_coco_ws_4.py
# (mmdet 2.x form; its _base_ files as at commit f320e437a5b59f78d7f5abd90007250ce820c053, the code the released
# checkpoints were trained with)
# remaining differences: mmdet 3.x config form only (the official FPN takes four levels from start_level 1, here the
# backbone gives the last three: the same P3-P7); apex O1 -> torch AMP with a dynamic loss scale; the official B
# configs' gradient checkpointing (use_checkpoint) is a memory setting, left off
_base_ = [
    '../_base_/models/retinanet_visionattn_fpn.py', '../_base_/datasets/coco_detection.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# LITv2-B RetinaNet 1x, COCO: 46.3 box AP (LITv2 README (ziplab/LITv2))
# HiLo window 4 in stage 3; AdamW lr 1e-4 wd 1e-4
model = dict(
    backbone=dict(
        arch='litv2_base',
        out_indices=(1, 2, 3),
        local_ws=(0, 0, 4, 1),  # HiLo window 4 in stage 3 (official *_ws_4)
        drop_path_rate=0.3, out_norms='mmdet',
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_b.pth')),
    neck=dict(in_channels=[256, 512, 1024]))
# 8 GPUs x 2 images; apex O1 mixed precision (DistOptimizerHook use_fp16=True, dynamic loss scale), fp32 on CPU. The
# official paramwise_cfg=dict({'norm': ...}) is no custom_keys entry, which mmcv ignores: every parameter decays
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(_delete_=True))
