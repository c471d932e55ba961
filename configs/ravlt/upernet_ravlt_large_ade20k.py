_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
# RAVLT-L UperNet, ADE20K 160k: 53.2 mIoU (RALA README (qhfan/RALA)); the authors train in fp32 (their config notes
# NaN losses under AMP)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='ravlt_large',
        drop_path_rate=0.55,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_L.pth')),
    decode_head=dict(in_channels=[96, 192, 448, 640], num_classes=150),
    auxiliary_head=dict(in_channels=448, num_classes=150))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
