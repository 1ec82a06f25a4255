""" timm_gct.hub and the `timm-gct card` / `push` commands: cards, safe checkpoint loading, saving, uploading, and the
Hub download path end to end against a local stand-in for the Hub's file endpoints. """
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from timm_gct import hub
from timm_gct.cli import main
from timm_gct.stats import count_activations, count_macs

from .helpers import RunsCodeWhenUnpickled, randomize


def _front_matter(card: str) -> dict:
    match = re.match(r'---\n(.*?)\n---\n', card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def _meta(name: str, **kwargs) -> nn.Module:
    return timm.create_model(name, device='meta', **kwargs)


# -- cards ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', [
    'gct_resnet50', 'nam_resnet18', 'gc_resnet18_cifar', 'triplet_resnet18', 'eca_resnet34', 'srm_resnet18',
    'fca_resnet18', 'gsop_resnet18', 'soca_resnet18_cifar', 'enc_resnet18_cifar', 'ba_resnet18', 'cc_resnet18',
    'dia_resnet18_cifar', 'resnet18_cifar'])
def test_every_mechanism_renders_a_timm_style_card(name):
    model = _meta(name)
    card = hub.render_card(model, name)
    meta = _front_matter(card)
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0'
    assert meta['tags'][:2] == ['image-classification', 'timm'] and 'transformers' not in meta['tags']
    data = hub.card_data(hub.card_key(name))
    for heading in ('## Model Details', '## Architecture', '## Model Usage', '### Image Classification',
                    '### Feature Map Extraction', '### Image Embeddings', '## Citation'):
        assert heading in card
    assert data['citation'].strip() in card and data['code'] in card
    # Every snippet imports the plugin before timm can be asked for the model.
    snippets = re.findall(r'```python\n(.*?)```', card, re.S)
    assert len(snippets) == 3 and all(s.startswith('import timm_gct') for s in snippets)


def test_card_stats_are_measured_from_the_model():
    model = _meta('gct_resnet50')
    card = hub.render_card(model, 'gct_resnet50')
    params = sum(p.numel() for p in model.parameters())
    assert f'Params (M): {params / 1e6:.1f}' in card
    assert 'GMACs: 4.1' in card and 'Activations (M): 11.1' in card  # resnet50's, as on timm's card: GCT adds ~0
    assert 'Image size: train = 224 x 224, test = 288 x 288' in card  # from resnet50.a1_in1k's cfg
    # The snippets' shapes come from running the model (on the meta device).
    assert '# torch.Size([1, 64, 112, 112])' in card and '# torch.Size([1, 2048, 7, 7])' in card
    assert 'torch.Size([1, 2048, 7, 7]) shaped tensor' in card and '(1, 2048)' in card
    cifar = hub.render_card(_meta('gct_resnet18_cifar'), 'gct_resnet18_cifar')
    assert 'Image size: 32 x 32' in cifar and '# torch.Size([1, 512, 4, 4])' in cifar


def test_resnet_weights_card_says_what_the_weights_are():
    name = 'gct_resnet50.resnet_tv_in1k_attn_identity'
    card = hub.render_card(_meta(name), name)
    assert _front_matter(card)['license'] == 'bsd-3-clause'  # torchvision's weights keep their license
    assert _front_matter(card)['datasets'] == ['imagenet-1k']
    assert '# Model card for gct_resnet50.resnet_tv_in1k_attn_identity' in card
    assert "timm's plain `resnet50.tv_in1k` weights" in card and 'not GCT-trained weights' in card
    assert "timm.create_model('gct_resnet50.resnet_tv_in1k_attn_identity', pretrained=True)" in card
    # The only accuracy numbers are the source weights', copied from the cited timm results file.
    cited = hub.card_data('resnet_weights')
    assert cited['accuracy_source'].strip() in card
    rows = cited['imagenet_1k']['resnet50.tv_in1k']
    assert rows == [{'img_size': 224, 'crop_pct': '0.875', 'interpolation': 'bilinear', 'top1': '76.156',
                     'top5': '92.866'}]
    assert '| 224 | 0.875 | bilinear | 76.156 | 92.866 |' in card
    results = card[card.index('## Results'):card.index('## Citation')]
    numbers = set(re.findall(r'\d+\.\d+', results))
    assert numbers <= {'0.875', '76.156', '92.866'}, numbers


