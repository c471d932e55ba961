_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
# TransNeXt-Small UperNet, ADE20K 160k, 512x512: 52.2 mIoU single-scale, 52.5 multi-scale (TransNeXt README
# (DaiShiResearch/TransNeXt)); drop path 0.6 as its mm backbone, AdamW wd 0.05
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='transnext_small',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-small-224-1k/resolve/main/transnext_small_224_1k.pth')),
    decode_head=dict(in_channels=[72, 144, 288, 576], num_classes=150),
    auxiliary_head=dict(in_channels=288, num_classes=150))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(optimizer=dict(weight_decay=0.05))
