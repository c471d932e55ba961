# official: qhfan/RALA@a86314f62103c21a1c7e6d826fe4cb0f5586e7b0:detection/configs/RALA/maskrcnn_s_1x.py
# (mmdet 2.x form, with its _base_ files: models/RALA_rcnn.py, datasets/coco_instance.py, schedules/schedule_1x.py)
# remaining differences: mmdet 3.x config form only
_base_ = [
    '../_base_/models/mask_rcnn_visionattn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# RAVLT-S Mask R-CNN 1x, COCO: 49.8 box AP, 44.6 mask AP (RALA README (qhfan/RALA))
model = dict(
    backbone=dict(
        arch='ravlt_small',
        drop_path_rate=0.15,
        out_norms=True, norm_eval=True,  # as the official GLTA: a LayerNorm per output, BatchNorms frozen
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_S.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))
# 8 GPUs x 2 images; AdamW lr 1e-4 wd 0.05, no decay on norms and position tables (official keys), 500 warm-up
# iterations, steps at 8 and 11 of 12 epochs (the base schedule)
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
