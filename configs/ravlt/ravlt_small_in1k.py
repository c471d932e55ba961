_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# RAVLT-S ImageNet-1k 300 epochs: 84.4% top-1 (RALA README (qhfan/RALA), README until 2025-02; the abstract gives
# 84.4% for RAVLT-S)
model = dict(model_name='ravlt_small', drop_path_rate=0.15)
# 8 GPUs x 128 images
train_dataloader = dict(batch_size=128)
