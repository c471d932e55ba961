_base_ = [
    '../_base_/models/mask2former_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
# TransNeXt-Tiny Mask2Former, ADE20K 160k, 512x512: 53.4 mIoU (TransNeXt README (DaiShiResearch/TransNeXt),
# segmentation/mask2former); drop path 0.3 as its mm backbone; AdamW lr 1e-4 wd 0.05, the backbone at 0.1x the
# learning rate, no weight decay on norms, biases, query embeddings, position biases (cpb, local) and temperatures;
# poly decay, clip 0.01 (mmseg's Mask2Former recipe)
# Follows DaiShiResearch/TransNeXt@c8a99743b60ac94ac8d2bf66ffe164a440dcfe21:segmentation/mask2former/configs/mask2former_transnext_tiny_160k_ade20k-512x512.py
# Remaining differences: none in the recipe (mmseg 1.x config of the official one; the backbone lr x0.1 via
# BackboneLrMultOptimWrapperConstructor, which also keeps biases and norms of the backbone without decay as the
# official bias_decay_mult/norm_decay_mult do).
custom_imports = dict(imports=['visionattn.mm', 'mmdet.models'], allow_failed_imports=False)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='transnext_tiny',
        drop_path_rate=0.3,
        img_size=512,  # position tables for the crop, coordinates scaled by the 224 pre-training
        pretrain_size=224,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-tiny-224-1k/resolve/main/transnext_tiny_224_1k.pth')),
    decode_head=dict(in_channels=[72, 144, 288, 576]))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomChoiceResize', scales=[int(512 * x * 0.1) for x in range(5, 21)],
         resize_type='ResizeShortestEdge', max_size=2048),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='BackboneLrMultOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(
        backbone_lr_mult=0.1,
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        flat_decay_mult=0.,
        custom_keys={
            'query_embedding': no_decay,
            'relative_pos_bias_local': no_decay,
            'cpb': no_decay,
            'temperature': no_decay,
            'query_embed': no_decay,
            'query_feat': no_decay,
            'level_embed': no_decay,
        }))
param_scheduler = [dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=160000, by_epoch=False)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, save_best='mIoU'))
