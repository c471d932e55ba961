# official: DaiShiResearch/TransNeXt@c8a99743b60ac94ac8d2bf66ffe164a440dcfe21:classification/configs/transnext_small.py
# (README: bash dist_train.sh ./configs/transnext_small.py 8 --batch-size 128, total batch 1024; with the
# defaults of classification/main.py: lr 1e-3 unscaled, 5 warm-up epochs from 1e-6, min lr 1e-5, repeated
# augmentation, AMP, no EMA)
# remaining differences: mmpretrain's RandAugment / random erasing / Mixup-CutMix stand for timm's; timm's 10
# cool-down epochs at min_lr are not reproduced (300 epochs in all)
_base_ = './transnext_tiny_in1k.py'
# TransNeXt-Small ImageNet-1k 300 epochs (DeiT/PVT recipe, grad clip 1.0, no EMA): 84.7% top-1 (TransNeXt README
# (DaiShiResearch/TransNeXt))
model = dict(model_name='transnext_small', drop_path_rate=0.45)
