class_weight = [
    0.4,
    1.2,
    1.2,
    1.2,
]
crop_size = (
    128,
    128,
)
custom_imports = dict(
    allow_failed_imports=False, imports=[
        'visionattn.mm',
    ])
data_preprocessor = dict(
    bgr_to_rgb=True,
    mean=[
        123.675,
        116.28,
        103.53,
    ],
    pad_val=0,
    seg_pad_val=255,
    size=(
        128,
        128,
    ),
    std=[
        58.395,
        57.12,
        57.375,
    ],
    type='SegDataPreProcessor')
data_root = 'demo_data/shapes'
dataset_type = 'BaseSegDataset'
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=2, type='CheckpointHook'),
    logger=dict(interval=1, log_metric_by_epoch=False, type='LoggerHook'),
    param_scheduler=dict(type='ParamSchedulerHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    timer=dict(type='IterTimerHook'),
    visualization=dict(draw=True, type='SegVisualizationHook'))
default_scope = 'mmseg'
env_cfg = dict(
    cudnn_benchmark=False,
    dist_cfg=dict(backend='gloo'),
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0))
launcher = 'none'
load_from = '/tmp/pytest-of-root/pytest-34/test_train_then_test0/work/iter_2.pth'
log_level = 'INFO'
log_processor = dict(by_epoch=False)
max_iters = 800
metainfo = dict(
    classes=(
        'background',
        'circle',
        'square',
        'triangle',
    ),
    palette=[
        [
            0,
            0,
            0,
        ],
        [
            220,
            60,
            60,
        ],
        [
            60,
            180,
            75,
        ],
        [
            60,
            100,
            230,
        ],
    ])
model = dict(
    auxiliary_head=dict(
        align_corners=False,
        channels=64,
        concat_input=False,
        dropout_ratio=0.1,
        in_channels=128,
        in_index=2,
        loss_decode=dict(
            class_weight=[
                0.4,
                1.2,
                1.2,
                1.2,
            ],
            loss_weight=0.4,
            type='CrossEntropyLoss',
            use_sigmoid=False),
        norm_cfg=dict(requires_grad=True, type='BN'),
        num_classes=4,
        num_convs=1,
        type='FCNHead'),
    backbone=dict(
        arch='nat_mini',
        depths=(
            2,
            2,
            2,
            2,
        ),
        drop_path_rate=0.1,
        embed_dim=32,
        kernel_size=5,
        num_heads=(
            2,
            4,
            8,
            16,
        ),
        out_indices=(
            0,
            1,
            2,
            3,
        ),
        type='VisionAttnBackbone',
        with_cp=False),
    data_preprocessor=dict(
        bgr_to_rgb=True,
        mean=[
            123.675,
            116.28,
            103.53,
        ],
        pad_val=0,
        seg_pad_val=255,
        size=(
            128,
            128,
        ),
        std=[
            58.395,
            57.12,
            57.375,
        ],
        type='SegDataPreProcessor'),
    decode_head=dict(
        align_corners=False,
        channels=64,
        dropout_ratio=0.1,
        in_channels=[
            32,
            64,
            128,
            256,
        ],
        in_index=[
            0,
            1,
            2,
            3,
        ],
        loss_decode=dict(
            class_weight=[
                0.4,
                1.2,
                1.2,
                1.2,
            ],
            loss_weight=1.0,
            type='CrossEntropyLoss',
            use_sigmoid=False),
        norm_cfg=dict(requires_grad=True, type='BN'),
        num_classes=4,
        pool_scales=(
            1,
            2,
            3,
            6,
        ),
        type='UPerHead'),
    pretrained=None,
    test_cfg=dict(mode='whole'),
    train_cfg=dict(),
    type='EncoderDecoder')
norm_cfg = dict(requires_grad=True, type='BN')
optim_wrapper = dict(
    optimizer=dict(
        betas=(
            0.9,
            0.999,
        ), lr=0.001, type='AdamW', weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys=dict(norm=dict(decay_mult=0.0), rpb=dict(decay_mult=0.0))),
    type='OptimWrapper')
