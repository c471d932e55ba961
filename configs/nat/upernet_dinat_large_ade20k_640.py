# official: SHI-Labs/Neighborhood-Attention-Transformer@d334f5bb0bd73cad05e5aeaf7c14cce3876a9650:segmentation/configs/dinat/upernet_dinat_large_640x640_160k_ade20k.py
# remaining differences: mmseg 1.x has no AlignResize; dilations are given by name ('ade20k_640') and expanded by the
# backbone to the official lists; the official '640x640' config trains on its 512 ADE20K data base (crop 512), the dilations are the 640
# ones: followed as written
_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='dinat_large',
        drop_path_rate=0.3, dilations='ade20k_640',
        init_cfg=dict(
            type='Pretrained', checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536], num_classes=150),
    auxiliary_head=dict(in_channels=768, num_classes=150))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
# mixed precision as the official run (mmcv Fp16OptimizerHook, static loss scale 512); fp32 on CPU
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
