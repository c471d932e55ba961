# official: ziplab/LITv2@7501c8662991cad6db780b61fac0886b56a76588:segmentation/configs/litv2/litv2_s_fpn_r50_512x512_80k_ade20k.py
# (mmseg 0.x form, with its _base_ files: fpn_r50_lit.py, ade20k.py, schedule_80k.py)
# remaining differences: mmseg 1.x config form only
_base_ = [
    '../_base_/models/fpn_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_80k_adamw.py'
]
# LITv2-S Semantic FPN, ADE20K 80k, 512x512: 44.3 mIoU (LITv2 README (ziplab/LITv2))
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='litv2_small',
        drop_path_rate=0.2, out_norms='mmseg',
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_s.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]),
    decode_head=dict(num_classes=150),
    test_cfg=dict(mode='whole'))
# 8 GPUs x 2 images (samples_per_gpu 2); AdamW lr 1e-4 wd 1e-4 on every parameter, fp32 (the official config has no
# fp16), poly decay (power 0.9) to 1e-6 over 80k iterations, no warm-up
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=1e-4))
param_scheduler = [dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=0, end=80000, by_epoch=False)]
