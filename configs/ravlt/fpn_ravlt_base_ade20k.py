# official: qhfan/RALA@a86314f62103c21a1c7e6d826fe4cb0f5586e7b0:segmentation/configs/RALA/RALA_FPN_m_1x.py
# (mmseg 0.x form, with its _base_ files: models/RALA_fpn.PY, datasets/ade20k.py, schedules/schedule_80k.py)
# remaining differences: mmseg 1.x config form only
_base_ = [
    '../_base_/models/fpn_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_80k_adamw.py'
]
# RAVLT-B Semantic FPN, ADE20K 80k: 51.9 mIoU (RALA README (qhfan/RALA))
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='ravlt_base',
        drop_path_rate=0.4,
        out_norms=True, norm_eval=True,  # as the official GLTA: a LayerNorm per output, BatchNorms frozen
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_B.pth')),
    neck=dict(in_channels=[96, 192, 384, 512]),
    decode_head=dict(num_classes=150),
    test_cfg=dict(mode='whole'))
# 8 GPUs x 2 images (samples_per_gpu 2); AdamW lr 1e-4 wd 1e-4 on every parameter, poly decay (power 0.9) to 1e-6 over
# 80k iterations, no warm-up. fp32: the official Semantic FPN configs set no fp16
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=1e-4))
param_scheduler = [dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=0, end=80000, by_epoch=False)]
