# official: rayleizhu/BiFormer@1697bbbeafb8680524898f1dcaac10defd0604be:semantic_segmentation/configs/ade20k/sfpn.biformer_base.py
# remaining differences: mmseg 1.x has no AlignResize (test resize: mmseg Resize keep_ratio); the official cosine runs over all 80k
# iterations under the warm-up, here the cosine follows the warm-up (iterations 1000-80000)
_base_ = [
    '../_base_/models/fpn_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_80k_adamw.py'
]
# BiFormer-B Semantic FPN, ADE20K 80k, 512x512: 49.9 mIoU (BiFormer README (rayleizhu/BiFormer)); drop path 0.3, n_win
# 8, AdamW lr 2e-4 with cosine decay
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='biformer_base',
        drop_path_rate=0.3, n_win=8,
        init_cfg=dict(type='Pretrained', checkpoint='https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content')),
    neck=dict(in_channels=[96, 192, 384, 768]),
    decode_head=dict(num_classes=150))
# 8 GPUs x 4 images (official ade20k_sfpn.py: samples_per_gpu=4)
train_dataloader = dict(batch_size=4)
# mixed precision as the official run (mmcv Fp16OptimizerHook, static loss scale 512); fp32 on CPU (see
# visionattn.mm.runner.load_config)
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512., optimizer=dict(lr=2e-4))
# official: mmcv CosineAnnealing over 80k iterations, min_lr_ratio 1e-8, linear warm-up 1000 iterations from 0.1;
# mmengine runs the warm-up and the cosine one after the other (the cosine spans iterations 1000-80000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='CosineAnnealingLR', T_max=79000, eta_min=2e-4 * 1e-8, by_epoch=False, begin=1000, end=80000)
]
