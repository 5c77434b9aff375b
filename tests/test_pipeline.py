"""The in-memory data pipeline: epoch order, sharding across ranks, batches and augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from zoo.spec.run import Normalization
from zoo.trainer.distributed import Dist
from zoo.trainer.pipeline import DeviceData, augment, epoch_permutation, rank_batches, shard_indices


def test_the_epoch_order_is_fixed_by_seed_and_epoch() -> None:
    """A recorded run's seed replays the same data order in later versions."""
    assert epoch_permutation(10, 0, 0).tolist() == [5, 6, 1, 2, 0, 8, 9, 3, 7, 4]
    assert epoch_permutation(10, 0, 1).tolist() == [2, 0, 1, 5, 9, 7, 6, 3, 4, 8]
    assert epoch_permutation(10, 1, 0).tolist() == [3, 1, 4, 8, 5, 7, 9, 2, 6, 0]
    assert sorted(epoch_permutation(1000, 3, 2).tolist()) == list(range(1000))


@pytest.mark.parametrize(("n", "batch", "world"), [(100, 32, 1), (10, 4, 2), (11, 3, 3),
                                                    (7, 8, 2), (64, 16, 4), (1, 4, 2)])
def test_each_rank_gets_what_distributed_sampler_gives_it(n: int, batch: int, world: int) -> None:
    """Over an epoch, rank r's samples are DistributedSampler's for rank r (padded by
    wrapping around), in the epoch's order, in ``rank_batches`` steps of ``batch``."""
    perm = epoch_permutation(n, 5, 0)
    steps = rank_batches(n, batch, Dist(world=world))
    assert steps == math.ceil(math.ceil(n / world) * world / (batch * world))
    for rank in range(world):
        dist = Dist(rank=rank, world=world)
        shards = [shard_indices(perm, step, batch, dist) for step in range(steps)]
        assert all(0 < len(s) <= batch for s in shards)
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
        assert torch.cat(shards).tolist() == perm[list(sampler)].tolist()


def test_a_last_batch_too_small_for_batchnorm_is_dropped() -> None:
    # 9 images in batches of 4: the third batch would hold one image
    assert rank_batches(9, 4, Dist()) == 3
    assert rank_batches(9, 4, Dist(), min_per_rank=2) == 2
    assert rank_batches(10, 4, Dist(), min_per_rank=2) == 3  # two images: kept
    assert rank_batches(1, 4, Dist(), min_per_rank=2) == 1  # never no step at all
    assert rank_batches(5, 4, Dist(), min_per_rank=2) == 1  # two steps, the second of one
    # two ranks: the last global batch holds one image per rank
    assert rank_batches(18, 4, Dist(world=2), min_per_rank=2) == 2
    assert rank_batches(18, 4, Dist(world=2)) == 3


def _data(prenormalize: bool, channels_last: bool) -> tuple[DeviceData, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 5, 4), dtype=np.uint8)
    norm = Normalization(mean=(0.5, 0.25, 0.75), std=(0.2, 0.4, 0.1))
    data = DeviceData(images, np.arange(6), torch.device("cpu"), norm, channels_last,
                      prenormalize_bytes=10**9 if prenormalize else 0)
    return data, images


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("prenormalize", [False, True])
def test_batches_are_the_indexed_images_standardized(prenormalize: bool,
                                                     channels_last: bool) -> None:
    data, images = _data(prenormalize, channels_last)
    assert data.prenormalized is prenormalize
    index = torch.tensor([4, 0, 4, 2])
    x, y = data.batch(index)
    mean = np.array([0.5, 0.25, 0.75]).reshape(1, 3, 1, 1)
    std = np.array([0.2, 0.4, 0.1]).reshape(1, 3, 1, 1)
    expected = (images[[4, 0, 4, 2]] / 255.0 - mean) / std
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert x.dtype == torch.float32
    assert y.tolist() == [4, 0, 4, 2]
    assert x.is_contiguous(memory_format=torch.channels_last) is channels_last
    flipped, _ = data.batch(index, crop_padding=1, flip=True,
                            generator=torch.Generator().manual_seed(1))
    assert flipped.is_contiguous(memory_format=torch.channels_last) is channels_last


def test_crops_are_windows_of_the_zero_padded_image() -> None:
    x = torch.arange(1, 1 + 4 * 2 * 3 * 3, dtype=torch.uint8).view(4, 2, 3, 3)
    g = torch.Generator().manual_seed(3)
    out = augment(x, flip=False, crop_padding=1, generator=g)
    offsets = torch.randint(0, 3, (4, 2), generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, dy:dy + 3, dx:dx + 3])
    assert not all(torch.equal(out[i], x[i]) for i in range(4))  # some crop moved


def test_flips_mirror_whole_images_about_half_the_time() -> None:
    x = torch.arange(1000 * 2 * 2, dtype=torch.float32).view(1000, 1, 2, 2)
    out = augment(x, flip=True, crop_padding=0, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # mirrored or untouched
    assert 450 < sum(flipped) < 550


@pytest.mark.parametrize(("flip", "crop_padding"), [(True, 0), (False, 2), (True, 2)])
def test_batches_are_augmented_as_asked(flip: bool, crop_padding: int) -> None:
    data, _ = _data(prenormalize=True, channels_last=False)
    index = torch.arange(6)
    plain, _ = data.batch(index)
    out, _ = data.batch(index, flip=flip, crop_padding=crop_padding,
                        generator=torch.Generator().manual_seed(0))
    expected = augment(plain, flip=flip, crop_padding=crop_padding,
                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, expected)
    assert not torch.equal(out, plain)
