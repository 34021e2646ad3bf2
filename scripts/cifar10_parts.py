#!/usr/bin/env python3
"""All of CIFAR-10 in two parts that each fit one GPU call (64 MiB), and back.

    python scripts/cifar10_parts.py pack OUT_DIR [--npz cifar10.npz]   OUT_DIR/part1, OUT_DIR/part2 (~5 min on 2 cores)
    python scripts/cifar10_parts.py join PARTS... OUT.npz               every part there: the whole set, sha256-checked
    python scripts/cifar10_parts.py partial PART OUT.npz                one part alone: the training images it holds

`pack` shuffles the training set once (a fixed permutation, seed 0, written to OUT_DIR/shuffle.json)
and hands the result to ../shared/tools/split_cifar10.py (lossless WebP mosaics of 2,000 images, a
manifest with every array's sha256 and join_cifar10.py in part1). The shared npz is ordered by class,
so without the shuffle part2 would hold the last five classes only; shuffled, each part holds a random
half of the training images, and part2 also holds every label and the whole test set. `join` rebuilds
the (shuffled) npz with part1's join_cifar10.py, which checks every array against the manifest.
`partial` is the fallback when a machine has only part2 (part1 and its manifest gone with a released
machine): the training images of that part's mosaics (~26,000, a random subset of all classes), every
label and the 10,000 test images, from the chunk files' names (KEY_START.webp / .npy.xz), checked by
shape only (no manifest).
"""
from __future__ import annotations

import argparse
import io
import json
import lzma
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SHARED_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "cifar10.npz"
SPLIT_TOOL = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "split_cifar10.py"
CHUNK = re.compile(r"^\d{4}_(x_train|y_train|x_test|y_test|class_names)_(\d+)\.(webp|npy\.xz)$")
MOSAIC_COLUMNS = 50  # split_cifar10.py's mosaics: rows of 50 images of 32 x 32 x 3


def pack(out: Path, npz: Path, part_mb: float, limit: int = 0, test_limit: int = 0) -> None:
    if not npz.is_file():
        raise SystemExit(f"pack: {npz} does not exist (give --npz)")
    if not SPLIT_TOOL.is_file():
        raise SystemExit(f"pack: the split tool {SPLIT_TOOL} is not there (it lives in ../shared/tools)")
    out.mkdir(parents=True, exist_ok=True)
    with np.load(npz, allow_pickle=False) as d:
        arrays = {k: d[k] for k in ("x_train", "y_train", "x_test", "y_test", "class_names")}
    perm = np.random.default_rng(0).permutation(arrays["y_train"].shape[0])
    arrays["x_train"], arrays["y_train"] = arrays["x_train"][perm], arrays["y_train"][perm]
    if limit:  # tests: a small set (the first `limit` of the shuffled training set)
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][:limit], arrays["y_train"][:limit]
    if test_limit:  # and a random slice of the test set
        t = np.random.default_rng(1).permutation(arrays["y_test"].shape[0])[:test_limit]
        arrays["x_test"], arrays["y_test"] = arrays["x_test"][t], arrays["y_test"][t]
    (out / "shuffle.json").write_text(json.dumps({"source": str(npz), "seed": 0, "rule": "numpy default_rng(0)"
                                                 ".permutation(n_train) applied to x_train and y_train",
                                                 "limit": limit, "test_limit": test_limit}) + "\n")
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        shuffled = Path(tmp) / "cifar10_shuffled.npz"
        np.savez(shuffled, **arrays)
        for p in out.glob("part*"):
            shutil.rmtree(p)
        subprocess.run([sys.executable, str(SPLIT_TOOL), str(out), "--npz", str(shuffled), "--part-mb", str(part_mb)],
                       check=True)


