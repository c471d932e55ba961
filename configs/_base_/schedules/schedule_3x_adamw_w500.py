# mmdet 3x as the mmdet 2.x downstream repositories run it (RAVLT; Swin-style): their schedule_1x base with a
# 500-iteration linear warm-up (ratio 0.001) and lr x0.1 at epochs 27 and 33 of 36
_base_ = './schedule_3x_adamw.py'
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1)
]