def test_release_card_says_what_the_weights_are(capsys):
    assert main(['card', 'fca_resnet50']) == 0  # the default tag: the authors' release
    card = capsys.readouterr().out
    assert '# Model card for fca_resnet50.official_in1k' in card
    assert _front_matter(card)['license'] == 'mit' and _front_matter(card)['datasets'] == ['imagenet-1k']
    assert "The FcaNet authors' ImageNet-1k weights for FcaNet ResNet-50, from their release " \
           '(`https://github.com/cfzd/FcaNet/releases/download/v1.0/fca50.pth`' in card
    assert "timm.create_model('fca_resnet50.official_in1k', pretrained=True)" in card
    data = hub.card_data('releases')
    assert set(data) == {'fca'} and data['fca']['code'] in card and data['fca']['training'].strip() in card
    results = card[card.index('## Results'):card.index('## Citation')]
    assert 'https://github.com/cfzd/FcaNet/blob/aa5fb63505575bb4e4e094613565379c3f6ada33/README.md' in results
    assert set(re.findall(r'\d+\.\d+', results)) == {'78.52', '78.57'}


def test_a1_card_cites_resnet_strikes_back():
    name = 'gc_resnet50.resnet_a1_in1k_attn_identity'
    card = hub.render_card(_meta(name), name)
    assert 'https://arxiv.org/abs/2110.00476' in card and 'wightman2021resnet' in card and 'rw2019timm' in card
    assert '| 288 | 1.000 | bicubic | 81.240 | 95.112 |' in card


def test_card_without_weights_says_so_and_does_not_ask_for_them():
    card = hub.render_card(_meta('nam_resnet50'), 'nam_resnet50')
    assert 'No trained weights are published for `nam_resnet50`' in card
    assert 'pretrained=True' not in card and 'datasets' not in _front_matter(card)
    assert '## Results' not in card


def test_card_key_and_unknown_model():
    assert hub.card_key('gct_resnet50.resnet_a1_in1k_attn_identity') == 'gct'
    assert hub.card_key('resnet34_cifar') == 'resnet'
    with pytest.raises(hub.CardError, match=r"model='resnet50' is not a timm_gct model"):
        hub.card_key('resnet50')


def test_card_data_files_have_one_schema():
    keys = {'mechanism', 'title', 'paper', 'venue', 'arxiv', 'paper_url', 'code', 'description', 'placement',
            'deviations', 'citation'}
    from timm_gct.models import MECHANISMS
    for key in [*MECHANISMS, 'resnet', 'gct_official']:
        data = hub.card_data(key)
        assert set(data) == keys, key
        assert data['arxiv'] or data['paper_url'], key
        assert isinstance(data['deviations'], list) and data['citation'].lstrip().startswith('@'), key
        assert not re.search(r'\d+\.\d+ ?%', data['description']), key  # no accuracy claims in the card data


def test_count_activations_counts_conv_and_matmul_outputs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 7))
    assert count_activations(model, (3, 5, 5)) == 8 * 5 * 5 + 7  # the ReLU's output is not an activation here
    # timm's card for resnet50.a1_in1k: "Activations (M): 11.1".
    assert round(count_activations(_meta('resnet50').eval(), (3, 224, 224)) / 1e6, 1) == 11.1


def test_cli_card(tmp_path, capsys):
    assert main(['card', 'gct_resnet18']) == 0
    out = capsys.readouterr().out
    assert out.startswith('---\n') and '# Model card for gct_resnet18.resnet_a1_in1k_attn_identity' in out
    assert main(['card', 'eca_resnet18', '--output', str(tmp_path / 'README.md')]) == 0
    assert '# Model card for eca_resnet18' in (tmp_path / 'README.md').read_text()
    assert main(['card', 'resnet50']) == 2
    assert 'not a timm_gct model' in capsys.readouterr().err
    assert main(['card', 'gct_resnet18.nope']) == 2
    assert 'Invalid pretrained tag' in capsys.readouterr().err


