# official: rayleizhu/BiFormer@1697bbbeafb8680524898f1dcaac10defd0604be:object_detection/configs/coco/retinanet.1x.biformer_small.py
# remaining differences: none known beyond mmdet 2.x -> 3.x renames
_base_ = [
    '../_base_/models/retinanet_visionattn_fpn.py', '../_base_/datasets/coco_detection.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# BiFormer-S RetinaNet 1x, COCO: 45.9 box AP (BiFormer README (rayleizhu/BiFormer)); drop path 0.2, n_win 16, AdamW wd
# 1e-4
model = dict(
    backbone=dict(
        arch='biformer_small',
        out_indices=(1, 2, 3),
        drop_path_rate=0.2, n_win=16,
        init_cfg=dict(type='Pretrained', checkpoint='https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content')),
    neck=dict(in_channels=[128, 256, 512]))
# mixed precision as the official run (mmcv Fp16OptimizerHook, static loss scale 512); fp32 on CPU (see
# visionattn.mm.runner.load_config); the official RetinaNet decays every parameter (no paramwise_cfg)
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512., paramwise_cfg=dict(_delete_=True), optimizer=dict(weight_decay=1e-4))
