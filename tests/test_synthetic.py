""" The embedded synthetic dataset: deterministic, balanced, and carrying the two cues that define its classes. """
import colorsys

import pytest
import torch

from timm_gct.synthetic import SYNTHETIC_DESCRIPTION, SyntheticStripes


def test_same_seed_same_images_bit_for_bit():
    a, b = SyntheticStripes('train', 100, seed=3), SyntheticStripes('train', 100, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    img, target = a[7]
    assert img.size == (32, 32) and img.mode == 'RGB' and target == int(b.targets[7])


def test_seed_and_split_change_the_images():
    train = SyntheticStripes('train', 100, seed=3)
    assert not torch.equal(train.images, SyntheticStripes('train', 100, seed=4).images)
    assert not torch.equal(train.images, SyntheticStripes('validation', 100, seed=3).images)
    # splits of neighbouring seeds must not share a stream either
    assert not torch.equal(SyntheticStripes('validation', 100, seed=0).images, SyntheticStripes('train', 100, 1).images)


def test_classes_are_balanced_and_named():
    ds = SyntheticStripes('validation', 200)
    assert len(ds) == 200 and ds.num_classes == 10 == len(ds.classes)
    assert torch.bincount(ds.targets, minlength=10).tolist() == [20] * 10
    assert 'synthetic' in SYNTHETIC_DESCRIPTION and 'not a real dataset' in SYNTHETIC_DESCRIPTION


def _cues(ds: SyntheticStripes):
    """Read the two cues back from the pixels, independently of the generator: orientation and hue of the stripes."""
    img = ds.images.float() / 255  # N, H, W, C
    stripes = (img.amax(-1) - img.amin(-1)) > 0.3  # the background is grey (saturation ~0), the stripes are not
    # vertical stripes switch on and off along x, horizontal ones along y
    along_x = (stripes[:, :, 1:] != stripes[:, :, :-1]).flatten(1).sum(1)
    along_y = (stripes[:, 1:] != stripes[:, :-1]).flatten(1).sum(1)
    mean_rgb = (img * stripes[..., None]).sum((1, 2)) / stripes.sum((1, 2))[:, None]
    hue = torch.tensor([colorsys.rgb_to_hsv(*rgb)[0] for rgb in mean_rgb.tolist()])
    return along_x > along_y, hue


def test_both_cues_are_in_the_pixels():
    ds = SyntheticStripes('train', 300)
    vertical, hue = _cues(ds)
    assert (vertical == (ds.targets >= 5)).float().mean() > 0.95
    centres = torch.arange(5) / 5
    dist = (hue[:, None] - centres[None]).abs()
    nearest = torch.minimum(dist, 1 - dist).argmin(1)  # hue is circular
    assert (nearest == ds.targets % 5).float().mean() > 0.95


@pytest.mark.parametrize('kwargs, match', [
    (dict(split='test'), r"split='test' is not one of \('train', 'validation'\)"),
    (dict(num_samples=0), r'num_samples=0 is not allowed'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticStripes(**kwargs)
