# official: SHI-Labs/Neighborhood-Attention-Transformer@d334f5bb0bd73cad05e5aeaf7c14cce3876a9650:detection/configs/dinat/cascade_mask_rcnn_dinat_large_3x_coco.py
# remaining differences: dilations given by name ('coco'), expanded by the backbone to the official lists
_base_ = [
    '../_base_/models/cascade_mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw.py'
]
# DiNAT-Large Cascade Mask R-CNN 3x (multi-scale + crop), COCO: 55.3 box AP, 47.8 mask AP (DiNAT paper /
# SHI-Labs/Neighborhood-Attention-Transformer README); ImageNet-22k backbone; the official COCO dilations
model = dict(
    backbone=dict(
        arch='dinat_large',
        drop_path_rate=0.6, dilations='coco',
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
# mixed precision as the official run (mmcv Fp16OptimizerHook, static loss scale 512); fp32 on CPU (see
# visionattn.mm.runner.load_config)
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512., optimizer=dict(lr=7.5e-05))
# official schedule_3x.py: linear warm-up 500 iterations from 0.001, lr x0.1 at epochs 27 and 33
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1)
]