# -- train.py checkpoints -----------------------------------------------------------------------------------------

def _train_checkpoint(path: Path, model_name: str = 'gct_resnet18_cifar', **extra) -> nn.Module:
    """A checkpoint in train.py's format (timm CheckpointSaver: args Namespace, state_dict, EMA, metric)."""
    model = randomize(timm.create_model(model_name, num_classes=5, attn_kwargs={'eps': 1e-4}), scale=0.1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).isfinite().all()
    args = argparse.Namespace(
        model=model_name, num_classes=5, in_chans=None, model_kwargs={'attn_kwargs': {'eps': 1e-4}}, epochs=3,
        batch_size=8, opt='sgd', lr=0.1, sched='cosine', eval_metric='top1', input_size=None, img_size=None,
        mean=None, std=None, crop_pct=None, interpolation='')
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({
        'epoch': 2, 'arch': model_name, 'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()},
        'state_dict_ema': ema, 'optimizer': {'state': {}, 'param_groups': []}, 'version': 2, 'args': args,
        'metric': 41.5, **extra}, path)
    return model


def test_train_checkpoint_loads_with_weights_only(tmp_path):
    model = _train_checkpoint(tmp_path / 'model_best.pth.tar')
    ckpt = hub.load_train_checkpoint(str(tmp_path / 'model_best.pth.tar'))
    assert ckpt.epoch == 2 and ckpt.metric == 41.5 and ckpt.args['model'] == 'gct_resnet18_cifar'
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in model.state_dict().items())  # 'module.' stripped
    ema = hub.load_train_checkpoint(str(tmp_path / 'model_best.pth.tar'), use_ema=True)
    assert torch.equal(ema.state_dict['fc.bias'], model.fc.bias + 1)
    rebuilt = hub.build_from_checkpoint('gct_resnet18_cifar', ckpt)
    assert rebuilt.num_classes == 5 and rebuilt.layer1[0].se.eps == 1e-4
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).abs().max() > 0 and torch.equal(rebuilt(x), model(x))


def test_unsafe_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'ran'
    torch.save({'state_dict': {}, 'payload': RunsCodeWhenUnpickled(marker)}, tmp_path / 'evil.pth')
    with pytest.raises(hub.CardError, match=r"cannot be loaded with weights_only=True.*Namespace: it holds"):
        hub.load_train_checkpoint(str(tmp_path / 'evil.pth'))
    assert not marker.exists()


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(hub.CardError, match=r"checkpoint='.*missing.pth' is not a file"):
        hub.load_train_checkpoint(str(tmp_path / 'missing.pth'))
    torch.save({'state_dict': timm.create_model('resnet18_cifar').state_dict()}, tmp_path / 'plain.pth')
    with pytest.raises(hub.CardError, match=r'has no EMA weights'):
        hub.load_train_checkpoint(str(tmp_path / 'plain.pth'), use_ema=True)
    ckpt = hub.load_train_checkpoint(str(tmp_path / 'plain.pth'))
    with pytest.raises(hub.CardError, match=r'does not fit gct_resnet18_cifar .*missing keys: layer1\.0\.se\.alpha'):
        hub.build_from_checkpoint('gct_resnet18_cifar', ckpt)
    wide = {**ckpt.state_dict, 'fc.weight': torch.zeros(10, 7)}
    with pytest.raises(hub.CardError, match=r'other shapes: fc\.weight \(10, 7\) \(model: \(10, 512\)\)'):
        hub.build_from_checkpoint('resnet18_cifar', hub.TrainCheckpoint(wide, {}))
    _train_checkpoint(tmp_path / 'gct.pth')
    with pytest.raises(hub.CardError, match=r"model='nam_resnet18_cifar' does not match .* 'gct_resnet18_cifar'"):
        hub.build_from_checkpoint('nam_resnet18_cifar', hub.load_train_checkpoint(str(tmp_path / 'gct.pth')))


