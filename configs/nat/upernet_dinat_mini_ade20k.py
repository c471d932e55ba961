_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
# DiNAT-Mini UperNet, ADE20K 160k, 512x512: 45.8 mIoU single-scale, 47.2 multi-scale (DiNAT paper / SHI-
# Labs/Neighborhood-Attention-Transformer DiNAT.md); the official ADE20K dilations
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='dinat_mini',
        drop_path_rate=0.2, dilations='ade20k',
        init_cfg=dict(type='Pretrained', checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
