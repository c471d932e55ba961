# official: DaiShiResearch/TransNeXt@c8a99743b60ac94ac8d2bf66ffe164a440dcfe21:classification/configs/transnext_small.py
# (README: bash dist_train.sh ./configs/transnext_small.py 8 --batch-size 128, total batch 1024; with the
# defaults of classification/main.py: lr 1e-3 unscaled, 5 warm-up epochs from 1e-6, min lr 1e-5, repeated
# augmentation, AMP, no EMA)
# remaining differences: mmpretrain's RandAugment / random erasing / Mixup-CutMix stand for timm's; timm's 10
# cool-down epochs at min_lr are not reproduced (300 epochs in all)
_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# TransNeXt-Small ImageNet-1k 300 epochs (DeiT/PVT recipe, grad clip 1.0, no EMA): 84.7% top-1 (TransNeXt README
# (DaiShiResearch/TransNeXt))
model = dict(model_name='transnext_small', drop_path_rate=0.45)
# 8 GPUs x 128 images, DeiT repeated augmentation (RASampler, 3 repeats)
train_dataloader = dict(batch_size=128, sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True))
# AdamW lr 1e-3, wd 0.05, 5 warm-up epochs, cosine; grad clip 1.0 (the config file)
# timm NativeScaler / torch AMP (dynamic loss scale); fp32 on CPU (visionattn.mm.runner.load_config)
# no weight decay on 1-D parameters, biases and the official no_weight_decay_keywords (query_embedding,
# relative_pos_bias_local, cpb, temperature; classification/optimizer.py)
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(custom_keys={
        'query_embedding': no_decay, 'relative_pos_bias_local': no_decay, 'cpb': no_decay, 'temperature': no_decay}))
auto_scale_lr = dict(base_batch_size=1024)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 1e-3, by_epoch=True, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5)
]
