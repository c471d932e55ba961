# official: lim142857/Sparsifiner@9a11e2639c350b99bca3fa3f9d5ce9616505ca71:experiments-results-analysis/experiments/sparsifiner_default_config.yaml
# (run by src/run_model.sh --IMNET sparsifiner_default 8, with the defaults of src/main.py and src/config/default_config.py)
# remaining differences: the official ModelEma (decay 0.9999) is an extra evaluation copy ('best-ema') that does not
# change the trained weights, not kept here; mmpretrain's RandAugment / random erasing / Mixup-CutMix stand for timm's
_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# Sparsifiner-DeiT-S, the official two-phase recipe (lim142857/Sparsifiner, sparsifiner_default_config.yaml,
# TRAIN_STRATEGY [['attn_recon', 0, 0, 5], ['cls_distill', 0, -5, 45]]): starting from the DeiT-S weights,
# epochs 0-4 train only the connectivity predictors by attention reconstruction against the dense DeiT teacher
# (0.01 x MSE-sum), epochs 5-49 train the backbone with the predictors frozen: CE + 0.5 x KL to the teacher's logits
# + 0.5 x MSE to its final patch tokens. The teacher is the student's starting weights (SparsifinerPhaseHook copies
# them at iteration 0). The paper reports an accuracy drop within 0.4% of DeiT; no Sparsifiner weights are released.
model = dict(
    type='SparsifinerClassifier',
    model_name='sparsifiner_deit_small_patch16_224',
    pretrained=True,  # the DeiT-S ImageNet weights (the official starting point)
    drop_path_rate=0.,  # main.py --drop_path 0 (the official model is built without stochastic depth)
    recon_weight=0.01,
    cls_distill_weight=0.5,
    token_distill_weight=0.5)
custom_hooks = [dict(type='SparsifinerPhaseHook', switch_epoch=5)]
# 8 GPUs x 168 images (run_model.sh)
train_dataloader = dict(batch_size=168)
# AdamW wd 0.05; phase 1: lr 3e-4 (3 warm-up epochs) -> 2e-4 at epoch 5; phase 2: 3 warm-up epochs to 8e-5, cosine to
# 2e-6 at epoch 50 (the official per-phase schedules). mmengine's schedulers chain multiplicatively, so each phase
# starts from the rate the previous one left.
# fp32 (main.py --use_amp False), no gradient clipping (--clip_grad None)
optim_wrapper = dict(optimizer=dict(lr=3e-4, weight_decay=0.05), clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=3, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=2e-4, by_epoch=True, begin=3, end=5, convert_to_iter_based=True),
    dict(type='LinearLR', start_factor=4e-4, end_factor=0.4, by_epoch=True, begin=5, end=8,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=2e-6, by_epoch=True, begin=8, end=50, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=50, val_interval=1)
auto_scale_lr = dict(base_batch_size=1344)
# frozen parameters (the backbone in phase 1, the predictors in phase 2) get no gradient
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
