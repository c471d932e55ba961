# official: none (the official Sparsifiner recipe is the two-phase fine-tune of a pretrained DeiT:
# sparsifiner_deit_small_patch16_224_2phase_in1k.py; lim142857/Sparsifiner@9a11e2639c350b99bca3fa3f9d5ce9616505ca71
# publishes no from-scratch run): the project's 300-epoch ImageNet recipe for the architecture; settings
# of the official src/main.py kept: fp32 (--use_amp False), wd 0.05, label smoothing 0.1, mixup 0.8 / cutmix 1.0
_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# Sparsifiner-DeiT-S: the official recipe fine-tunes a pretrained DeiT for 50 epochs (5 epochs of attention
# reconstruction for the connectivity predictor, then the backbone with distillation: that recipe is
# sparsifiner_deit_small_patch16_224_2phase_in1k.py); this config is the plain 300-epoch ImageNet recipe for the
# architecture. The paper reports the accuracy drop within 0.4% of DeiT (Sparsifiner
# (lim142857/Sparsifiner); no Sparsifiner weights are released)
model = dict(model_name='sparsifiner_deit_small_patch16_224', drop_path_rate=0.1)
# 8 GPUs x 128 images
train_dataloader = dict(batch_size=128)
# the connectivity predictor is trained by its own reconstruction loss, not by this one
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
