"""Recipe rows for Sparsifiner (tests/mm/test_recipes.py): the two-phase fine-tune from lim142857/Sparsifiner's
sparsifiner_default_config.yaml (run_model.sh --IMNET sparsifiner_default 8) with the defaults of src/main.py; the
plain 300-epoch configs have no official counterpart (header: official none), their rows pin what they keep of the
official main.py."""
_REPO = 'lim142857/Sparsifiner@9a11e2639c350b99bca3fa3f9d5ce9616505ca71'
_MAIN = {  # src/main.py defaults
    'optim_wrapper.type': 'OptimWrapper',  # --use_amp False
    'optim_wrapper.optimizer.type': 'AdamW',
    'optim_wrapper.optimizer.weight_decay': 0.05,
    'model.loss.label_smooth_val': 0.1,
    'model.train_cfg.augments.0.alpha': 0.8,
    'model.train_cfg.augments.1.alpha': 1.0,
}

RECIPES = [
    dict(config='configs/sparsifiner/sparsifiner_deit_small_patch16_224_2phase_in1k.py',
         official=_REPO + ':experiments-results-analysis/experiments/sparsifiner_default_config.yaml', gpus=8,
         expect=dict(_MAIN, **{
             'model.type': 'SparsifinerClassifier',
             'model.model_name': 'sparsifiner_deit_small_patch16_224',
             'model.pretrained': True,  # starts from the DeiT-S weights
             'model.drop_path_rate': 0.0,  # --drop_path 0
             'model.recon_weight': 0.01,  # LOSS.ATTN_RECON.WEIGHT
             'model.cls_distill_weight': 0.5,
             'model.token_distill_weight': 0.5,
             'custom_hooks.0.type': 'SparsifinerPhaseHook',
             'custom_hooks.0.switch_epoch': 5,  # ['attn_recon', 0, 0, 5]
             'train_dataloader.batch_size': 168,
             'optim_wrapper.optimizer.lr': 3e-4,  # ATTN_RECON.BASE_LR
             'optim_wrapper.clip_grad': None,
             # ATTN_RECON: 3 warm-up epochs, cosine to FINAL_LR 2e-4 at epoch 5; CLS_DISTILL: 3 warm-up epochs to 8e-5,
             # cosine to FINAL_LR 2e-6 at epoch 50
             'param_scheduler.0.end': 3,
             'param_scheduler.1.eta_min': 2e-4,
             'param_scheduler.1.end': 5,
             'param_scheduler.2.begin': 5,
             'param_scheduler.2.end': 8,
             'param_scheduler.3.eta_min': 2e-6,
             'param_scheduler.3.end': 50,
             'train_cfg.max_epochs': 50,
         })),
    dict(config='configs/sparsifiner/sparsifiner_deit_small_patch16_224_in1k.py', official=_REPO + ':src/main.py',
         gpus=8, expect=dict(_MAIN, **{'model.model_name': 'sparsifiner_deit_small_patch16_224'})),
    dict(config='configs/sparsifiner/sparsifiner_deit_base_patch16_224_in1k.py', official=_REPO + ':src/main.py',
         gpus=8, expect=dict(_MAIN, **{'model.model_name': 'sparsifiner_deit_base_patch16_224'})),
]
