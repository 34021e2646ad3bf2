"""Data sets as in-memory tensors: MNIST and CIFAR-10 through torchvision, CIFAR-10 from an npz
file, and the small MNIST subset shipped with spikeep; normalisation and per-sample augmentation.

Where data is looked for: the config's data.root, else $SPIKEEP_DATA, else ~/.cache/spikeep/data.

* MNIST: ROOT/MNIST/raw, extracted or as the four official .gz archives. Archives are copied to
  spikeep's cache and torchvision checks their md5 and extracts them there (no network involved,
  nothing written into ROOT).
* CIFAR-10: the official python batches (ROOT/cifar-10-batches-py, read by torchvision's CIFAR10),
  else an npz file with uint8 arrays x_train (N, 32, 32, 3), y_train, x_test, y_test
  (data.npz, default ROOT/cifar10/cifar10.npz).

`download=True` keeps torchvision's normal download for users with internet. Augmentation (random
crop with padding, horizontal flip) runs per sample on whole batches, on the batch's device, with an
explicit torch.Generator so runs are reproducible and resumable.
"""
from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch

from ..config import DataConfig

Tensor = torch.Tensor
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
QUICKSTART = "mnist_quickstart.npz"


class DataMissing(FileNotFoundError):
    """A data set is not where spikeep looked; the message says where and what to do."""


class Split(NamedTuple):
    x: Tensor  # float images in [0, 1], (N, C, H, W)
    y: Tensor  # int64 labels, (N,)


class Dataset(NamedTuple):
    train: Split
    test: Split
    name: str


def default_root() -> Path:
    return Path(os.environ.get("SPIKEEP_DATA") or Path.home() / ".cache" / "spikeep" / "data")


def cache_dir() -> Path:
    return Path(os.environ.get("SPIKEEP_CACHE") or Path.home() / ".cache" / "spikeep")


def _mnist_raw_ready(raw: Path) -> bool:
    return all((raw / f).is_file() for f in MNIST_FILES)


def _mnist_gz_present(raw: Path) -> bool:
    return all((raw / f"{f}.gz").is_file() for f in MNIST_FILES)


def load_mnist(root: Optional[str | Path] = None, download: bool = False) -> Dataset:
    """MNIST as float tensors in [0, 1] of shape (N, 1, 28, 28), read by torchvision."""
    from torchvision.datasets import MNIST

    root = Path(root).expanduser() if root else default_root()
    raw = root / "MNIST" / "raw"
    if _mnist_raw_ready(raw):
        where = root
    elif _mnist_gz_present(raw):
        # torchvision verifies and extracts archives where they lie; the data folder may be shared
        # (or read-only), so extract a copy in spikeep's cache and never write into `root`
        where = cache_dir() / "data"
        dst = where / "MNIST" / "raw"
        if not _mnist_raw_ready(dst):
            dst.mkdir(parents=True, exist_ok=True)
            for f in MNIST_FILES:
                if not (dst / f"{f}.gz").is_file():
                    shutil.copy2(raw / f"{f}.gz", dst / f"{f}.gz")
            MNIST(str(where), train=True, download=True)  # finds the verified archives: no network
    elif download:
        where = root
    else:
        raise DataMissing(
            f"MNIST not found: looked for {raw}/ with the four files "
            f"{', '.join(f + '[.gz]' for f in MNIST_FILES)}.\n"
            f"Put the official MNIST files there, point data.root (or $SPIKEEP_DATA) at a folder that "
            f"holds MNIST/raw/, or pass --download to let torchvision fetch them (needs internet).")
    splits = []
    for train in (True, False):
        ds = MNIST(str(where), train=train, download=download)
        splits.append(Split(ds.data.unsqueeze(1).float().div_(255), ds.targets.long()))
    return Dataset(splits[0], splits[1], "mnist")


def load_quickstart() -> Dataset:
    """The small MNIST subset shipped inside spikeep (spikeep/data/mnist_quickstart.npz, see
    scripts/build_quickstart.py)."""
    with resources.files("spikeep.data").joinpath(QUICKSTART).open("rb") as f:
        z = np.load(f, allow_pickle=False)
        arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    split = lambda x, y: Split(torch.from_numpy(x).unsqueeze(1).float().div_(255), torch.from_numpy(y).long())
    return Dataset(split(arrays["x_train"], arrays["y_train"]), split(arrays["x_test"], arrays["y_test"]),
                   "mnist-quickstart")


