# mmdet 3x: 36 epochs, lr x0.1 at epochs 27 and 33 (the Swin/NAT 3x recipe, with multi-scale training)
_base_ = './schedule_1x_adamw.py'
train_cfg = dict(max_epochs=36)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1)
]
