# official: rayleizhu/BiFormer@1697bbbeafb8680524898f1dcaac10defd0604be:object_detection/configs/coco/maskrcnn.1x.biformer_base.py
# remaining differences: none known beyond mmdet 2.x -> 3.x renames
_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# BiFormer-B Mask R-CNN 1x, COCO: 48.6 box AP, 43.7 mask AP (BiFormer README (rayleizhu/BiFormer)); drop path 0.3,
# n_win 16
model = dict(
    backbone=dict(
        arch='biformer_base',
        drop_path_rate=0.3, n_win=16,
        init_cfg=dict(type='Pretrained', checkpoint='https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content')),
    neck=dict(in_channels=[96, 192, 384, 768]))
# mixed precision as the official run (mmcv Fp16OptimizerHook, static loss scale 512); fp32 on CPU (see
# visionattn.mm.runner.load_config)
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