def _from_uint8_nhwc(x: np.ndarray, y: np.ndarray, what: str) -> Split:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3 or y.shape != (x.shape[0],):
        raise ValueError(f"{what}: expected uint8 images (N, 32, 32, 3) and N labels, "
                         f"got {x.dtype} {x.shape} and {y.shape}")
    return Split(torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255).contiguous(),
                 torch.from_numpy(y.astype(np.int64)))


def load_cifar10(root: Optional[str | Path] = None, npz: str = "", download: bool = False) -> Dataset:
    """CIFAR-10 as float tensors in [0, 1] of shape (N, 3, 32, 32)."""
    from torchvision.datasets import CIFAR10

    root = Path(root).expanduser() if root else default_root()
    npz_path = Path(npz).expanduser() if npz else root / "cifar10" / "cifar10.npz"
    if (root / "cifar-10-batches-py").is_dir() or (download and not npz_path.is_file()):
        splits = [CIFAR10(str(root), train=t, download=download) for t in (True, False)]
        return Dataset(*(_from_uint8_nhwc(d.data, np.asarray(d.targets), f"CIFAR10 in {root}") for d in splits),
                       "cifar10")
    if npz_path.is_file():
        try:
            with np.load(npz_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"{npz_path} is not a CIFAR-10 npz with x_train, y_train, x_test, y_test: {e}") from None
        return Dataset(_from_uint8_nhwc(arrays["x_train"], arrays["y_train"], str(npz_path)),
                       _from_uint8_nhwc(arrays["x_test"], arrays["y_test"], str(npz_path)), "cifar10")
    raise DataMissing(
        f"CIFAR-10 not found: looked for the official batches in {root / 'cifar-10-batches-py'}/ and for "
        f"an npz file at {npz_path}.\nPoint data.root (or $SPIKEEP_DATA) at a folder holding "
        f"cifar-10-batches-py/ or cifar10/cifar10.npz, set data.npz to the npz file, or pass --download "
        f"to let torchvision fetch the official files (needs internet).")


DATASETS = ("mnist", "mnist-quickstart", "cifar10")
DATA_SHAPES = {"mnist": (1, 28, 28), "mnist-quickstart": (1, 28, 28), "cifar10": (3, 32, 32)}  # per image


def load_dataset(name: str, root: str = "", subset: int = 0, download: bool = False, npz: str = "",
                 subset_seed: int = 0, test_subset: int = 0) -> Dataset:
    """Load a data set; `subset` keeps N training samples drawn at random (fixed by subset_seed),
    so files ordered by class (like the shipped CIFAR-10 npz) still give every class; `test_subset`
    the same for the test samples."""
    if name == "mnist":
        ds = load_mnist(root or None, download)
    elif name == "mnist-quickstart":
        ds = load_quickstart()
    elif name == "cifar10":
        ds = load_cifar10(root or None, npz, download)
    else:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if subset < 0:
        raise ValueError(f"data.subset must be >= 0, got {subset}")
    if test_subset < 0:
        raise ValueError(f"data.test_subset must be >= 0, got {test_subset}")
    return ds._replace(train=_random_subset(ds.train, subset, subset_seed),
                       test=_random_subset(ds.test, test_subset, subset_seed))


