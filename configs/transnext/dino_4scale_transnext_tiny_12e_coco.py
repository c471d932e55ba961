_base_ = [
    '../_base_/models/dino_4scale_visionattn.py', '../_base_/datasets/coco_detection_detr_ms.py',
    '../_base_/default_runtime_det.py'
]
# TransNeXt-Tiny DINO 4-scale 12 epochs, COCO: 55.1 box AP (TransNeXt README (DaiShiResearch/TransNeXt), detection/dino);
# drop path 0.3 as its mm backbone
# Follows DaiShiResearch/TransNeXt@c8a99743b60ac94ac8d2bf66ffe164a440dcfe21:detection/dino/configs/dino-4scale_transnext_tiny-12e_coco.py
# Remaining differences: the official fp16 = dict(loss_scale=512.) key is ignored by mmdet 3.x (its train.py
# enables AMP only with --amp, dynamic loss scale), so the official run was fp32 unless launched with --amp; same here.
model = dict(
    backbone=dict(
        arch='transnext_tiny',
        drop_path_rate=0.3,
        img_size=800,  # position tables for the crop, coordinates scaled by the 224 pre-training
        pretrain_size=224,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-tiny-224-1k/resolve/main/transnext_tiny_224_1k.pth')),
    neck=dict(in_channels=[144, 288, 576]))
custom_imports = dict(imports=['visionattn.mm', 'mmdet.models'], allow_failed_imports=False)
# AdamW lr 1e-4 wd 0.05, the backbone at 0.1x the learning rate, no weight decay on norms, biases, 1-D parameters,
# query embeddings, position biases (cpb, local) and temperatures; clip 0.1; 8 GPUs x 1 image, gradients accumulated
# over 2 iterations (the official fp16 training: add --amp)
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='BackboneLrMultOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    accumulative_counts=2,
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
        }))
train_dataloader = dict(batch_size=1)
max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[11], gamma=0.1)]
auto_scale_lr = dict(base_batch_size=16)
