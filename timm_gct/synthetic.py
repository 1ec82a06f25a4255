""" A small synthetic image-classification dataset, generated in-process.

It lets ``timm-gct compare`` run on a fresh machine with no download. It is not a benchmark and stands in for no real
dataset: every output that uses it names it ``synthetic``.

Each image is 32 x 32 RGB: a noisy grey background with a rectangular patch of stripes at a random place. The class is
the conjunction of the stripes' hue (one of five, jittered) and their orientation (horizontal or vertical), so ten
classes, balanced. Neither colour nor orientation alone decides the class, and the patch can be anywhere, so a model
has to find the patch and combine two cues; the stripe period, phase, patch size, brightness and noise vary per image.
Both cues survive timm's default training augmentation: a horizontal flip keeps stripes horizontal or vertical, random
resized crops keep their direction, and colour jitter (brightness, contrast, saturation) leaves hue alone.

Everything comes from a ``torch.Generator`` seeded with ``seed`` (the validation split uses a different stream), so a
given ``(split, num_samples, seed)`` gives the same images bit for bit with a given torch version on a given kind of
CPU (torch may pick other CPU kernels for ``sin`` or random numbers on another instruction set or version).
"""
import math
from typing import Callable, Optional, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from .layers._checks import check_int

__all__ = ['SyntheticStripes', 'SYNTHETIC_DESCRIPTION']

SYNTHETIC_DESCRIPTION = (
    'synthetic: 10 classes of procedurally generated 32x32 stripe patches (5 hues x 2 orientations), made in-process '
    'by timm_gct.synthetic.SyntheticStripes; not a real dataset')

_HUES = 5
_IMG_SIZE = 32
_SPLIT_STREAMS = {'train': 0, 'validation': 1}


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N,) hue in turns, saturation and value in [0, 1] -> (N, 3) RGB in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    return v[:, None] - (v * s)[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


class SyntheticStripes(Dataset):
    """Ten-class synthetic dataset of stripe patches (see the module docstring). Yields ``(PIL.Image, int)``.

    Args:
        split: 'train' or 'validation'; the two are drawn from different random streams.
        num_samples: number of images.
        seed: seed of the generator.
        transform: applied to each PIL image (timm's ``create_loader`` sets it).
    """
    num_classes = 2 * _HUES
    img_size = _IMG_SIZE

    def __init__(
            self,
            split: str = 'train',
            num_samples: int = 2048,
            seed: int = 0,
            transform: Optional[Callable] = None,
    ):
        if split not in _SPLIT_STREAMS:
            raise ValueError(f'split={split!r} is not one of {tuple(_SPLIT_STREAMS)}')
        check_int('SyntheticStripes', 'num_samples', num_samples)
        self.split = split
        self.seed = seed
        self.transform = transform
        self.images, self.targets = self._generate(num_samples, seed * len(_SPLIT_STREAMS) + _SPLIT_STREAMS[split])
        self.classes = [f'{orient}-hue{h}' for orient in ('horizontal', 'vertical') for h in range(_HUES)]

    @staticmethod
    def _generate(n: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

        targets = torch.arange(n) % (2 * _HUES)
        targets = targets[torch.randperm(n, generator=g)]
        hue_idx, vertical = targets % _HUES, targets >= _HUES

        # background: grey level plus pixel noise
        grey = uniform(0.25, 0.75)
        img = grey[:, None, None, None] + 0.08 * torch.randn(n, 3, _IMG_SIZE, _IMG_SIZE, generator=g)

        # stripes: hue centre of the class +- 0.03 turns (centres are 0.2 apart), a period of 3-8 px, any phase
        hue = hue_idx.float() / _HUES + uniform(-0.03, 0.03)
        colour = _hsv_to_rgb(hue % 1.0, uniform(0.55, 1.0), uniform(0.55, 1.0))
        period, phase = uniform(3.0, 8.0), uniform(0.0, 2 * math.pi)
        coord = torch.arange(_IMG_SIZE, dtype=torch.float32)
        ys, xs = torch.meshgrid(coord, coord, indexing='ij')
        along = torch.where(vertical[:, None, None], xs, ys)  # vertical stripes vary along x
        wave = torch.sin(2 * math.pi * along / period[:, None, None] + phase[:, None, None]) > 0

        # the patch: 12-24 px on a side, anywhere in the image
        h, w = (uniform(12, 25).floor().long() for _ in range(2))
        top = (uniform(0, 1) * (_IMG_SIZE - h + 1)).floor().long()
        left = (uniform(0, 1) * (_IMG_SIZE - w + 1)).floor().long()
        in_patch = (
            (ys >= top[:, None, None]) & (ys < (top + h)[:, None, None])
            & (xs >= left[:, None, None]) & (xs < (left + w)[:, None, None]))
        stripes = (wave & in_patch)[:, None]
        img = torch.where(stripes, colour[:, :, None, None] + 0.08 * torch.randn(img.shape, generator=g), img)

        images = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # NHWC for PIL
        return images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        img = Image.fromarray(self.images[index].numpy())
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])