def _random_subset(split: Split, n: int, seed: int) -> Split:
    """n samples drawn at random (fixed by seed), in their original order; all if n is 0 or too big."""
    if not n or n >= split.y.shape[0]:
        return split
    keep = torch.randperm(split.y.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Split(split.x[keep], split.y[keep])


def prepare_data(d: DataConfig) -> Dataset:
    """The data set of a [data] section, train and test normalised as configured."""
    ds = load_dataset(d.name, d.root, d.subset, d.download, d.npz, d.subset_seed, d.test_subset)
    return Dataset(normalize(ds.train, d.mean, d.std), normalize(ds.test, d.mean, d.std), ds.name)


def check_labels(ds: Dataset, n_classes: int) -> None:
    """Every label of both splits lies in [0, n_classes) (checked once, so batches need no check)."""
    for what, split in (("training", ds.train), ("test", ds.test)):
        if split.y.numel():
            lo, hi = int(split.y.min()), int(split.y.max())
            if lo < 0 or hi >= n_classes:
                raise ValueError(f"{ds.name}: {what} labels lie in {lo}..{hi}, the model has "
                                 f"model.n_classes = {n_classes}")


def normalize(split: Split, mean: list[float], std: list[float]) -> Split:
    """(x - mean) / std per channel (torchvision's Normalize, on the whole split at once)."""
    from torchvision.transforms.v2 import functional as TF

    if not mean:
        return split
    if len(mean) != split.x.shape[1] or len(std) != split.x.shape[1]:
        raise ValueError(f"data.mean and data.std need one value per channel ({split.x.shape[1]}), "
                         f"got {len(mean)} and {len(std)}")
    if any(v <= 0 for v in std):
        raise ValueError(f"data.std must be > 0, got {std}")
    return Split(TF.normalize(split.x, mean, std), split.y)


_M32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash (xor-shift-multiply), on Python ints or int64 tensors holding values < 2^32:
    every product stays below 2^63, so no overflow on any device."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def keyed_uniform(seed: int, epoch: int, index: Tensor, stream: int, n: int = 1) -> Tensor:
    """Uniform numbers in [0, 1) (float32, 24 bits) that depend only on (seed, epoch, sample index,
    stream, j < n): shape (len(index), n), on index's device. A sample draws the same numbers whichever
    process handles it and wherever it sits in a batch, so data-parallel processes need no shared
    generator and mirror nothing (streams: see AUGMENT_STREAM, DROPOUT_STREAM)."""
    key = _mix32(seed & _M32)  # the batch-independent part in Python: no tensor made or copied for it
    for part in (epoch, stream):
        key = _mix32(key ^ (part & _M32))
    h = _mix32((index.to(torch.int64) & _M32) ^ key)[:, None]
    h = _mix32(h ^ torch.arange(n, dtype=torch.int64, device=index.device)[None, :])
    return (h >> 8).to(torch.float32) / float(1 << 24)


AUGMENT_STREAM, DROPOUT_STREAM = 1, 2


def augment(x: Tensor, u: Tensor, crop_padding: int = 0, hflip: bool = False, padding_mode: str = "edge") -> Tensor:
    """Per-sample random crop (after padding by crop_padding) and horizontal flip of a batch, as batched
    tensor operations on the batch's device (no per-sample loop, no host round trip), from uniform
    numbers u (n, 3) in [0, 1): crop row, crop column, flip (< 0.5)."""
    from torchvision.transforms.v2 import functional as TF

    n, _, h, w = x.shape
    u = u.to(x.device)
    if crop_padding > 0:
        p = crop_padding
        i = (u[:, 0] * (2 * p + 1)).long().clamp_(max=2 * p)
        j = (u[:, 1] * (2 * p + 1)).long().clamp_(max=2 * p)
        x = _crop(TF.pad(x, [p, p, p, p], padding_mode=padding_mode), i, j, h, w)
    if hflip:
        x = torch.where((u[:, 2] < 0.5)[:, None, None, None], TF.horizontal_flip(x), x)
    return x


def augment_keyed(x: Tensor, seed: int, epoch: int, index: Tensor, crop_padding: int = 0, hflip: bool = False,
                  padding_mode: str = "edge") -> Tensor:
    """`augment` with each sample's numbers from keyed_uniform(seed, epoch, its index in the training
    set): the same sample gets the same augmentation in any process and batch."""
    u = keyed_uniform(seed, epoch, index.to(x.device), AUGMENT_STREAM, 3)
    return augment(x, u, crop_padding, hflip, padding_mode)


def _crop(padded: Tensor, i: Tensor, j: Tensor, h: int, w: int) -> Tensor:
    """Per-sample h x w windows of a padded batch starting at rows i, columns j (one gather)."""
    n, dev = padded.shape[0], padded.device
    rows = (i[:, None] + torch.arange(h, device=dev))[:, :, None]  # (n, h, 1)
    cols = (j[:, None] + torch.arange(w, device=dev))[:, None, :]  # (n, 1, w)
    return padded[torch.arange(n, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()


def batches(split: Split, batch_size: int, shuffle: bool = False,
            generator: Optional[torch.Generator] = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of an in-memory split (the last one may be smaller)."""
    n = split.y.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield split.x[idx], split.y[idx]
