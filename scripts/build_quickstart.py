"""Build spikeep/data/mnist_quickstart.npz: a small, class-balanced MNIST subset shipped with the
package so the quick start runs with no download.

    python scripts/build_quickstart.py --root ../shared/data --train 6000 --test 1000

Train images are the first N/10 of each class in the official training file, test images the first
M/10 of each class in the official test file; pixels are the original uint8 values.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from spikeep.data import load_mnist


def balanced(y: torch.Tensor, per_class: int) -> torch.Tensor:
    idx = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(10)])
    return idx.sort().values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="folder holding MNIST/raw")
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "spikeep" / "data" / "mnist_quickstart.npz"))
    a = ap.parse_args()
    ds = load_mnist(a.root)
    tr, te = balanced(ds.train.y, a.train // 10), balanced(ds.test.y, a.test // 10)
    to_u8 = lambda x: (x.squeeze(1) * 255).round().to(torch.uint8).numpy()
    np.savez_compressed(a.out, x_train=to_u8(ds.train.x[tr]), y_train=ds.train.y[tr].numpy().astype(np.uint8),
                        x_test=to_u8(ds.test.x[te]), y_test=ds.test.y[te].numpy().astype(np.uint8))
    print(f"wrote {a.out}: {len(tr)} train, {len(te)} test, {Path(a.out).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
