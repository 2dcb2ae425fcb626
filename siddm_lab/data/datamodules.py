"""LightningDataModules: 2-D toy data and image datasets.

Both expose what the rest of the framework needs besides dataloaders:
``data_shape`` (shape of one sample), ``evaluate(samples) -> dict`` (the data's metrics) and
``save_samples(samples, out_dir, stem)`` (``.npz`` + a scatter plot or an image grid).
Batches are plain tensors in model space: toy points as drawn (standardised with ``normalize``), images
scaled to [-1, 1]. Training batches come from ``siddm_lab.data.sampling`` (resumable, sharded over ranks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from siddm_lab.data.sampling import ResumableBatchSampler, ResumableDataLoader
from siddm_lab.data.toy import ToyDistribution
from siddm_lab.errors import ConfigError, DataError
from siddm_lab.utils import plotting
from siddm_lab.utils.lightning_compat import consumed_batches

log = logging.getLogger(__name__)


def _as_is(batch):
    return batch


class _BatchedTensor(Dataset):
    """Tensor dataset fetched a whole batch at a time (``__getitems__``): one gather per batch."""

    def __init__(self, data: torch.Tensor, transform: Callable | None = None):
        self.data = data
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices):
        x = self.data[torch.as_tensor(indices)]
        if self.transform is None:
            return x
        return self.transform(x, indices) if getattr(self.transform, "uses_indices", False) else self.transform(x)


class _Base(L.LightningDataModule):
    def __init__(self, batch_size: int, num_workers: int = 0, eval_batch_size: int | None = None):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"dataset.batch_size={batch_size!r} is invalid: expected a positive integer")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"dataset.num_workers={num_workers!r} is invalid: expected a non-negative integer")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._shuffle_seed: int | None = None
        self.member_seeds: list[int] | None = None

    def set_seeds(self, seed: int | None = None, member_seeds: list[int] | None = None) -> None:
        """The shuffling seed of the training batches: one run's ``seed``, or ``member_seeds`` for an
        ensemble (batches [E, B, ...], member k's drawn as a single run with its seed draws them)."""
        self._shuffle_seed = None if seed is None else int(seed)
        self.member_seeds = None if member_seeds is None else [int(s) for s in member_seeds]

    def _loader(self, ds, batch_size, shuffle):
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=_as_is,
        )

    def _consumed_batches(self) -> int:
        return consumed_batches(getattr(self, "trainer", None))

    def train_dataloader(self):
        # The shuffling seed comes from the run's seed (seed_everything ran before): resumable batches.
        if self._shuffle_seed is None:
            self._shuffle_seed = int(torch.randint(0, 2**31 - 1, (1,)))
        sampler = ResumableBatchSampler(len(self.train_set), self.batch_size, seed=self._shuffle_seed,
                                        member_seeds=self.member_seeds)
        return ResumableDataLoader(self.train_set, sampler, consumed=self._consumed_batches,
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                                   collate_fn=_as_is)

    def val_dataloader(self):
        return self._loader(self.val_set, self.eval_batch_size, False)


