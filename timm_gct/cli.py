""" The ``timm-gct`` command (also ``python -m timm_gct``).

    timm-gct list [PATTERN ...] [--format table|csv|json] [--measure]   registered models: params, GMACs
    timm-gct run SCRIPT [ARGS ...]                         run a timm script (validate.py, ...) with timm_gct loaded
    timm-gct compare [--models a,b,c] [--dataset ...]     train a baseline and attention models side by side
    timm-gct card MODEL[.TAG] [--output FILE]              a Hugging Face model card for a registered model
    timm-gct push CHECKPOINT --model NAME --repo-id ORG/NAME.TAG [--save-dir DIR]   publish train.py weights
    timm-gct convert CHECKPOINT --save-dir DIR [--model NAME]   an official FcaNet / ECA-Net / GCT checkpoint
    timm-gct bench [MODEL ...] [--device ...] [--compile]  speed and memory against plain ResNets and official code
    timm-gct inspect MODEL[.TAG] [--checkpoint PATH] [--images DIR]   attention parameters by depth, gates, maps
"""
import argparse
import csv
import fnmatch
import json
import runpy
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import timm
import torch
from timm.models import split_model_name_tag

import timm_gct
from ._text import text_table
from .bench.cli import add_bench_parser
from .compare import DEFAULT_MODELS, SCHEDULES, CompareConfig, CompareError, compare
from .convert import SUPPORTED, convert_checkpoint, supported_text
from .hub import (
    CardError, Weights, build_from_checkpoint, converted_from, converted_weights, load_train_checkpoint, push_to_hub,
    render_card, republished_weights, save_pretrained, trained_weights)
from .inspection_cli import add_inspect_parser
from .models import MODEL_MODULES, model_release
from .stats import ModelStats, measure
from .stats_table import cache_file, cached_stats, stats_versions, store_stats

__all__ = ['main']

_LIST_COLUMNS = ('model', 'mechanism', 'attn stages', 'attn layers', 'params (M)', 'added params', 'GMACs', 'input')


def _list_rows(stats: Sequence[ModelStats]) -> List[List[str]]:
    return [[
        s.name,
        s.mechanism,
        ','.join(map(str, s.attn_stages)) or '-',
        str(s.attn_layers),
        f'{s.params / 1e6:.2f}',
        f'{s.added_params:+,}',
        f'{s.macs / 1e9:.2f}',
        'x'.join(map(str, s.input_size[1:])),
    ] for s in stats]


def _cmd_list(args: argparse.Namespace) -> int:
    names = timm.list_models(module=MODEL_MODULES)
    if args.patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in args.patterns)]
        if not names:
            print(f'timm-gct list: no registered model matches {" ".join(args.patterns)}', file=sys.stderr)
            return 2
    stats = [measure(n) for n in names] if args.measure else _known_stats(names)
    if args.format == 'json':
        print(json.dumps([dict(asdict(s), added_params=s.added_params) for s in stats], indent=2))
        return 0
    rows = _list_rows(stats)
    if args.format == 'csv':
        writer = csv.writer(sys.stdout, lineterminator='\n')
        writer.writerow(_LIST_COLUMNS)
        writer.writerows(rows)
        return 0
    print(
        f'timm_gct {timm_gct.__version__} (timm {timm.__version__}, torch {torch.__version__}): {len(stats)} models. '
        'Params and GMACs are measured from each model at its default input size, batch 1 (once per version, then '
        'read from a table; --measure measures them again); "added params" is '
        'against the plain ResNet of the same depth and stem (timm resnetN, or resnetN_cifar); "attn layers" '
        'counts distinct attention modules (DIA shares one per stage; the _official GCT ResNets have one before '
        'every conv, the stem\'s included).')
    print(text_table(_LIST_COLUMNS, rows, left=3))
    return 0


def _known_stats(names: Sequence[str]) -> List[ModelStats]:
    """Stats from the tables for the installed versions; models missing there are measured once and cached."""
    known = cached_stats()
    missing = [n for n in names if n not in known]
    if missing:
        versions = ', '.join(f'{k} {v}' for k, v in stats_versions().items())
        print(f'timm-gct list: measuring {len(missing)} model{"s" * (len(missing) > 1)} for {versions} (a few tenths '
              f'of a second each); later runs read the figures from {cache_file()}', file=sys.stderr)
        measured = [measure(n) for n in missing]
        try:
            store_stats(measured)
        except OSError as e:
            print(f'timm-gct list: could not cache them ({e}); the next run measures them again (set '
                  'TIMM_GCT_CACHE_DIR to a writable folder)', file=sys.stderr)
        known.update((s.name, s) for s in measured)
    return [known[n] for n in names]


