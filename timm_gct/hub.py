""" Hugging Face Hub: model cards, saving and pushing

* ``render_card`` writes a model card laid out like timm's own (YAML front matter, Model Details, Model Usage,
  Citation) from the mechanism's data in ``hub_cards/`` and statistics measured from the model itself.
* ``load_train_checkpoint`` reads a checkpoint written by timm's train.py without unpickling arbitrary objects.
* ``release_weights`` says what an official release's tag holds (``fca_resnet50.official_in1k``);
  ``republished_weights`` keeps that provenance for the release re-published unchanged (compared tensor by tensor).
* ``save_pretrained`` writes ``model.safetensors``, ``config.json`` (timm's ``save_for_hf``: ``architecture`` is the
  registered name) and the card as ``README.md``; ``push_to_hub`` uploads that folder with huggingface_hub.

``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` and ``'local-dir:DIR'`` load what is written here once
``timm_gct`` is imported (timm has no plugin discovery, so the card's snippets start with that import).
"""
import argparse
import copy
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import yaml
from timm.models import clean_state_dict, is_model_in_modules, load_state_dict, save_for_hf, split_model_name_tag

from ._safe_load import safe_torch_load
from ._text import few
from .convert import OfficialSource
from .models import architecture_cfg, model_mechanism, model_release, resnet_weights_source
from .stats import count_activations, count_macs, count_params

__all__ = [
    'CardError', 'TrainCheckpoint', 'Weights', 'build_from_checkpoint', 'card_data', 'card_key', 'converted_from',
    'converted_weights', 'load_train_checkpoint', 'push_to_hub', 'release_weights', 'render_card',
    'republished_weights', 'save_pretrained', 'trained_weights',
]

_DEMO_IMAGE = (
    'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png')
# What train.py's checkpoints hold besides tensors, dicts, lists and numbers: its parsed arguments.
_CHECKPOINT_SAFE_GLOBALS = [argparse.Namespace]


class CardError(ValueError):
    """A model, tag or checkpoint that a card or an upload cannot be made for; the message says why."""


@dataclass
class Weights:
    """What the card says about the weights: where they come from, and numbers measured for them (with a source)."""
    summary: str
    datasets: Tuple[str, ...] = ()
    details: List[str] = field(default_factory=list)  # markdown bullet lines, without the leading '- '
    results: str = ''  # markdown section body (a table with its source), or ''
    papers: Tuple[str, ...] = ()  # 'title: url' lines besides the mechanism's and ResNet's papers
    citations: Tuple[str, ...] = ()
    license: Optional[str] = None  # the weights' license when it is not the architecture's cfg license
    origin_url: Optional[str] = None  # where the weights were first published, for config.json
    notes: Tuple[str, ...] = ()  # config.json's notes, e.g. the accuracy published for the weights, with its source


def card_key(model_name: str) -> str:
    """The ``hub_cards/<key>.yaml`` that describes a registered model (``gct_resnet50.tag`` -> ``gct``)."""
    arch, _ = split_model_name_tag(model_name)
    if is_model_in_modules(arch, ['gct_official']):
        return 'gct_official'
    try:
        mechanism = model_mechanism(arch)
    except KeyError:
        raise CardError(
            f'model={model_name!r} is not a timm_gct model; expected one of `timm-gct list` (with an optional '
            f'.tag)') from None
    return mechanism.name if mechanism is not None else 'resnet'


def card_data(key: str) -> Dict[str, Any]:
    """The card data in ``hub_cards/<key>.yaml`` (a mechanism key, 'resnet', 'gct_official', 'resnet_weights',
    'releases')."""
    path = resources.files('timm_gct.hub_cards') / f'{key}.yaml'
    if not path.is_file():
        raise CardError(f'No card data for {key!r}: hub_cards/{key}.yaml is missing from the installation.')
    return yaml.safe_load(path.read_text(encoding='utf-8'))


def _paper_url(data: Dict[str, Any]) -> str:
    return f"https://arxiv.org/abs/{data['arxiv']}" if data.get('arxiv') else data['paper_url']


def _paper_line(data: Dict[str, Any]) -> str:
    return f"{data.get('paper') or data['title']}: {_paper_url(data)}"