class ToyDataModule(_Base):
    """A fixed training set of ``n_train`` points drawn from a toy distribution with ``seed``.

    Evaluation compares generated points with ``n_eval`` fresh points of the same
    distribution (2-D Fréchet distance, MMD) and, for mixtures, with its centres
    (modes covered, high-quality ratio, KL of the mode histogram to uniform).

    ``normalize=true`` trains on standardised points, (x - mean) / std with the training set's mean
    and one scalar std (isotropy is kept), and maps samples back (``to_data_space``) before they
    are evaluated or saved: metrics stay in the distribution's own units (e.g. the SIDDM authors'
    grid at (5i, 5j)) while the networks see unit-scale data.
    """

    def __init__(self, distribution: ToyDistribution, n_train: int = 100_000, n_val: int = 4096,
                 n_eval: int = 10_000, batch_size: int = 512, num_workers: int = 0, seed: int = 0,
                 eval_batch_size: int | None = None, mmd_max_points: int = 5000, data_dim: int = 2,
                 normalize: bool = False):
        super().__init__(batch_size, num_workers, eval_batch_size)
        if data_dim != distribution.data_dim:
            raise ConfigError(f"dataset.data_dim={data_dim} but the distribution is {distribution.data_dim}-D")
        for key, v in (("n_train", n_train), ("n_val", n_val), ("n_eval", n_eval)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"dataset.{key} must be a positive integer, got {v!r}")
        if batch_size > n_train:
            raise ConfigError(f"dataset.batch_size={batch_size} is larger than dataset.n_train={n_train}")
        self.distribution = distribution
        self.n_train, self.n_val, self.n_eval = n_train, n_val, n_eval
        self.seed = seed
        self.mmd_max_points = mmd_max_points
        self.normalize = bool(normalize)
        self.shift = torch.zeros(distribution.data_dim)
        self.scale = torch.ones(())
        self._reference: torch.Tensor | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.distribution.data_dim,)

    def setup(self, stage=None):
        if self.train_set is None:
            g = torch.Generator().manual_seed(self.seed)
            train = self.distribution.sample(self.n_train, g)
            val = self.distribution.sample(self.n_val, g)
            self._reference = self.distribution.sample(self.n_eval, g)
            if self.normalize:
                self.shift = train.mean(0)
                self.scale = train.std(0).pow(2).mean().sqrt()
            self.train_set = _BatchedTensor(self.to_model_space(train))
            self.val_set = _BatchedTensor(self.to_model_space(val))

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift.to(x)) / self.scale.to(x)

    def to_data_space(self, x: torch.Tensor) -> torch.Tensor:
        """Samples of the model -> the distribution's units (the identity unless ``normalize``)."""
        if self.normalize and self._reference is None:
            self.setup()
        return x * self.scale.to(x) + self.shift.to(x)

    @property
    def reference(self) -> torch.Tensor:
        if self._reference is None:
            self.setup()
        return self._reference

    def save_samples(self, samples: torch.Tensor, out_dir, stem: str = "samples", title: str | None = None,
                     nrow: int | None = None):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        x = self.to_data_space(samples.detach().float().cpu()).numpy()
        np.savez_compressed(out_dir / f"{stem}.npz", samples=x)
        plotting.scatter(x, out_dir / f"{stem}.png", reference=self.reference.numpy(),
                         centers=None if self.distribution.centers is None else self.distribution.centers.numpy(),
                         title=title)
        return out_dir / f"{stem}.png"


