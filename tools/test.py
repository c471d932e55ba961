"""Evaluate a checkpoint with an OpenMMLab config (mmpretrain, mmdet or mmseg; the config's ``default_scope``).

    python tools/test.py configs/nat/upernet_nat_tiny_ade20k.py work_dirs/nat/iter_160000.pth
    python tools/test.py CONFIG CHECKPOINT --out results.pkl --show-dir vis/ --tta
    bash tools/dist_test.sh CONFIG CHECKPOINT 8
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))  # the checkout, also when not installed

from visionattn.mm.runner import build_runner, load_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description='Evaluate a visionattn model with an OpenMMLab config')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (ours, an mmengine checkpoint, or a whole detector/'
                                           'segmentor checkpoint)')
    parser.add_argument('--work-dir', help='where the evaluation log goes')
    parser.add_argument('--out', help='dump the predictions to this pickle file (evaluated as well)')
    parser.add_argument('--show-dir', help='draw the predictions into this folder (under the work dir)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (the config\'s tta_pipeline)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config entries (key=value)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _enable_visualization(cfg, show_dir: str) -> None:
    hooks = cfg.default_hooks
    hook = next((hooks[k] for k in ('visualization', 'vis') if k in hooks), None)
    if hook is None:
        raise ValueError('--show-dir needs a visualization hook in default_hooks (the toolbox runtime bases have one)')
    # each toolbox's own test.py: mmseg saves through the visualizer, mmdet and mmpretrain through the hook; a relative
    # folder goes under the work dir (mmdet's hook does that itself)
    if cfg.default_scope == 'mmdet':
        hook.update(draw=True, test_out_dir=show_dir)
        return
    show_dir = osp.join(cfg.work_dir, show_dir)
    if cfg.default_scope == 'mmpretrain':
        hook.update(enable=True, out_dir=show_dir)
    else:
        hook['draw'] = True
        cfg.visualizer['save_dir'] = show_dir


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, work_dir=args.work_dir, launcher=args.launcher)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        _enable_visualization(cfg, args.show_dir)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError(f'{args.config} defines no tta_model/tta_pipeline; --tta cannot run')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    runner = build_runner(cfg)
    if args.out:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