def _resnet_weights(model_name: str, title: str) -> Weights:
    source = resnet_weights_source(model_name)  # e.g. resnet50.a1_in1k
    source_tag = source.split('.')[1]
    data = card_data('resnet_weights')
    recipe = data['recipes'][source_tag]
    rows = data['imagenet_1k'][source]
    table = '\n'.join(
        ['| image size | crop pct | interpolation | top-1 | top-5 |', '|---|---|---|---|---|'] +
        [f"| {r['img_size']} | {r['crop_pct']} | {r['interpolation']} | {r['top1']} | {r['top5']} |" for r in rows])
    return Weights(
        summary=(
            f"The weights are timm's plain `{source}` weights ([timm/{source}](https://huggingface.co/timm/{source})) "
            f'with every {title} layer at its identity initialisation, untrained: this model computes exactly the '
            f"same function as `{source}`. It is a starting point for fine-tuning, not {title}-trained weights."),
        datasets=('imagenet-1k',),
        details=[
            f'**Weights:** `{source}`: {recipe["description"].strip()} The {title} layers are untrained (identity).'],
        results=(
            f'ImageNet-1k validation accuracy of the source weights `{source}`, as published by timm '
            f'([results-imagenet.csv]({data["accuracy_source"].strip()})). This model holds the same weights with '
            f'the {title} layers at identity, so it computes the same outputs; not re-measured here.\n\n{table}'),
        papers=tuple(_paper_line(data['citations'][key]) for key in recipe['papers']),
        citations=tuple(data['citations'][key]['bibtex'] for key in recipe['papers']),
    )


def release_weights(model_name: str, how: Optional[str] = None) -> Weights:
    """What a card says about an official release's tag (``fca_resnet50.official_in1k``): the authors' weights, their
    training and evaluation, license and published top-1 with its source. ``how``: how the files at hand were made
    from the release, when they are not the tag's download."""
    release, depth = model_release(model_name)
    arch = model_name.split('.')[0]
    cfg = timm.models.get_pretrained_cfg(f'{arch}.{release.tag}').to_dict()
    title = card_data(card_key(arch))['title']
    data = card_data('releases')[card_key(arch)]
    reported, evaluated = release.top1_of(depth)
    return Weights(
        summary=(
            f"The {title} authors' ImageNet-1k weights for {title} ResNet-{depth}, from their release "
            f"(`{cfg['url']}`, {release.origin_url}). " + (how or (
                "timm's loader downloads the file and timm_gct maps its official keys onto this model with the code "
                'of `timm-gct convert` (every key, shape and fixed filter checked): the same tensors, so the model '
                "computes the authors' network."))),
        datasets=('imagenet-1k',),
        details=[
            f"**Training:** {data['training'].strip()}",
            f"**Evaluation:** {data['evaluation'].strip()}",
            f"**Official code:** {data['code']}",
        ],
        results=(
            f'ImageNet-1k validation top-1 (%) published by the authors ([README]({release.top1_source})): reported, '
            f'and their evaluation of the released file; not re-measured by timm_gct.\n\n'
            f'| model | reported top-1 | evaluated top-1 |\n|---|---|---|\n'
            f'| `{arch}.{release.tag}` | {reported} | {evaluated} |'),
        license=cfg['license'],
        origin_url=release.origin_url,
        notes=tuple(cfg['notes']),
    )


def republished_weights(model_name: str, state_dict: Dict[str, torch.Tensor], how: str) -> Weights:
    """``release_weights`` for weights re-published unchanged, e.g. converted or saved again as safetensors.

    ``state_dict`` is compared key by key and tensor by tensor with the release of ``model_name`` as timm's own loader
    gives it (from its cache, or downloaded); ``how`` says how these files were made from it ('converted with ...').
    A CardError when the release cannot be loaded or any tensor differs."""
    try:
        reference = timm.create_model(model_name, pretrained=True).state_dict()
    except (OSError, RuntimeError, ValueError) as e:  # download, cache and loading errors
        raise CardError(f'the release of {model_name} could not be loaded to compare with: {e}') from None
    differ = sorted(
        k for k in reference.keys() | state_dict.keys() if k not in reference or k not in state_dict or
        reference[k].dtype != state_dict[k].dtype or not torch.equal(reference[k], state_dict[k]))
    if differ:
        raise CardError(f'the weights differ from the release of {model_name}: {few(differ)}.')
    return release_weights(model_name, (
        f"These files were {how}; every tensor equals the release's as timm_gct loads it (compared when they were "
        f'written): the release, re-published unchanged.'))


