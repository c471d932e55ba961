# official: ziplab/LITv2@7501c8662991cad6db780b61fac0886b56a76588:detection/configs/litv2/mask_rcnn_litv2_m_fpn_1x_coco.py
# (mmdet 2.x form; its _base_ files as at commit f320e437a5b59f78d7f5abd90007250ce820c053, the code the released
# checkpoints were trained with: at HEAD models/mask_rcnn_fpn.py is gone)
# remaining differences: mmdet 3.x config form only; apex O1 -> torch AMP with a dynamic loss scale; the official
# B configs' gradient checkpointing (use_checkpoint) is a memory setting, left off
_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# LITv2-M Mask R-CNN 1x, COCO: 46.8 box AP, 42.3 mask AP (LITv2 README (ziplab/LITv2))
# AdamW lr 2e-4 wd 1e-4, no decay on norms only (the official custom_keys)
model = dict(
    backbone=dict(
        arch='litv2_medium',
        drop_path_rate=0.2, out_norms='mmdet',
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_m.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
# 8 GPUs x 2 images (samples_per_gpu 2); apex O1 mixed precision (DistOptimizerHook use_fp16=True, dynamic loss
# scale), fp32 on CPU (see visionattn.mm.runner.load_config)
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(lr=2e-4, weight_decay=1e-4),
    paramwise_cfg=dict(_delete_=True, custom_keys={'norm': dict(decay_mult=0.)}))