def _to_model_space(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(127.5).sub_(1.0)


class _FlipToModelSpace:
    """uint8 [B,C,H,W] -> float in [-1, 1], with random horizontal flips. The flips are drawn from
    the batch's indices (not the global RNG), so a resumed run sees the same flipped batches."""

    uses_indices = True

    def __call__(self, x, indices=None):
        x = _to_model_space(x)
        g = None
        if indices is not None:
            g = torch.Generator().manual_seed(hash(tuple(int(i) for i in indices)) & (2**63 - 1))
        flip = torch.rand(x.shape[0], generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        return x


class ImageDataModule(_Base):
    """Images from a reader (``siddm_lab.data.images``: ``read_mnist``, ``read_cifar10``, ...), held in memory
    as uint8.

    Args:
        reader: ``(split) -> (uint8 [N,C,H,W], labels)``, e.g. ``functools.partial(read_mnist, root)``.
        subset: use only the first ``subset`` training images (None = all).
        val_size: images of the test split used for the validation loss.
        pad_to: zero-pad (in model space: -1) to this size, e.g. MNIST 28 -> 32.
        hflip: random horizontal flips (CIFAR-10 recipe; off for digits).
    """

    def __init__(self, reader: Callable, batch_size: int = 128, num_workers: int = 0,
                 subset: int | None = None, val_size: int = 1000, pad_to: int | None = None,
                 hflip: bool = False, eval_batch_size: int | None = None, name: str = "images",
                 channels: int | None = None, image_size: int | None = None, metrics: dict | None = None):
        super().__init__(batch_size, num_workers, eval_batch_size)
        # the nets are built from these too (net.in_channels / net.image_size: ${dataset.*}): checked here, where
        # the key is the one the user sets, before the nets
        for key, v in (("channels", channels), ("image_size", image_size)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"dataset.{key}={v!r} is invalid: expected a positive integer")
        self.channels = channels
        self.image_size = image_size
        m = dict(metrics or {})
        self.metric_names = list(m.get("names") or [])
        size = m.get("reference_size", 10_000)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 2):
            raise ConfigError(f"dataset.metrics.reference_size={size!r} is invalid; allowed: an integer >= 2, "
                              f"or null for the whole split")
        self.metric_reference_size = size
        self.metric_reference_split = m.get("reference_split", "test")
        if self.metric_reference_split not in ("train", "test"):
            raise ConfigError(f"dataset.metrics.reference_split={self.metric_reference_split!r} is unknown; "
                              f"allowed: train, test")
        self.classifier_path = m.get("classifier_path")
        self.inception_weights = m.get("inception_weights")
        self.inception_resize = m.get("resize", "antialias")
        self.reference_stats = m.get("reference_stats")
        self._metric_reference: torch.Tensor | None = None
        if subset is not None and (not isinstance(subset, int) or subset < batch_size):
            raise ConfigError(f"dataset.subset must be an integer >= dataset.batch_size={batch_size}, "
                              f"got {subset!r}")
        self.reader = reader
        self.subset = subset
        self.val_size = val_size
        self.pad_to = pad_to
        self.hflip = hflip
        self.name = name
        self._shape: tuple[int, ...] | None = None

    def _load(self, split):
        images, _ = self.reader(split=split)
        x = torch.from_numpy(np.ascontiguousarray(images))
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise DataError(f"{self.name}: reader returned {tuple(x.shape)} {x.dtype}, expected uint8 [N,C,H,W]")
        if self.pad_to is not None:
            h, w = x.shape[-2:]
            if self.pad_to < max(h, w):
                raise ConfigError(f"dataset.pad_to={self.pad_to} is smaller than the images ({h}x{w})")
            ph, pw = self.pad_to - h, self.pad_to - w
            x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0)
        return x

    def setup(self, stage=None):
        if self.train_set is not None:
            return
        train = self._load("train")
        if self.subset is not None:
            train = train[: self.subset]
        val = self._load("test")[: self.val_size]
        self._shape = tuple(train.shape[1:])
        c, h, w = self._shape
        if (self.channels is not None and c != self.channels) or (
            self.image_size is not None and (h, w) != (self.image_size, self.image_size)
        ):
            raise ConfigError(
                f"dataset '{self.name}' yields images of shape {c}x{h}x{w} but the config declares "
                f"dataset.channels={self.channels}, dataset.image_size={self.image_size} (the net is built from these)"
            )
        self.train_set = _BatchedTensor(train, _FlipToModelSpace() if self.hflip else _to_model_space)
        self.val_set = _BatchedTensor(val, _to_model_space)

    @property
    def data_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            self.setup()
        return self._shape

    @property
    def metric_reference(self) -> torch.Tensor:
        """uint8 images the image metrics compare against: the first ``metrics.reference_size`` (None: all)
        of the ``metrics.reference_split`` (test, or train as DDGAN's FID protocol)."""
        if self._metric_reference is None:
            self._metric_reference = self._load(self.metric_reference_split)[: self.metric_reference_size]
        return self._metric_reference

    def save_samples(self, samples: torch.Tensor, out_dir, stem: str = "samples", title: str | None = None,
                     nrow: int | None = None):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        x = ((samples.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        np.savez_compressed(out_dir / f"{stem}.npz", samples=x.numpy())
        plotting.image_grid(x if nrow else x[:100], out_dir / f"{stem}.png", title=title, nrow=nrow)
        return out_dir / f"{stem}.png"