def _untrained_weights(model_name: str, notes: Sequence[str] = ()) -> Weights:
    return Weights(summary=(
        f'No trained weights are published for `{model_name}`: `timm.create_model(\'{model_name}\')` builds it '
        f'randomly initialised, for training from scratch.' + ''.join(f' {n}' for n in notes)))


def converted_from(checkpoint: str) -> str:
    """'converted with `timm-gct convert` from `<file name>` (sha256 <digest>)', for a card."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    return f'converted with `timm-gct convert` from `{Path(checkpoint).name}` (sha256 {digest})'


def converted_weights(model_name: str, checkpoint: str, source: OfficialSource) -> Weights:
    """What a card says about a checkpoint converted from an official layout with ``timm-gct convert``."""
    return Weights(
        summary=(
            f'Weights {converted_from(checkpoint)}, a checkpoint in the official {source.title} layout (the '
            f"authors release {source.files} at {source.where}), to `{model_name}`'s key layout: the same tensors, "
            f"renamed and reshaped. Check the sha256 against the authors' file; their reported accuracy was not "
            f're-measured by timm_gct.'),
        datasets=('imagenet-1k',), license=source.license)


def _weights_for(model_name: str, title: str, notes: Sequence[str] = ()) -> Weights:
    if resnet_weights_source(model_name):
        return _resnet_weights(model_name, title)
    if model_release(model_name):
        return release_weights(model_name)
    return _untrained_weights(model_name, notes)


def _shape(t: torch.Tensor) -> str:
    return f'torch.Size({list(t.shape)})'


def _measure(model: torch.nn.Module, input_size: Tuple[int, int, int]) -> Dict[str, Any]:
    """Parameters, MACs, activations and output shapes, measured on a meta-device copy (no memory, no compute)."""
    meta = copy.deepcopy(model).to('meta').eval()
    x = torch.empty(1, *input_size, device='meta')
    with torch.no_grad():
        features = meta.forward_intermediates(x, intermediates_only=True)
        unpooled = meta.forward_features(x)
    return dict(
        params=count_params(model),
        macs=count_macs(meta, input_size),
        acts=count_activations(meta, input_size),
        features=[_shape(f) for f in features],
        unpooled=_shape(unpooled),
        pooled=f'(1, {meta.num_features})',
    )


def _image_size(cfg: Dict[str, Any]) -> str:
    train = cfg['input_size'][1:]
    test = (cfg.get('test_input_size') or cfg['input_size'])[1:]
    size = ' x '.join(str(s) for s in train)
    return size if test == train else f"train = {size}, test = {' x '.join(str(s) for s in test)}"


def _usage(load: str, m: Dict[str, Any]) -> str:
    """timm's three usage snippets; ``load`` is create_model's leading arguments, e.g. "'name.tag', pretrained=True"."""
    head = 'import timm_gct  # registers the timm_gct models with timm; needed before create_model\nimport timm\n'
    image = (
        'from urllib.request import urlopen\nfrom PIL import Image\n\n'
        f"img = Image.open(urlopen(\n    '{_DEMO_IMAGE}'\n))\n")
    transforms = (
        "# get model specific transforms (normalization, resize)\n"
        "data_config = timm.data.resolve_model_data_config(model)\n"
        "transforms = timm.data.create_transform(**data_config, is_training=False)\n")
    features = '\n'.join(f'    # {s}' for s in m['features'])
    return f"""### Image Classification
```python
{head}import torch
{image}
model = timm.create_model({load})
model = model.eval()

{transforms}
output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1
top5_probabilities, top5_class_indices = torch.topk(output.softmax(dim=1) * 100, k=5)
```

### Feature Map Extraction
```python
{head}{image}
model = timm.create_model({load}, features_only=True)
model = model.eval()

{transforms}
output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1
for o in output:
    # print the shape of each feature map in output, e.g.:
{features}
    print(o.shape)
```

