# ImageNet classifier (mmpretrain TimmClassifier): the whole timm model with its own head; leaf configs set
# model.model_name. Mixup/CutMix as in the DeiT/Swin recipe.
model = dict(
    type='TimmClassifier',
    model_name='nat_tiny',
    pretrained=False,
    drop_path_rate=0.2,
    loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))
