# `make demo`: UperNet (32 wide, no auxiliary head) on a small three-stage NAT (2-2-2 layers, 32-64-128 wide, 5x5
# neighborhoods), trained from scratch on the bundled shapes dataset (480 training images of 64x64, at that size) on a
# CPU in a few minutes. Three stages, not four: at 64x64 the third stage's 4x4 map already lies inside one 5x5
# neighborhood (global attention), and a fourth stage (2x2, padded to 5x5) added 1.7 M of the 2.4 M parameters and a
# quarter of the layers for no wider view; with the head narrowed from 64 to 32 and the auxiliary FCN head (which
# stayed near the all-background accuracy on the 4x4 map) dropped, an iteration costs about half of the 2-2-2-2 /
# 64-wide demo's (benchmarks/demo_iter_cpu_1thread_2026-12-02.md, tools/benchmark_demo.py)
_base_ = [
    '../_base_/models/upernet_visionattn.py', '../_base_/datasets/demo_shapes.py',
    '../_base_/default_runtime_seg.py'
]
crop_size = (64, 64)
# at the images' own 64x64 (a quarter of the compute of 128): whole shapes, flips only; a crop or a rescale would cut
# shapes (a cut circle has straight edges) or pad ignored pixels, which mmseg 1.2.2's class-weighted loss cannot take
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25], direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='PackSegInputs')
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
norm_cfg = dict(type='BN', requires_grad=True)
# the shapes cover about 12% of the pixels: weigh them up (about the inverse square root of the class frequency)
class_weight = [0.4, 1.2, 1.2, 1.2]
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='nat_mini',
        embed_dim=32,
        depths=(2, 2, 2),
        num_heads=(2, 4, 8),
        kernel_size=5,
        out_indices=(0, 1, 2),
        drop_path_rate=0.),
    decode_head=dict(
        in_channels=[32, 64, 128], in_index=[0, 1, 2], channels=32, num_classes=4, norm_cfg=norm_cfg,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, class_weight=class_weight)),
    auxiliary_head=None)

max_iters = 2000
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.), 'rpb': dict(decay_mult=0.)}))
# linear warm-up, then linear decay to 0
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=100, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0, deterministic=True)
env_cfg = dict(cudnn_benchmark=False)
