# official: SHI-Labs/Neighborhood-Attention-Transformer@d334f5bb0bd73cad05e5aeaf7c14cce3876a9650:segmentation/configs/nat/upernet_nat_mini_512x512_160k_ade20k.py
# remaining differences: mmseg 1.x has no AlignResize; dilations are given by name ('ade20k') and expanded by the backbone to the official lists
_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
# NAT-Mini UperNet, ADE20K 160k, 512x512: 45.1 mIoU single-scale, 46.4 multi-scale (NAT paper / SHI-Labs/Neighborhood-
# Attention-Transformer README)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='nat_mini',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
# mixed precision as the official run (mmcv Fp16OptimizerHook, static loss scale 512); fp32 on CPU (see
# visionattn.mm.runner.load_config)
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
