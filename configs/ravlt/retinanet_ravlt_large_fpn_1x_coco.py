# official: qhfan/RALA@a86314f62103c21a1c7e6d826fe4cb0f5586e7b0:detection/configs/RALA/retinanet_l_1x.py
# (mmdet 2.x form, with its _base_ files: models/RALA_retinanet.py, datasets/coco_detection.py,
# schedules/schedule_1x.py)
# remaining differences: mmdet 3.x config form only (the official FPN takes four levels from start_level 1, here the
# backbone gives the last three: the same P3-P7, and no unused stage-1 output needs find_unused_parameters)
_base_ = [
    '../_base_/models/retinanet_visionattn_fpn.py', '../_base_/datasets/coco_detection.py',
    '../_base_/default_runtime_det.py', '../_base_/schedules/schedule_1x_adamw.py'
]
# RAVLT-L RetinaNet 1x, COCO: 50.9 box AP (RALA README (qhfan/RALA))
model = dict(
    backbone=dict(
        arch='ravlt_large',
        out_indices=(1, 2, 3),
        drop_path_rate=0.55,
        out_norms=True, norm_eval=True,  # as the official GLTA: a LayerNorm per output, BatchNorms frozen
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_L.pth')),
    neck=dict(in_channels=[192, 448, 640]))
# 8 GPUs x 2 images; AdamW lr 1e-4 wd 1e-4 on every parameter (the official optimizer has no paramwise_cfg)
train_dataloader = dict(batch_size=2)
# mixed precision as the official run (mmcv Fp16OptimizerHook, static loss scale 512); fp32 on CPU (see
# visionattn.mm.runner.load_config) (the official config: fp16 = dict(loss_scale=512.0))
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(_delete_=True))