### Image Embeddings
```python
{head}{image}
model = timm.create_model({load}, num_classes=0)  # remove classifier nn.Linear
model = model.eval()

{transforms}
output = model(transforms(img).unsqueeze(0))  # output is (batch_size, num_features) shaped tensor, {m['pooled']}

# or equivalently (without needing to set num_classes=0)
output = model.forward_features(transforms(img).unsqueeze(0))
# output is unpooled, a {m['unpooled']} shaped tensor
output = model.forward_head(output, pre_logits=True)
# output is a (1, num_features) shaped tensor
```
"""


def render_card(
        model: torch.nn.Module,
        model_id: str,
        weights: Optional[Weights] = None,
) -> str:
    """A Hugging Face model card (markdown with YAML front matter) for ``model``, a registered timm_gct model.

    Args:
        model: The model as it will be loaded (its ``pretrained_cfg`` gives the name, tag and data config).
        model_id: What users pass to ``timm.create_model``: ``hf-hub:org/repo`` or ``local-dir:path`` for saved
            weights; otherwise the registered name (with the model's tag) is used.
        weights: What to say about the weights; by default what the model's pretrained tag holds (timm's ResNet
            weights for the identity-at-init tags) or, without published weights, that there are none.
    """
    cfg = model.pretrained_cfg
    arch, tag = cfg['architecture'], cfg.get('tag') or ''
    name = f'{arch}.{tag}' if tag else arch
    saved = model_id.startswith(('hf-hub:', 'local-dir:'))
    model_id = model_id if saved else name
    has_weights = saved or bool(cfg.get('hf_hub_id') or cfg.get('url') or cfg.get('file'))
    data = card_data(card_key(arch))
    resnet = card_data('resnet')
    title = data['title']
    weights = weights or _weights_for(name, title, cfg.get('notes') or ())
    m = _measure(model, tuple(cfg['input_size']))
    papers = [_paper_line(data)] + ([_paper_line(resnet)] if data['mechanism'] != 'resnet' else [])
    papers += list(weights.papers)
    meta = {
        'tags': ['image-classification', 'timm', 'timm_gct'],
        'library_name': 'timm',
        'license': weights.license or cfg.get('license') or 'apache-2.0',
    }
    if weights.datasets:
        meta['datasets'] = list(weights.datasets)
    deviations = ''.join(f'- {d.strip()}\n' for d in data['deviations']) or '- none\n'
    details = ''.join(f'- {d}\n' for d in weights.details)
    citations = [data['citation']] + ([resnet['citation']] if data['mechanism'] != 'resnet' else [])
    citations += list(weights.citations) + [card_data('resnet_weights')['citations']['timm']['bibtex']]
    sections = [
        '---\n' + yaml.safe_dump(meta, sort_keys=False) + '---',
        f"# Model card for {model_id.split(':', 1)[-1]}",
        f"{data['description'].strip()}\n\n{weights.summary}",
        '## Model Details\n'
        '- **Model Type:** Image classification / feature backbone\n'
        '- **Model Stats:**\n'
        f"  - Params (M): {m['params'] / 1e6:.1f}\n"
        f"  - GMACs: {m['macs'] / 1e9:.1f}\n"
        f"  - Activations (M): {m['acts'] / 1e6:.1f}\n"
        f'  - Image size: {_image_size(cfg)}\n'
        '- **Papers:**\n' + ''.join(f'  - {p}\n' for p in papers) +
        (f"- **Dataset:** {', '.join(weights.datasets)}\n" if weights.datasets else '') +
        f"- **Original:** {data['code']}\n" + details,
        f'## Architecture\n`{arch}` is ' + (
            "timm's ResNet with the CIFAR stem of the timm_gct package. " if data['mechanism'] == 'resnet' else
            "timm's ResNet with attention layers added by the timm_gct package. ") +
        f"{data['placement'].strip()}\n\nDeviations from the official code:\n{deviations}",
        f"## Model Usage\n{_usage(repr(model_id) + (', pretrained=True' if has_weights else ''), m)}",
    ]
    if weights.results:
        sections.append(f'## Results\n{weights.results}')
    sections.append('## Citation\n' + '\n'.join(f'```bibtex\n{c.strip()}\n```' for c in citations))
    return '\n\n'.join(section.rstrip('\n') for section in sections) + '\n'


@dataclass
class TrainCheckpoint:
    """The parts of a train.py checkpoint that a published model needs."""
    state_dict: Dict[str, torch.Tensor]
    args: Dict[str, Any]  # train.py's arguments ({} for a bare state dict)
    epoch: Optional[int] = None
    metric: Optional[float] = None
    ema: bool = False  # state_dict holds the EMA weights (train.py --model-ema)


def load_train_checkpoint(path: str, use_ema: bool = False) -> TrainCheckpoint:
    """Read a checkpoint written by timm's train.py (``model_best.pth.tar``), a bare state dict or a safetensors file.

    Torch files are loaded with ``weights_only=True``: tensors, containers, numbers and train.py's
    ``argparse.Namespace``, nothing that runs code when unpickled.
    """
    if Path(path).suffix == '.safetensors':
        if use_ema:
            raise CardError(f'checkpoint={path!r} is a bare safetensors file: it has no EMA weights; drop --use-ema.')
        return TrainCheckpoint(load_state_dict(path), {})
    try:
        checkpoint = safe_torch_load(path, _CHECKPOINT_SAFE_GLOBALS)
    except ValueError as e:
        raise CardError(str(e)) from None
    if not isinstance(checkpoint, dict):
        raise CardError(f'checkpoint={path!r} holds a {type(checkpoint).__name__}; expected a dict.')
    key = 'state_dict_ema' if use_ema else 'state_dict'
    if use_ema and key not in checkpoint:
        raise CardError(
            f'checkpoint={path!r} has no EMA weights (state_dict_ema); train with --model-ema or drop --use-ema.')
    state_dict = checkpoint.get(key, checkpoint)
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CardError(f'checkpoint={path!r} holds no state dict: expected "state_dict" or a dict of tensors.')
    args = checkpoint.get('args')
    return TrainCheckpoint(
        state_dict=clean_state_dict(state_dict),  # strips the 'module.' of DataParallel/DDP checkpoints
        args=vars(args) if isinstance(args, argparse.Namespace) else {},
        epoch=checkpoint.get('epoch'),
        metric=checkpoint.get('metric'),
        ema=use_ema,
    )


def _train_model_kwargs(args: Dict[str, Any]) -> Dict[str, Any]:
    """The model arguments train.py passed to ``create_model`` (those that change the weights or the outputs)."""
    input_size = args.get('input_size')
    in_chans = args.get('in_chans') or (input_size[0] if input_size else None)  # as train.py resolves it
    train_args = dict(
        num_classes=args.get('num_classes'), in_chans=in_chans, global_pool=args.get('gp'),
        bn_momentum=args.get('bn_momentum'), bn_eps=args.get('bn_eps'))
    return {**(args.get('model_kwargs') or {}), **{k: v for k, v in train_args.items() if v is not None}}


def build_from_checkpoint(model_name: str, checkpoint: TrainCheckpoint) -> torch.nn.Module:
    """The registered model ``model_name`` holding the checkpoint's weights, built with train.py's model arguments.

    Any mismatch is a CardError naming the missing, unexpected and differently shaped keys.
    """
    arch, _ = split_model_name_tag(model_name)
    card_key(arch)  # a timm_gct model
    trained = checkpoint.args.get('model')
    if trained and split_model_name_tag(trained)[0] != arch:
        raise CardError(f'model={model_name!r} does not match the checkpoint, which train.py wrote for {trained!r}.')
    kwargs = _train_model_kwargs(checkpoint.args)
    fc = checkpoint.state_dict.get('fc.weight')
    if 'num_classes' not in kwargs and fc is not None:
        kwargs['num_classes'] = fc.shape[0]
    model = timm.create_model(model_name, **kwargs)
    own = model.state_dict()
    missing = sorted(own.keys() - checkpoint.state_dict.keys())
    unexpected = sorted(checkpoint.state_dict.keys() - own.keys())
    shapes = sorted(
        f'{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})' for k, v in checkpoint.state_dict.items()
        if k in own and v.shape != own[k].shape)
    if missing or unexpected or shapes:
        raise CardError(
            f'The checkpoint does not fit {arch} (built with {kwargs}): missing keys: {few(missing)}; '
            f'unexpected keys: {few(unexpected)}; other shapes: {few(shapes)}.')
    model.load_state_dict(checkpoint.state_dict)
    return model.eval()


def trained_weights(checkpoint: TrainCheckpoint, source: str, datasets: Sequence[str] = ()) -> Weights:
    """What a card says about weights trained by the uploader with train.py: the recorded recipe and metric."""
    args, name, datasets = checkpoint.args, Path(source).name, tuple(datasets)
    if not args:  # a bare state dict or safetensors file: nothing recorded about its training
        return Weights(summary=f'Weights from `{name}`, published by the uploader.', datasets=datasets)
    which = 'EMA weights' if checkpoint.ema else 'weights'
    summary = f"The {which} of a model trained by the uploader with timm's train.py (checkpoint `{name}`)."
    # With --model-ema (EMA kept on the device), train.py records the EMA model's metric in the checkpoint.
    metric_is_ema = bool(args.get('model_ema')) and not args.get('model_ema_force_cpu')
    if checkpoint.metric is not None and metric_is_ema == checkpoint.ema:
        done = checkpoint.epoch + 1 if checkpoint.epoch is not None else None  # train.py counts epochs from 0
        after = f" after {done} epoch{'s' if done != 1 else ''}" if done is not None else ''
        summary += (
            f" train.py recorded {args.get('eval_metric', 'top1')} = {checkpoint.metric:.2f} for them on its "
            f'validation set{after} (as stored in the checkpoint; not re-measured by timm_gct).')
    recipe = ', '.join(
        f'{k}={args[k]}' for k in ('epochs', 'batch_size', 'opt', 'lr', 'weight_decay', 'sched', 'smoothing', 'mixup',
                                   'cutmix', 'aa', 'model_ema') if args.get(k) not in (None, '', 0, False))
    details = [f"**Training:** timm's train.py, as recorded in the checkpoint: {recipe}."]
    return Weights(summary=summary, datasets=datasets, details=details)


# Cfg fields that say where weights come from; a model built from a ResNet-weights tag must not pass them on.
_PROVENANCE = ('tag', 'description', 'notes', 'license', 'origin_url', 'paper_ids', 'paper_name')


def save_pretrained(
        model: torch.nn.Module,
        save_dir: str,
        model_id: str,
        weights: Weights,
        data_config: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and the model card ``README.md`` into ``save_dir``.

    ``timm.create_model('local-dir:<save_dir>', pretrained=True)`` (after ``import timm_gct``) loads the folder; so
    does ``'hf-hub:ORG/NAME'`` once it is uploaded. The saved cfg describes these weights, not the cfg the model was
    built from (e.g. a ResNet-weights tag), and the card describes what ``config.json`` says, data config included.
    """
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    original = model.pretrained_cfg
    arch = original['architecture']
    own = architecture_cfg(arch)
    tag = model_id.split(':', 1)[-1].split('/')[-1].partition('.')[2] or None
    try:
        model.pretrained_cfg = {
            **original, **{k: own.get(k) for k in _PROVENANCE},
            'tag': tag, 'description': weights.summary, 'license': weights.license or own.get('license'),
            'origin_url': weights.origin_url or own.get('origin_url'), 'notes': weights.notes or own.get('notes'),
        }
        save_for_hf(model, str(out), safe_serialization=True, data_config=data_config)
        saved = json.loads((out / 'config.json').read_text(encoding='utf-8'))['pretrained_cfg']
        model.pretrained_cfg = {'architecture': arch, 'tag': tag, 'test_input_size': None, **saved}
        (out / 'README.md').write_text(render_card(model, model_id, weights), encoding='utf-8')
    finally:
        model.pretrained_cfg = original
    return out


def push_to_hub(
        folder: str,
        repo_id: str,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: str = 'Add model',
        token: Optional[str] = None,
) -> str:
    """Upload a folder written by ``save_pretrained`` to the Hub repo ``repo_id``; returns the commit URL."""
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message)
    return info.commit_url
