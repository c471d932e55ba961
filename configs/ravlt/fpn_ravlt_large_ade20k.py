_base_ = [
    '../_base_/models/fpn_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_80k_adamw.py'
]
# RAVLT-L Semantic FPN, ADE20K 80k: 52.6 mIoU (RALA README (qhfan/RALA))
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='ravlt_large',
        drop_path_rate=0.55,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_L.pth')),
    neck=dict(in_channels=[96, 192, 448, 640]),
    decode_head=dict(num_classes=150))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
