# TransNeXt-Base UperNet, ADE20K 160k, 512x512, single-scale: 53.0 mIoU (TransNeXt segmentation/upernet/README.md).
# Follows DaiShiResearch/TransNeXt@c8a99743b60ac94ac8d2bf66ffe164a440dcfe21:segmentation/upernet/configs/upernet_transnext_base_512x512_160k_ade20k_ss.py
# (mmseg 0.x), with its _base_ files and the mm backbone segmentation/upernet/transnext_native.py (drop path 0.7).
# Remaining differences, all from mmseg 1.x / mmengine:
# - schedule: mmcv's poly with a linear warm-up scales the poly lr of the running iteration during the 1500 warm-up
#   iterations; here LinearLR (1e-6 -> 1) over 1500 iterations, then PolyLR from 1500 to 160k (mmseg 1.x's form of
#   the same recipe; the lr differs by < 1% during warm-up and by the 1500/160000 shift of the poly decay after it).
# - data: the official pipeline's Normalize/Pad/DefaultFormatBundle become SegDataPreProcessor (same mean, std, pad 0,
#   seg pad 255); the rest (RandomResize 2048x512 ratio 0.5-2.0, RandomCrop 512 cat_max_ratio 0.75, flip,
#   PhotoMetricDistortion) is the same.
_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='transnext_base',
        drop_path_rate=0.7,
        # position tables built for the 512 crop, coordinates scaled by the 224 pre-training; the bias is
        # interpolated at other sizes (official is_extrapolation=False)
        img_size=512,
        pretrain_size=224,
        pos_bias='interpolate',
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-base-224-1k/resolve/main/transnext_base_224_1k.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
# AdamW lr 6e-5 wd 0.05; no weight decay on norms, query embeddings, local position biases, the CPB MLPs and the
# temperatures (the official custom keys, replacing the base's)
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
    optimizer=dict(lr=6e-5, weight_decay=0.05),
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys={
            'query_embedding': no_decay,
            'relative_pos_bias_local': no_decay,
            'cpb': no_decay,
            'temperature': no_decay,
            'norm': no_decay,
        }))
