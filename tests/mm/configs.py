"""Test helpers: the repository's configs, and any of them retargeted to the bundled demo data for quick runs."""
import copy
import glob
import os.path as osp
import re
from typing import Dict, List, Optional

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
CONFIG_DIR = osp.join(ROOT, 'configs')
DEMO_ROOT = osp.join(ROOT, 'demo_data', 'shapes')
CONFIGS = sorted(
    path for path in (osp.relpath(p, CONFIG_DIR) for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True))
    if not path.startswith('_base_' + osp.sep))  # not a substring test: 'upernet_nat_base_ade20k.py' is a config


def task(path: str) -> str:
    """'cls', 'seg' or 'det' from the config file name (OpenMMLab naming: the head comes first)."""
    name = osp.basename(path)
    if name.startswith(('upernet_', 'fpn_', 'mask2former_')):
        return 'seg'
    if name.startswith(('mask_rcnn_', 'retinanet_', 'cascade_', 'dino_')):
        return 'det'
    return 'cls'


def arch(cfg) -> str:
    model = cfg.model
    if 'model_name' in model:
        return model.model_name
    if model.get('type') == 'SegTTAModel':
        model = model.module
    return model.backbone.arch


def strip_pretrained(node) -> None:
    """Drop every ``init_cfg=dict(type='Pretrained', ...)`` and ``pretrained=True`` (nothing may be downloaded in
    tests)."""
    if isinstance(node, dict):
        if isinstance(node.get('init_cfg'), dict) and node['init_cfg'].get('type') == 'Pretrained':
            node['init_cfg'] = None
        if node.get('pretrained') is True:  # timm weights (TimmClassifier)
            node['pretrained'] = False
        for v in node.values():
            strip_pretrained(v)
    elif isinstance(node, list):
        for v in node:
            strip_pretrained(v)


def _set_num_classes(node, n: int) -> None:
    if isinstance(node, dict):
        if 'num_classes' in node:
            node['num_classes'] = n
        for v in node.values():
            _set_num_classes(v, n)
    elif isinstance(node, list):
        for v in node:
            _set_num_classes(v, n)


def on_demo_data(path: str, work_dir: str, iters: int = 1, n_val: int = 2, options: Optional[Dict] = None):
    """Config ``path`` (relative to configs/) trained for ``iters`` iterations on the bundled shapes data.

    The model is the config's own (backbone variant, heads, options) without pretrained weights, with the class
    count of the demo data; data, schedule and evaluation come from the demo dataset bases.
    """
    from mmengine.config import Config

    cfg = Config.fromfile(osp.join(CONFIG_DIR, path))
    kind = task(path)
    strip_pretrained(cfg._cfg_dict)
    if kind == 'cls':
        raise ValueError('classification configs need ImageNet-style data; use build checks for them')
    data = Config.fromfile(osp.join(CONFIG_DIR, '_base_', 'datasets',
                                    'demo_shapes.py' if kind == 'seg' else 'demo_shapes_coco.py'))
    root = DEMO_ROOT if kind == 'seg' else DEMO_ROOT + '/'
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = copy.deepcopy(data[key])
        loader.dataset.data_root = root
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.batch_size = 2 if key == 'train_dataloader' else 1
        if key != 'train_dataloader':
            loader.dataset.indices = n_val
        loader.pop('batch_sampler', None)
        cfg[key] = loader
    boxes_only = kind == 'det' and 'mask_head' not in cfg.model.get('roi_head', {})  # RetinaNet, DINO
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key] = copy.deepcopy(data[key])
        if 'ann_file' in cfg[key]:
            cfg[key].ann_file = osp.join(DEMO_ROOT, 'annotations', 'instances_val.json')
        if boxes_only:
            cfg[key].metric = ['bbox']
    n_cls = 4 if kind == 'seg' else 3
    _set_num_classes(cfg.model, n_cls)
    loss_cls = cfg.model.get('decode_head', {}).get('loss_cls')
    if loss_cls and loss_cls.get('class_weight'):  # Mask2Former: one weight per class, then the no-object one
        loss_cls.class_weight = [1.0] * n_cls + [loss_cls.class_weight[-1]]
    if kind == 'seg':
        cfg.model.data_preprocessor.size = (128, 128)
    if cfg.model.get('type') == 'DINO':  # its 900 queries are picked among the encoder tokens: a demo image has ~340
        cfg.model.num_queries = 100
    # after one iteration every detection may score below the 0.05 threshold (RetinaNet's prior is 0.01; Cascade's
    # third stage): keep them all, so that the metric has something to evaluate
    test_cfg = cfg.model.get('test_cfg') or {}
    for node in (test_cfg, test_cfg.get('rcnn') or {}):
        if 'score_thr' in node:
            node['score_thr'] = 0.
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters)
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=iters)]
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1, log_metric_by_epoch=False)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=iters)
    cfg.log_processor = dict(by_epoch=False)
    cfg.work_dir = work_dir
    cfg.launcher = 'none'
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    if options:
        cfg.merge_from_dict(options)
    import torch

    from visionattn.mm.runner import amp_to_fp32
    if not torch.cuda.is_available():  # what tools/train.py does on a CPU machine (load_config)
        amp_to_fp32(cfg)
    return cfg


def families_with_configs() -> Dict[str, List[str]]:
    """Family module -> its config files, by the registered model each config names."""
    from mmengine.config import Config
    from timm.models._registry import _model_to_module

    out: Dict[str, List[str]] = {}
    for path in CONFIGS:
        if path.startswith('demo' + osp.sep):
            continue
        text = open(osp.join(CONFIG_DIR, path)).read()
        m = re.search(r"(?:arch|model_name)='([^']+)'", text)
        name = m.group(1) if m else arch(Config.fromfile(osp.join(CONFIG_DIR, path)))
        out.setdefault(_model_to_module.get(name, '?'), []).append(path)
    return out
