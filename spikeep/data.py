"""Data sets as tensors: MNIST through torchvision, and the small MNIST subset shipped with spikeep.

Where data is looked for: the config's data.root, else $SPIKEEP_DATA, else ~/.cache/spikeep/data.
MNIST is found in ROOT/MNIST/raw, either extracted or as the four official .gz archives. Archives in
a read-only folder are copied to a writable cache first, and torchvision checks their md5 and
extracts them there (no network involved). `download=True` keeps torchvision's normal download
for users with internet.
"""
from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch

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
    """The small MNIST subset shipped inside spikeep (see scripts/build_quickstart.py)."""
    with resources.files("spikeep").joinpath("_data", QUICKSTART).open("rb") as f:
        z = np.load(f, allow_pickle=False)
        arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    split = lambda x, y: Split(torch.from_numpy(x).unsqueeze(1).float().div_(255), torch.from_numpy(y).long())
    return Dataset(split(arrays["x_train"], arrays["y_train"]), split(arrays["x_test"], arrays["y_test"]),
                   "mnist-quickstart")


DATASETS = ("mnist", "mnist-quickstart")


def load_dataset(name: str, root: str = "", subset: int = 0, download: bool = False) -> Dataset:
    if name == "mnist":
        ds = load_mnist(root or None, download)
    elif name == "mnist-quickstart":
        ds = load_quickstart()
    else:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if subset < 0:
        raise ValueError(f"data.subset must be >= 0, got {subset}")
    if subset:
        ds = ds._replace(train=Split(ds.train.x[:subset], ds.train.y[:subset]))
    return ds


def batches(split: Split, batch_size: int, shuffle: bool = False,
            generator: Optional[torch.Generator] = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of an in-memory split (the last one may be smaller)."""
    n = split.y.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield split.x[idx], split.y[idx]