def test_checkpoint_rebuilds_the_model_train_py_built(tmp_path):
    """train.py's --gp, --input-size (in_chans) and --model-kwargs change the model; the rebuilt one must match."""
    model = randomize(timm.create_model('gc_resnet18_cifar', num_classes=4, in_chans=1, global_pool='max'),
                      scale=0.1).eval()
    args = argparse.Namespace(model='gc_resnet18_cifar', num_classes=4, in_chans=None, input_size=[1, 32, 32],
                              gp='max', model_kwargs={}, bn_eps=None, bn_momentum=None)
    torch.save({'state_dict': model.state_dict(), 'args': args}, tmp_path / 'ckpt.pth')
    rebuilt = hub.build_from_checkpoint('gc_resnet18_cifar', hub.load_train_checkpoint(str(tmp_path / 'ckpt.pth')))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_card_cites_the_metric_only_for_the_weights_it_was_measured_on(tmp_path):
    """With --model-ema train.py records the EMA model's metric: it belongs on the EMA weights' card only."""
    _train_checkpoint(tmp_path / 'ema.pth')  # args without model_ema: the metric is the plain weights'
    plain = hub.trained_weights(hub.load_train_checkpoint(str(tmp_path / 'ema.pth')), 'ema.pth')
    assert 'top1 = 41.50' in plain.summary
    ema = hub.load_train_checkpoint(str(tmp_path / 'ema.pth'), use_ema=True)
    assert 'top1' not in hub.trained_weights(ema, 'ema.pth').summary
    ema.args['model_ema'] = True
    assert 'EMA weights' in hub.trained_weights(ema, 'ema.pth').summary
    assert 'top1 = 41.50' in hub.trained_weights(ema, 'ema.pth').summary
    plain_ckpt = hub.load_train_checkpoint(str(tmp_path / 'ema.pth'))
    plain_ckpt.args['model_ema'] = True
    assert 'top1' not in hub.trained_weights(plain_ckpt, 'ema.pth').summary


def test_saved_card_describes_the_saved_config(tmp_path):
    """A model trained at another size: config.json and the card agree (size, GMACs) and carry no ResNet-weights
    provenance from the default tag it was built with."""
    model = timm.create_model('gct_resnet18', num_classes=3).eval()
    out = hub.save_pretrained(model, str(tmp_path / 'out'), 'hf-hub:o/gct_resnet18.x',
                              hub.Weights(summary='Test weights.'), data_config=dict(input_size=(3, 96, 96)))
    cfg = json.loads((out / 'config.json').read_text())['pretrained_cfg']
    assert cfg['input_size'] == [3, 96, 96] and 'test_input_size' not in cfg
    assert cfg['paper_ids'] == 'arXiv:1909.11519' and cfg['description'] == 'Test weights.' and 'notes' not in cfg
    card = (out / 'README.md').read_text()
    macs = count_macs(_meta('gct_resnet18', num_classes=3), (3, 96, 96))
    assert 'Image size: 96 x 96' in card and f'GMACs: {macs / 1e9:.1f}' in card
    assert 'resnet18.a1_in1k' not in card and 'Test weights.' in card
    assert model.pretrained_cfg['tag'] == 'resnet_a1_in1k_attn_identity'  # the caller's model is left as it was


# -- saving and pushing -----------------------------------------------------------------------------------------

