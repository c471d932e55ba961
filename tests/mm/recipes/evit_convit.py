"""Recipe rows for EViT and ConViT (tests/mm/test_recipes.py); values from the official scripts and main.py."""
_EVIT = 'youweiliang/evit@5ca95a7cf4a8637193284895c5bc0dd9dc365982'
_CONVIT = 'facebookresearch/convit@0a9340aaf50dd101c2d3766e575f24085afc92ed'

RECIPES = [
    dict(config='configs/evit/evit_deit_small_patch16_224_in1k.py', official=_EVIT + ':run_code.sh', gpus=8, expect={
        'model.keep_rate': 0.7, 'model.fuse_token': True, 'model.drop_path_rate': 0.1,
        'train_dataloader.batch_size': 256, 'train_dataloader.sampler.type': 'RepeatAugSampler',
        'train_dataloader.sampler.num_repeats': 3, 'optim_wrapper.type': 'AmpOptimWrapper',
        'optim_wrapper.loss_scale': 'dynamic', 'optim_wrapper.clip_grad': None,
        'optim_wrapper.optimizer.type': 'AdamW', 'optim_wrapper.optimizer.lr': 2e-3,
        'optim_wrapper.optimizer.weight_decay': 0.05, 'param_scheduler.0.end': 5,
        'param_scheduler.0.start_factor': 5e-4, 'param_scheduler.1.eta_min': 1e-5, 'train_cfg.max_epochs': 300,
        'custom_hooks.0.shrink_start_epoch': 10, 'custom_hooks.0.shrink_epochs': 100}),
    dict(config='configs/evit/evit_deit_small_patch16_224_ft30e_in1k.py', official=_EVIT + ':finetune.sh', gpus=8,
         expect={
        'model.keep_rate': 0.7, 'model.fuse_token': True, 'model.pretrained': True,
        'model.model_name': 'evit_deit_small_patch16_224', 'model.pretrained_cfg': 'fb_in1k',
        'train_dataloader.batch_size': 256, 'train_dataloader.sampler.type': 'RepeatAugSampler',
        'optim_wrapper.type': 'AmpOptimWrapper', 'optim_wrapper.clip_grad': None,
        'optim_wrapper.optimizer.lr': 8e-5, 'optim_wrapper.optimizer.weight_decay': 1e-6,
        'param_scheduler.0.type': 'CosineAnnealingLR', 'param_scheduler.0.eta_min': 2e-6, 'train_cfg.max_epochs': 30,
        'custom_hooks': []}),
    dict(config='configs/convit/va_convit_tiny_in1k.py', official=_CONVIT + ':main.py', gpus=8, expect={
        'train_dataloader.batch_size': 128, 'train_dataloader.sampler.type': 'RepeatAugSampler',
        'train_dataloader.sampler.num_repeats': 3, 'optim_wrapper.type': 'AmpOptimWrapper',
        'optim_wrapper.clip_grad': None, 'optim_wrapper.optimizer.lr': 1e-3,
        'optim_wrapper.optimizer.weight_decay': 0.05, 'model.drop_path_rate': 0.1, 'param_scheduler.0.end': 5,
        'param_scheduler.0.start_factor': 1e-3, 'param_scheduler.1.eta_min': 1e-5, 'train_cfg.max_epochs': 300}),
    dict(config='configs/convit/va_convit_small_in1k.py', official=_CONVIT + ':main.py', gpus=8, expect={
        'train_dataloader.batch_size': 128, 'train_dataloader.sampler.type': 'RepeatAugSampler',
        'train_dataloader.sampler.num_repeats': 3, 'optim_wrapper.type': 'AmpOptimWrapper',
        'optim_wrapper.clip_grad': None, 'optim_wrapper.optimizer.lr': 1e-3,
        'optim_wrapper.optimizer.weight_decay': 0.05, 'model.drop_path_rate': 0.1, 'param_scheduler.0.end': 5,
        'param_scheduler.0.start_factor': 1e-3, 'param_scheduler.1.eta_min': 1e-5, 'train_cfg.max_epochs': 300}),
    dict(config='configs/convit/va_convit_base_in1k.py', official=_CONVIT + ':main.py', gpus=8, expect={
        'train_dataloader.batch_size': 128, 'train_dataloader.sampler.type': 'RepeatAugSampler',
        'train_dataloader.sampler.num_repeats': 3, 'optim_wrapper.type': 'AmpOptimWrapper',
        'optim_wrapper.clip_grad': None, 'optim_wrapper.optimizer.lr': 1e-3,
        'optim_wrapper.optimizer.weight_decay': 0.05, 'model.drop_path_rate': 0.1, 'param_scheduler.0.end': 5,
        'param_scheduler.0.start_factor': 1e-3, 'param_scheduler.1.eta_min': 1e-5, 'train_cfg.max_epochs': 300}),
]
