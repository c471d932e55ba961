# official: qhfan/RALA@a86314f62103c21a1c7e6d826fe4cb0f5586e7b0:detection/configs/RALA/maskrcnn_l_3x.py
# (mmdet 2.x form, with its _base_ files: models/RALA_rcnn.py, datasets/coco_instance.py, schedules/schedule_1x.py)
# remaining differences: mmdet 3.x config form only (AutoAugment of two policies -> RandomChoice; the same
# multi-scale + crop schedule of sizes)
_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance_ms_3x.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_3x_adamw_w500.py'
]
# RAVLT-L Mask R-CNN 3x, COCO: 53.6 box AP, 47.3 mask AP (RALA README (qhfan/RALA))
model = dict(
    backbone=dict(
        arch='ravlt_large',
        drop_path_rate=0.55,
        out_norms=True, norm_eval=True,  # as the official GLTA: a LayerNorm per output, BatchNorms frozen
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_L.pth')),
    neck=dict(in_channels=[96, 192, 448, 640]))
# 8 GPUs x 2 images, multi-scale + crop training (DETR / Sparse R-CNN augmentation); AdamW lr 1e-4 wd 0.05, no decay
# on norms and position tables (official keys); 500 warm-up iterations, steps at 27 and 33 of 36 epochs
train_dataloader = dict(batch_size=2)
# mixed precision as the official run (mmcv Fp16OptimizerHook, static loss scale 512); fp32 on CPU (see
# visionattn.mm.runner.load_config) (the official config: fp16 = dict())
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(lr=1e-4, weight_decay=0.05),
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys={'absolute_pos_embed': no_decay, 'relative_position_bias_table': no_decay, 'norm': no_decay}))