def test_push_save_dir_round_trips_through_local_dir(tmp_path, capsys):
    model = _train_checkpoint(tmp_path / 'model_best.pth.tar')
    out = tmp_path / 'out'
    assert main(['push', str(tmp_path / 'model_best.pth.tar'), '--model', 'gct_resnet18_cifar',
                 '--repo-id', 'my-org/gct_resnet18_cifar.ft_demo', '--save-dir', str(out), '--dataset', 'cifar10']) == 0
    assert 'local-dir:' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'gct_resnet18_cifar' and config['num_classes'] == 5
    assert config['model_args']['attn_kwargs'] == {'eps': 1e-4}
    assert config['pretrained_cfg']['tag'] == 'ft_demo' and 'train.py recorded top1 = 41.50' in \
        config['pretrained_cfg']['description']
    assert config['pretrained_cfg']['paper_ids'] == 'arXiv:1909.11519'
    card = (out / 'README.md').read_text()
    assert "timm.create_model('hf-hub:my-org/gct_resnet18_cifar.ft_demo', pretrained=True)" in card
    assert _front_matter(card)['datasets'] == ['cifar10'] and 'after 3 epochs' in card
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_push_uploads_through_huggingface_hub(tmp_path, monkeypatch, capsys):
    _train_checkpoint(tmp_path / 'model_best.pth.tar')
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(('init', token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(('create_repo', repo_id, private, exist_ok))

        def create_branch(self, repo_id, branch, exist_ok=False):
            calls.append(('create_branch', repo_id, branch, exist_ok))

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
            calls.append(('upload_folder', repo_id, sorted(p.name for p in Path(folder_path).iterdir()), revision,
                          commit_message))
            return argparse.Namespace(commit_url=f'https://hub.example/{repo_id}/commit/1')

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, 'HfApi', FakeApi)
    assert main(['push', str(tmp_path / 'model_best.pth.tar'), '--model', 'gct_resnet18_cifar', '--use-ema',
                 '--repo-id', 'my-org/gct_resnet18_cifar.ft', '--private', '--revision', 'v1']) == 0
    assert calls[1:] == [
        ('create_repo', 'my-org/gct_resnet18_cifar.ft', True, True),
        ('create_branch', 'my-org/gct_resnet18_cifar.ft', 'v1', True),
        ('upload_folder', 'my-org/gct_resnet18_cifar.ft', ['README.md', 'config.json', 'model.safetensors'], 'v1',
         'Add model'),
    ]
    assert 'https://hub.example/my-org/gct_resnet18_cifar.ft/commit/1' in capsys.readouterr().out


def test_push_errors_are_one_line(tmp_path, capsys):
    _train_checkpoint(tmp_path / 'model_best.pth.tar')
    assert main(['push', str(tmp_path / 'model_best.pth.tar'), '--model', 'gct_resnet18_cifar',
                 '--repo-id', 'no-slash', '--save-dir', str(tmp_path / 'x')]) == 2
    assert "--repo-id 'no-slash' is not allowed" in capsys.readouterr().err
    assert main(['push', str(tmp_path / 'model_best.pth.tar'), '--model', 'gc_resnet18_cifar',
                 '--repo-id', 'o/n', '--save-dir', str(tmp_path / 'x')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('timm-gct push: error:') and err.count('\n') == 1


# -- the Hub download path, end to end --------------------------------------------------------------------------

_COMMIT = 'a' * 40


class _HubFiles(BaseHTTPRequestHandler):
    """Serves ``root/<org>/<name>/<file>`` at ``/<org>/<name>/resolve/<revision>/<file>`` with the Hub's metadata
    headers (commit, ETag, size) and its error codes; every request path is recorded."""
    root: Path
    requests: list

    def _resolve(self):
        self.requests.append((self.command, self.path))
        match = re.fullmatch(r'/([^/]+/[^/]+)/resolve/([^/]+)/(.+)', self.path.split('?')[0])
        if not match:
            return self._error(404, 'RepoNotFound')
        repo, _, filename = match.groups()
        if not (self.root / repo).is_dir():
            return self._error(404, 'RepoNotFound')
        file = self.root / repo / filename
        if not file.is_file():
            return self._error(404, 'EntryNotFound')
        body = file.read_bytes()
        self.send_response(200)
        self.send_header('X-Repo-Commit', _COMMIT)
        self.send_header('ETag', f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        return body

    def _error(self, status, code):
        self.send_response(status)
        self.send_header('X-Error-Code', code)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def do_HEAD(self):
        self._resolve()

    def do_GET(self):
        body = self._resolve()
        if body:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_hub(tmp_path):
    handler = type('Handler', (_HubFiles,), {'root': tmp_path / 'hub', 'requests': []})
    server = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}', handler
    server.shutdown()
    server.server_close()


_LOAD = """
import sys, torch, timm, timm_gct
model = timm.create_model(sys.argv[1], pretrained=True).eval()
size = int(sys.argv[3])
torch.manual_seed(0)
with torch.no_grad():
    torch.save(model(torch.randn(2, 3, size, size)), sys.argv[2])
"""


def _hub_env(tmp_path, endpoint):
    """A process environment that talks to ``endpoint`` as its Hub, with its own empty cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGINGFACE_'))}
    return {**env, 'HF_ENDPOINT': endpoint, 'HF_HOME': str(tmp_path / 'hf_home'), 'HF_HUB_DISABLE_TELEMETRY': '1'}


def _run_load(model_id, out, env, size=32):
    # huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when imported, so the download runs in a fresh process.
    return subprocess.run([sys.executable, '-c', _LOAD, model_id, str(out), str(size)], env=env, capture_output=True,
                          text=True)


def _load_in_subprocess(model_id, out, env, size=32):
    result = _run_load(model_id, out, env, size)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


def test_hf_hub_download_end_to_end(tmp_path, local_hub):
    """What push writes, served like the Hub's file endpoints: create_model('hf-hub:...') downloads and loads it,
    and a second, offline load is served from the cache."""
    endpoint, handler = local_hub
    model = _train_checkpoint(tmp_path / 'model_best.pth.tar')
    repo = tmp_path / 'hub' / 'my-org' / 'gct_resnet18_cifar.ft'
    assert main(['push', str(tmp_path / 'model_best.pth.tar'), '--model', 'gct_resnet18_cifar',
                 '--repo-id', 'my-org/gct_resnet18_cifar.ft', '--save-dir', str(repo)]) == 0
    torch.manual_seed(0)
    with torch.no_grad():
        expected = model(torch.randn(2, 3, 32, 32))

    env = _hub_env(tmp_path, endpoint)
    online = _load_in_subprocess('hf-hub:my-org/gct_resnet18_cifar.ft', tmp_path / 'online.pt', env)
    assert torch.equal(online, expected)
    fetched = {path.rsplit('/', 1)[-1] for method, path in handler.requests if method == 'GET'}
    assert fetched == {'config.json', 'model.safetensors'}
    cached = list((tmp_path / 'hf_home' / 'hub').glob('models--my-org--gct_resnet18_cifar.ft/snapshots/*/*'))
    assert sorted(p.name for p in cached) == ['config.json', 'model.safetensors']

    handler.requests.clear()
    offline = _load_in_subprocess('hf-hub:my-org/gct_resnet18_cifar.ft', tmp_path / 'offline.pt',
                                  {**env, 'HF_HUB_OFFLINE': '1'})
    assert torch.equal(offline, expected) and handler.requests == []

    missing = _run_load('hf-hub:my-org/nope', tmp_path / 'x.pt', env)
    assert missing.returncode != 0 and 'RepositoryNotFound' in missing.stderr


def test_resnet_weights_tag_downloads_timms_file_through_the_hub(tmp_path, local_hub):
    """The ResNet-weights tag's real path: timm's Hub repo (timm/resnet18.a1_in1k here) served locally."""
    endpoint, handler = local_hub
    resnet = randomize(timm.create_model('resnet18'), scale=0.1).eval()
    repo = tmp_path / 'hub' / 'timm' / 'resnet18.a1_in1k'
    repo.mkdir(parents=True)
    save_file(resnet.state_dict(), str(repo / 'model.safetensors'))
    out = _load_in_subprocess(
        'gct_resnet18.resnet_a1_in1k_attn_identity', tmp_path / 'out.pt', _hub_env(tmp_path, endpoint), size=64)
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(out, resnet(torch.randn(2, 3, 64, 64)))
    assert ('GET', '/timm/resnet18.a1_in1k/resolve/main/model.safetensors') in handler.requests