def _cmd_run(args: argparse.Namespace) -> int:
    script = Path(args.script)
    if not script.is_file():
        print(f'timm-gct run: SCRIPT {args.script!r} is not a file; give the path to e.g. validate.py from a '
              'checkout of huggingface/pytorch-image-models.', file=sys.stderr)
        return 2
    # Run it the way `python SCRIPT ARGS` would, except that timm_gct (and with it the installed timm) is already
    # imported, so the script's `import timm` finds the installed package even beside a checkout's timm/ folder.
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name='__main__')
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    cfg = CompareConfig(
        models=[m.strip() for m in args.models.split(',') if m.strip()], dataset=args.dataset, data_dir=args.data_dir,
        dataset_download=args.dataset_download, train_split=args.train_split, val_split=args.val_split,
        num_classes=args.num_classes, synthetic_samples=tuple(args.synthetic_samples), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, opt=args.opt, momentum=args.momentum,
        weight_decay=args.weight_decay, sched=args.sched, warmup_epochs=args.warmup_epochs, smoothing=args.smoothing,
        scale=tuple(args.scale), seed=args.seed, device=args.device, amp=args.amp, amp_dtype=args.amp_dtype,
        channels_last=args.channels_last, workers=args.workers, output=args.output, progress=not args.no_progress,
        save_weights=args.save_weights)
    try:
        results, _, interrupted = compare(cfg)
    except CompareError as e:
        print(f'timm-gct compare: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the epochs (a download, building the models, drawing): nothing to keep
        print('timm-gct compare: interrupted', file=sys.stderr)
        return 130
    if interrupted:
        return 130
    return 0 if results else 1  # no model finished an epoch


def _add_compare_parser(sub: argparse._SubParsersAction) -> None:
    d = CompareConfig()
    p = sub.add_parser(
        'compare', help='train a baseline and attention models side by side (default: synthetic data, a few minutes)',
        description='Train a baseline and attention models in lockstep on the same batches with timm\'s training '
                    'components, then print a table (params, GMACs, speed, best top-1, delta to the baseline) and '
                    'write epochs.csv, results.json and curves.png. With no arguments it runs on a small synthetic '
                    'dataset generated in-process (no downloads).')
    p.add_argument('--models', default=','.join(DEFAULT_MODELS),
                   help='comma-separated timm model names; the first is the baseline (default: %(default)s)')
    g = p.add_argument_group('data (train.py semantics)')
    g.add_argument('--dataset', default=None,
                   help="'synthetic' (default without --data-dir), torch/cifar10, torch/cifar100, ..., or '' for an "
                        "ImageFolder (default with --data-dir)")
    g.add_argument('--data-dir', default=None, help='dataset root; an ImageFolder has train/ and validation/ (or val/)')
    g.add_argument('--dataset-download', action='store_true', help='download torch/* datasets to --data-dir')
    g.add_argument('--train-split', default=d.train_split, help='(default: %(default)s)')
    g.add_argument('--val-split', default=d.val_split, help='(default: %(default)s)')
    g.add_argument('--num-classes', type=int, default=None, help='(default: from the dataset)')
    g.add_argument('--synthetic-samples', type=int, nargs=2, default=list(d.synthetic_samples),
                   metavar=('TRAIN', 'EVAL'), help='size of the synthetic splits (default: %(default)s)')
    g.add_argument('--scale', type=float, nargs=2, default=list(d.scale), metavar=('MIN', 'MAX'),
                   help='random-resized-crop area range, as train.py (default: %(default)s)')
    g.add_argument('--workers', type=int, default=d.workers, help='data loader processes (default: %(default)s)')
    g = p.add_argument_group('recipe (the same for every model)')
    g.add_argument('--epochs', type=int, default=d.epochs, help='(default: %(default)s)')
    g.add_argument('--batch-size', type=int, default=d.batch_size, help='(default: %(default)s)')
    g.add_argument('--lr', type=float, default=d.lr, help='(default: %(default)s)')
    g.add_argument('--opt', default=d.opt, help="timm optimizer name (default: %(default)s)")
    g.add_argument('--momentum', type=float, default=d.momentum, help='(default: %(default)s)')
    g.add_argument('--weight-decay', type=float, default=d.weight_decay, help='(default: %(default)s)')
    g.add_argument('--sched', default=d.sched, choices=SCHEDULES,
                   help='timm scheduler, stepped per update (default: %(default)s)')
    g.add_argument('--warmup-epochs', type=int, default=d.warmup_epochs, help='(default: %(default)s)')
    g.add_argument('--smoothing', type=float, default=d.smoothing, help='label smoothing (default: %(default)s)')
    g.add_argument('--seed', type=int, default=d.seed, help='(default: %(default)s)')
    g = p.add_argument_group('device and output')
    g.add_argument('--device', default=None, help='cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)')
    g.add_argument('--amp', action='store_true', help='mixed precision (torch.autocast)')
    g.add_argument('--amp-dtype', default=None, choices=('bfloat16', 'float16'),
                   help='(default: float16 with a loss scaler on CUDA, as train.py; bfloat16 elsewhere)')
    g.add_argument('--channels-last', action='store_true', help='channels_last memory layout for models and inputs')
    g.add_argument('--output', default=None, help='output directory (default: output/compare/<time>-<dataset>)')
    g.add_argument('--no-progress', action='store_true', help='no progress bars')
    g.add_argument('--save-weights', action='store_true',
                   help='write each model\'s final weights as <model>.safetensors (e.g. for timm-gct inspect)')
    p.set_defaults(func=_cmd_compare)


def _cmd_card(args: argparse.Namespace) -> int:
    try:
        model = timm.create_model(args.model, device='meta')  # measured without memory or compute
    except RuntimeError as e:  # timm: unknown model or tag
        print(f'timm-gct card: error: {e}', file=sys.stderr)
        return 2
    try:
        card = render_card(model, args.model)
    except CardError as e:
        print(f'timm-gct card: error: {e}', file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(card, encoding='utf-8')
    else:
        sys.stdout.write(card)
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    repo = args.repo_id.split('/')
    if len(repo) != 2 or not all(repo):
        print(f'timm-gct push: error: --repo-id {args.repo_id!r} is not allowed; expected ORG/NAME (e.g. '
              f'my-org/gct_resnet50.ft_in1k).', file=sys.stderr)
        return 2
    try:
        checkpoint = load_train_checkpoint(args.checkpoint, use_ema=args.use_ema)
        model = build_from_checkpoint(args.model, checkpoint)
        data_config = timm.data.resolve_data_config(checkpoint.args, model=model) if checkpoint.args else None
        weights = trained_weights(checkpoint, args.checkpoint, args.dataset or ())
        if split_model_name_tag(args.model)[1] and model_release(args.model):  # --model names an official release
            weights = _republished(
                'push', args.model, model.state_dict(), weights,
                f'published with `timm-gct push` from `{Path(args.checkpoint).name}`')
        model_id = f'hf-hub:{args.repo_id}'
        if args.save_dir:
            folder = save_pretrained(model, args.save_dir, model_id, weights, data_config)
            print(f'timm-gct push: wrote {", ".join(sorted(p.name for p in folder.iterdir()))} to {folder}; load it '
                  f"with timm.create_model('local-dir:{folder}', pretrained=True) after `import timm_gct`")
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(model, tmp, model_id, weights, data_config)
            url = push_to_hub(tmp, args.repo_id, private=args.private, revision=args.revision,
                              commit_message=args.commit_message)
    except ValueError as e:  # CardError, and ValueErrors of timm's save_for_hf
        print(f'timm-gct push: error: {e}', file=sys.stderr)
        return 2
    print(f"timm-gct push: uploaded to {url}; load it with timm.create_model('{model_id}', pretrained=True) after "
          f'`import timm_gct`')
    return 0


def _republished(command: str, model_name: str, state_dict: Dict[str, torch.Tensor], fallback: Weights,
                 how: str) -> Weights:
    """The release's provenance for weights that are its tensors unchanged; otherwise ``fallback``, with a note why."""
    try:
        return republished_weights(model_name, state_dict, how)
    except CardError as e:
        print(f'timm-gct {command}: note: {e}; the card does not describe the weights as the release.',
              file=sys.stderr)
        return fallback


def _cmd_convert(args: argparse.Namespace) -> int:
    try:
        model_name, state_dict = convert_checkpoint(args.checkpoint, args.model)
    except ValueError as e:
        print(f'timm-gct convert: error: {e}', file=sys.stderr)
        return 2
    model = timm.create_model(model_name)
    model.load_state_dict(state_dict)  # convert_checkpoint checked every key and shape against this model
    folder = Path(args.save_dir).resolve()
    source = next(s for s in SUPPORTED.values() if model_name in s.models)
    model_id = f'hf-hub:{args.repo_id}' if args.repo_id else f'local-dir:{folder}'
    weights = converted_weights(model_name, args.checkpoint, source)
    if args.repo_id and model_release(model_name):  # to be published: the release's provenance if it is the release
        weights = _republished('convert', model_name, state_dict, weights, converted_from(args.checkpoint))
    save_pretrained(model.eval(), str(folder), model_id, weights)
    files = ', '.join(sorted(p.name for p in folder.iterdir()))
    upload = f'upload it unchanged with `hf upload {args.repo_id} {folder}`' if args.repo_id else \
        'pass --repo-id ORG/NAME for a card that loads it from the Hub'
    print(f'timm-gct convert: {args.checkpoint} -> {model_name}; wrote {files} to {folder}; load it with '
          f"timm.create_model('local-dir:{folder}', pretrained=True) after `import timm_gct`; {upload}")
    return 0


def _add_hub_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'card', help='print a Hugging Face model card for a registered model (with an optional pretrained tag)',
        description="Render the model card timm_gct writes to the Hub for MODEL[.TAG]: timm's layout, with params, "
                    'GMACs and activations measured from the model and the mechanism\'s paper, code and citation.')
    p.add_argument('model', metavar='MODEL[.TAG]')
    p.add_argument('--output', default=None, help='write the card to this file instead of stdout')
    p.set_defaults(func=_cmd_card)

    p = sub.add_parser(
        'push', help="publish a train.py checkpoint to the Hugging Face Hub (or a local folder with --save-dir)",
        description="Load CHECKPOINT (train.py's model_best.pth.tar, a state dict or a .safetensors file; torch files "
                    'with weights_only=True), build --model with the checkpoint\'s model arguments, and write '
                    'model.safetensors, config.json and a model card; upload them to --repo-id, or keep them in '
                    "--save-dir. Load the result with timm.create_model('hf-hub:ORG/NAME', pretrained=True) after "
                    '`import timm_gct`. Uploading needs a Hub token (hf auth login, or HF_TOKEN).')
    p.add_argument('checkpoint', metavar='CHECKPOINT')
    p.add_argument('--model', required=True,
                   help='the registered model the checkpoint was trained as; with an official release\'s tag (e.g. '
                        'fca_resnet50.official_in1k) the weights are compared with that release, and the card keeps '
                        'its provenance when they are the same tensors')
    p.add_argument('--repo-id', required=True, metavar='ORG/NAME.TAG',
                   help='Hub repository, e.g. org/gct_resnet50.ft_in1k')
    p.add_argument('--private', action='store_true', help='create the repository as private (a new one only)')
    p.add_argument('--revision', default=None, help='branch to upload to (created when missing; default: main)')
    p.add_argument('--save-dir', default=None, help='write the folder here instead of uploading')
    p.add_argument('--use-ema', action='store_true', help="publish the checkpoint's EMA weights (train.py --model-ema)")
    p.add_argument('--dataset', action='append', default=None,
                   help='dataset the weights were trained on, for the card (a Hub dataset id, e.g. imagenet-1k); '
                        'repeatable')
    p.add_argument('--commit-message', default='Add model', help='(default: %(default)s)')
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser(
        'convert', help="convert a released official checkpoint (FcaNet, ECA-Net, GCT) to this package's model",
        description='Load an official checkpoint (weights_only=True), detect its layout and depth from the keys, map '
                    'the keys to the registered model, check every key and shape, and write model.safetensors, '
                    f'config.json and a model card to --save-dir. Supported: {supported_text()}.')
    p.add_argument('checkpoint', metavar='CHECKPOINT')
    p.add_argument('--save-dir', required=True, help='output folder (a timm local-dir: model)')
    p.add_argument('--model', default=None, help='expected model (default: detected from the keys)')
    p.add_argument('--repo-id', default=None, metavar='ORG/NAME',
                   help='the Hub repository the folder is meant for: the card\'s snippets load from it; for a model '
                        'with an official release (FcaNet), the weights are compared with it (timm\'s loader: its '
                        'cache or a download) and the card keeps its provenance when they are the same tensors')
    p.set_defaults(func=_cmd_convert)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-gct', description='Attention-augmented ResNets for timm.')
    parser.add_argument('--version', action='version', version=f'timm_gct {timm_gct.__version__}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser(
        'list', help='list the registered models with measured params and GMACs',
        description='List the registered models with their params, added params against the plain ResNet, GMACs '
                    'and attention layers. The figures were measured from the models once for these timm_gct, timm '
                    'and torch versions and are read from a table (shipped with the package, or cached in '
                    f'{cache_file().parent}; TIMM_GCT_CACHE_DIR moves it).')
    p.add_argument('patterns', nargs='*', metavar='PATTERN', help="fnmatch patterns, e.g. 'gct_*'")
    p.add_argument('--format', choices=('table', 'csv', 'json'), default='table')
    p.add_argument('--measure', action='store_true',
                   help='build every listed model on the meta device and measure it again (about 0.25 s each) '
                        'instead of reading the table')
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        'run', help='run a timm script (validate.py, inference.py, benchmark.py, train.py) with timm_gct imported',
        description='Import timm_gct, then run SCRIPT as __main__ with ARGS, as `python SCRIPT ARGS` would.')
    p.add_argument('script', metavar='SCRIPT')
    p.add_argument('args', nargs=argparse.REMAINDER, metavar='ARGS')
    p.set_defaults(func=_cmd_run)

    _add_compare_parser(sub)
    _add_hub_parsers(sub)
    add_bench_parser(sub)
    add_inspect_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)