def join(parts: list[Path], out: Path) -> None:
    """Every chunk file of every part into one folder, then part1's join_cifar10.py (sha256 checks)."""
    first = next((p for p in parts if (p / "manifest.json").is_file()), None)
    if first is None:
        raise SystemExit("join: no part with manifest.json (part1) among " + ", ".join(map(str, parts)))
    with tempfile.TemporaryDirectory() as tmp:
        for p in parts:
            for f in p.iterdir():
                if f.is_file():
                    (Path(tmp) / f.name).symlink_to(f.resolve())
        r = subprocess.run([sys.executable, str(first / "join_cifar10.py"), tmp, str(out)])
    if r.returncode:
        raise SystemExit(f"join: join_cifar10.py failed (exit {r.returncode})")


def from_mosaic(blob: bytes) -> np.ndarray:
    """A lossless WebP mosaic (rows of 50 images) -> (rows * 50, 32, 32, 3) uint8, padding included."""
    from PIL import Image
    m = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    rows = m.shape[0] // 32
    return m.reshape(rows, 32, MOSAIC_COLUMNS, 32, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 32, 32, 3)


def partial(part: Path, out: Path) -> dict:
    """What one part holds, as an npz the trainer reads: its training mosaics with their labels, and
    the test set (which must be whole in it). Returns counts."""
    chunks: dict[str, list] = {}
    for f in sorted(part.iterdir()):
        m = CHUNK.match(f.name)
        if m:
            chunks.setdefault(m.group(1), []).append((int(m.group(2)), f))
    need = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in chunks]
    if need:
        raise SystemExit(f"partial: {part} holds no {', '.join(need)}: it cannot be trained on alone")

    def load(f: Path) -> np.ndarray:
        blob = f.read_bytes()
        if f.name.endswith(".webp"):
            return from_mosaic(blob)
        return np.load(io.BytesIO(lzma.decompress(blob)), allow_pickle=False)

    def whole(key: str) -> np.ndarray:
        if len(chunks[key]) != 1:
            raise SystemExit(f"partial: expected {key} as one chunk in {part}, found {len(chunks[key])}")
        return load(chunks[key][0][1])

    y_all, y_test = whole("y_train"), whole("y_test")
    xs, ys = [], []
    for start, f in sorted(chunks["x_train"]):
        x = load(f)[: max(0, min(2000, y_all.shape[0] - start))]
        xs.append(x)
        ys.append(y_all[start:start + x.shape[0]])
    x_test = np.concatenate([load(f) for _, f in sorted(chunks["x_test"])])[: y_test.shape[0]]
    if x_test.shape[0] != y_test.shape[0]:
        raise SystemExit(f"partial: {part} holds {x_test.shape[0]} test images for {y_test.shape[0]} labels")
    arrays = {"x_train": np.concatenate(xs), "y_train": np.concatenate(ys), "x_test": x_test, "y_test": y_test}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return {k: int(v.shape[0]) for k, v in arrays.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="shuffle the training set once and split it into parts")
    p.add_argument("out", type=Path)
    p.add_argument("--npz", type=Path, default=SHARED_NPZ)
    p.add_argument("--part-mb", type=float, default=52.0)
    p.add_argument("--limit", type=int, default=0, help="tests: keep N training images")
    p.add_argument("--test-limit", type=int, default=0, help="tests: keep N test images")
    p = sub.add_parser("join", help="rebuild the npz from every part (sha256-checked)")
    p.add_argument("paths", type=Path, nargs="+", help="the part folders, then OUT.npz")
    p = sub.add_parser("partial", help="the training images of one part alone, and the test set")
    p.add_argument("part", type=Path)
    p.add_argument("out", type=Path)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.out, a.npz, a.part_mb, a.limit, a.test_limit)
    elif a.cmd == "join":
        if len(a.paths) < 2:
            ap.error("join needs the part folders and OUT.npz")
        join(a.paths[:-1], a.paths[-1])
    else:
        print("partial: " + ", ".join(f"{k} {v}" for k, v in partial(a.part, a.out).items()))


if __name__ == "__main__":
    main()
