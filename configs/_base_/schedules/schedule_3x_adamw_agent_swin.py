# The Agent-Swin 3x detection schedule (agent_swin_*_{mrcnn,crcnn}_3x): the Agent-Swin optimizer
# (schedule_1x_adamw_agent_swin.py) over 36 epochs, the official schedule_1x base's 500-iteration warm-up (ratio
# 0.001), lr x0.1 at epochs 27 and 33
_base_ = './schedule_1x_adamw_agent_swin.py'
train_cfg = dict(max_epochs=36)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1)
]
