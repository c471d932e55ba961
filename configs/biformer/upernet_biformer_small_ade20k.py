# official: rayleizhu/BiFormer@1697bbbeafb8680524898f1dcaac10defd0604be:semantic_segmentation/configs/ade20k/upernet.biformer_small.py
# remaining differences: mmseg 1.x has no AlignResize (test resize: mmseg Resize keep_ratio)
_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
# BiFormer-S UperNet, ADE20K 160k, 512x512: 49.8 mIoU single-scale, 50.8 multi-scale+flip (BiFormer README
# (rayleizhu/BiFormer)); drop path 0.3, n_win 8, trained with AMP
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='biformer_small',
        drop_path_rate=0.3, n_win=8,
        init_cfg=dict(type='Pretrained', checkpoint='https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content')),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
# mixed precision as the official run (mmcv Fp16OptimizerHook, static loss scale 512); fp32 on CPU (see
# visionattn.mm.runner.load_config)
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
