# official: SHI-Labs/Neighborhood-Attention-Transformer@d334f5bb0bd73cad05e5aeaf7c14cce3876a9650:mask2former/configs/ade20k/semantic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_160k.yaml
# (detectron2, with its _base_ maskformer2_R50_bs16_160k.yaml and Base-ADE20K-SemanticSegmentation.yaml)
# Decision (issue 20): mmseg 1.x's Mask2Former carries this recipe without changes to the head: the same
# MSDeformAttn pixel decoder (6 layers on res3-res5), 9-layer masked-attention decoder, 100 queries, class / mask /
# dice weights 2 / 5 / 5, no-object 0.1, 12544 sampled points (oversample 3, importance 0.75), AdamW 1e-4 wd 0.05 with
# the backbone at 0.1x, poly decay over 160k, full-model gradient clipping at 0.01, batch 16; so it is built here.
# remaining differences: detectron2's mask_former_semantic mapper -> mmseg transforms (ResizeShortestEdge choice of
# 320-1280 (max 2560), crop 640 with single-category max area 1.0, flip, PhotoMetricDistortion for COLOR_AUG_SSD);
# its padding of every image to 640 (SIZE_DIVISIBILITY) -> mmseg's data preprocessor pads the crop to 640; the
# 22K weights have 7x7 position biases for the 11x11 kernel: resized bicubically by the checkpoint filter (the rule of
# the official 11x11 fine-tuning, dinat_large_in22k_224_11x11interp.pth); the reported 58.1 mIoU is multi-scale
# (TEST.AUG), this config tests single-scale (shorter side 640, max 2560)
_base_ = [
    '../_base_/models/mask2former_visionattn.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py', '../_base_/schedules/schedule_160k_adamw.py'
]
# DiNAT-L (ImageNet-22K) Mask2Former, ADE20K 160k, 640x640: 58.1 mIoU multi-scale (NAT mask2former/README.md)
custom_imports = dict(imports=['visionattn.mm', 'mmdet.models'], allow_failed_imports=False)
crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='dinat_large',
        kernel_size=11,
        drop_path_rate=0.3,
        # the official MODEL.DINAT.DILATIONS of this config (its own 11x11 / 640 lists)
        dilations=((1, 14, 1), (1, 4, 1, 7), (1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 3), (1, 1, 1, 1, 1)),
        init_cfg=dict(
            type='Pretrained', checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomChoiceResize', scales=[int(640 * x * 0.1) for x in range(5, 21)],
         resize_type='ResizeShortestEdge', max_size=2560),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
# 8 GPUs x 2 images (IMS_PER_BATCH 16); fp32 (SOLVER.AMP.ENABLED False in the DiNAT config)
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
# Mask2Former's train_net.py: no decay on norms and nn.Embedding parameters (queries, level embeddings) and on names
# with relative_position_bias_table / absolute_pos_embed, which DiNAT's 'rpb' is not (the DiNAT fork, a submodule, is
# not in the pinned tree); biases decay
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
        custom_keys={
            'query_embed': no_decay,
            'query_feat': no_decay,
            'level_embed': no_decay,
        }))
param_scheduler = [dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=160000, by_epoch=False)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, save_best='mIoU'))
