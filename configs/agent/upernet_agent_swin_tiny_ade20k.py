# Agent-Swin-T UperNet, ADE20K 160k, 512x512: 46.68 mIoU (Agent-Attention downstream/segmentation/README.md).
# Follows LeapLabTHU/Agent-Attention@207ce3eb357b22ef8a15f8fa21cd1f14697bbaba:downstream/segmentation/configs/agent_swin/upernet_agent_swin_t_9-12-14-7.py
# (mmseg 0.x, _base_ upernet_swin / ade20k / schedule_160k), backbone downstream/segmentation/mmseg/models/backbones/
# agent_swin.py (window 56, attn_type AAAB: "A" stages attend the whole map, "B" windows padded and shifted).
# Remaining differences: mmcv's poly with a linear warm-up scales the poly lr of the running iteration during the
# 1500 warm-up iterations; here LinearLR then PolyLR from 1500 (mmseg 1.x form); fp32 as the official run.
_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='agent_swin_tiny',
        drop_path_rate=0.3,
        agent_shapes=((9, 9), (12, 12), (14, 14), (7, 7)),  # official downstream agent grids
        window_clamp=False,  # the downstream window rule on every map size
        init_cfg=dict(type='Pretrained', checkpoint='https://cloud.tsinghua.edu.cn/f/a2ddc1190c224f768a41/?dl=1')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
# 8 GPUs x 2 images; AdamW lr 6e-5 wd 0.01, no decay on norms, position tables and agent biases (official keys)
train_dataloader = dict(batch_size=2)
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
    optimizer=dict(lr=6e-5, weight_decay=0.01),
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys={
            'absolute_pos_embed': no_decay,
            'relative_position_bias_table': no_decay,
            'norm': no_decay,
            'an_bias': no_decay,
            'na_bias': no_decay,
            'ah_bias': no_decay,
            'aw_bias': no_decay,
            'ha_bias': no_decay,
            'wa_bias': no_decay,
        }))