param_scheduler = [
    dict(begin=0, by_epoch=False, end=1, start_factor=0.001, type='LinearLR'),
    dict(
        begin=1, by_epoch=False, end=2, eta_min=0.0, power=1.0, type='PolyLR'),
]
randomness = dict(seed=0)
resume = False
test_cfg = dict(type='TestLoop')
test_dataloader = dict(
    batch_size=1,
    dataset=dict(
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        data_root='/work/main/demo_data/shapes',
        img_suffix='.png',
        indices=2,
        metainfo=dict(
            classes=(
                'background',
                'circle',
                'square',
                'triangle',
            ),
            palette=[
                [
                    0,
                    0,
                    0,
                ],
                [
                    220,
                    60,
                    60,
                ],
                [
                    60,
                    180,
                    75,
                ],
                [
                    60,
                    100,
                    230,
                ],
            ]),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(keep_ratio=True, scale=(
                128,
                128,
            ), type='Resize'),
            dict(type='LoadAnnotations'),
            dict(type='PackSegInputs'),
        ],
        seg_map_suffix='.png',
        type='BaseSegDataset'),
    num_workers=0,
    sampler=dict(shuffle=False, type='DefaultSampler'))
test_evaluator = dict(
    iou_metrics=[
        'mIoU',
    ], type='IoUMetric')
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(keep_ratio=True, scale=(
        128,
        128,
    ), type='Resize'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_cfg = dict(max_iters=2, type='IterBasedTrainLoop', val_interval=2)
train_dataloader = dict(
    batch_size=2,
    dataset=dict(
        data_prefix=dict(
            img_path='img_dir/train', seg_map_path='ann_dir/train'),
        data_root='/work/main/demo_data/shapes',
        img_suffix='.png',
        metainfo=dict(
            classes=(
                'background',
                'circle',
                'square',
                'triangle',
            ),
            palette=[
                [
                    0,
                    0,
                    0,
                ],
                [
                    220,
                    60,
                    60,
                ],
                [
                    60,
                    180,
                    75,
                ],
                [
                    60,
                    100,
                    230,
                ],
            ]),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations'),
            dict(
                keep_ratio=True,
                ratio_range=(
                    1.0,
                    1.75,
                ),
                scale=(
                    128,
                    128,
                ),
                type='RandomResize'),
            dict(crop_size=(
                128,
                128,
            ), type='RandomCrop'),
            dict(prob=0.5, type='RandomFlip'),
            dict(type='PackSegInputs'),
        ],
        seg_map_suffix='.png',
        type='BaseSegDataset'),
    num_workers=0,
    sampler=dict(shuffle=True, type='InfiniteSampler'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        keep_ratio=True,
        ratio_range=(
            1.0,
            1.75,
        ),
        scale=(
            128,
            128,
        ),
        type='RandomResize'),
    dict(crop_size=(
        128,
        128,
    ), type='RandomCrop'),
    dict(prob=0.5, type='RandomFlip'),
    dict(type='PackSegInputs'),
]
tta_model = dict(type='SegTTAModel')
val_cfg = dict(type='ValLoop')
val_dataloader = dict(
    batch_size=1,
    dataset=dict(
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        data_root='/work/main/demo_data/shapes',
        img_suffix='.png',
        indices=2,
        metainfo=dict(
            classes=(
                'background',
                'circle',
                'square',
                'triangle',
            ),
            palette=[
                [
                    0,
                    0,
                    0,
                ],
                [
                    220,
                    60,
                    60,
                ],
                [
                    60,
                    180,
                    75,
                ],
                [
                    60,
                    100,
                    230,
                ],
            ]),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(keep_ratio=True, scale=(
                128,
                128,
            ), type='Resize'),
            dict(type='LoadAnnotations'),
            dict(type='PackSegInputs'),
        ],
        seg_map_suffix='.png',
        type='BaseSegDataset'),
    num_workers=0,
    sampler=dict(shuffle=False, type='DefaultSampler'))
val_evaluator = dict(
    iou_metrics=[
        'mIoU',
    ], type='IoUMetric')
vis_backends = [
    dict(type='LocalVisBackend'),
]
visualizer = dict(
    name='visualizer',
    save_dir='vis',
    type='SegLocalVisualizer',
    vis_backends=[
        dict(type='LocalVisBackend'),
    ])
work_dir = '/tmp/pytest-of-root/pytest-34/test_train_then_test0/work'
