# official: youweiliang/evit@5ca95a7cf4a8637193284895c5bc0dd9dc365982:finetune.sh (with main.py defaults)
# remaining differences: the timm/DeiT data pipeline is mmpretrain's equivalent; timm's 10 cool-down epochs at
# min_lr are not reproduced (30 epochs in all)
_base_ = ['./evit_deit_small_patch16_224_in1k.py']
# EViT/0.7-DeiT-S fine-tuned 30 epochs from the DeiT-S ImageNet weights (deit_small_patch16_224-cd65a155.pth): keep
# rate 0.7 with fusion from the first epoch (shrink_start_epoch 0, shrink_epochs 0), lr 2e-5 x 2048/512, min lr
# 2e-6, weight decay 1e-6, no warm-up; 8 GPUs x 256 images with repeated augmentation
model = dict(model_name='evit_deit_small_patch16_224', pretrained=True, pretrained_cfg='fb_in1k', keep_rate=0.7, fuse_token=True)
optim_wrapper = dict(optimizer=dict(lr=2e-5 * 2048 / 512, weight_decay=1e-6))
custom_hooks = []
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=2e-6, by_epoch=True, begin=0)]
train_cfg = dict(max_epochs=30)
