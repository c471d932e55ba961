# official: rayleizhu/BiFormer@1697bbbeafb8680524898f1dcaac10defd0604be:object_detection/configs/coco/maskrcnn.1x.biformer_small.py
# remaining differences: none known beyond mmdet 2.x -> 3.x renames
_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# BiFormer-S Mask R-CNN 1x, COCO: 47.8 box AP, 43.2 mask AP (BiFormer README (rayleizhu/BiFormer)); drop path 0.2,
# n_win 16
model = dict(
    backbone=dict(
        arch='biformer_small',
        drop_path_rate=0.2, n_win=16,
        init_cfg=dict(type='Pretrained', checkpoint='https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content')),
    neck=dict(in_channels=[64, 128, 256, 512]))
# mixed precision as the official run (mmcv Fp16OptimizerHook, static loss scale 512); fp32 on CPU (see
# visionattn.mm.runner.load_config)
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
