"""Tiny datasets written in the real on-disk formats that torchvision's loaders read."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file (LeCun's MNIST format): magic 0x08 (ubyte) + ndim, big-endian dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, folder: str, n_train: int, n_test: int, seed: int = 0) -> dict:
    """Write ``root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``; return arrays."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(root / folder / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{split}-labels-idx1-ubyte", labels)
        out[split] = (images, labels)
    return out


def make_cifar10(root: Path, per_batch: int, seed: int = 0) -> dict:
    """``cifar-10-batches-py``: five train batches, one test batch, ``batches.meta``."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [i % 10 for i in range(per_batch)]
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        out[name] = (data, labels)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, f)
    return out


def make_cifar100(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict:
    """``cifar-100-python``: ``train``, ``test`` (fine and coarse labels) and ``meta``."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        fine = [i % 100 for i in range(n)]
        with open(base / name, "wb") as f:
            pickle.dump(
                {"data": data, "fine_labels": fine, "coarse_labels": [i % 20 for i in fine]}, f
            )
        out[name] = (data, fine)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return out


def make_image_folder(root: Path, classes: dict[str, int], size=(30, 20), seed: int = 0) -> None:
    """``root/<class>/<i>.png`` RGB images, ``classes`` maps class name -> image count."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def make_pet_folder(
    root: Path,
    n_trainval: int,
    n_test: int,
    size: tuple[int, int] = (40, 30),
    lists: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The Oxford-IIIT Pet layout: ``root/images/<name>.jpg`` (RGB JPEGs, one greyscale, as in
    the real set) and ``root/annotations/trimaps/<name>.png`` (8-bit trimaps: 1 pet, an ellipse;
    3 its 2 px border; 2 background), and with ``lists`` the official split files
    ``annotations/trainval.txt`` and ``test.txt`` (``name class species breed`` lines). Returns
    name -> trimap array."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    names = [f"{breed}_{i}" for i, breed in
             enumerate(["Abyssinian", "beagle"] * ((n_trainval + n_test + 1) // 2))]  # fmt: skip
    names = names[: n_trainval + n_test]
    trimaps = {}
    for i, name in enumerate(names):
        cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
        ry, rx = rng.uniform(0.2, 0.3) * height, rng.uniform(0.2, 0.3) * width
        r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        trimap = np.full((height, width), 2, dtype=np.uint8)
        trimap[r <= 1.2] = 3
        trimap[r <= 1.0] = 1
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[trimap == 1] //= 4  # a dark pet
        image = Image.fromarray(pixels)
        (image.convert("L") if i == 0 else image).save(root / "images" / f"{name}.jpg")
        trimaps[name] = trimap
    if lists:
        for split, part in (("trainval", names[:n_trainval]), ("test", names[n_trainval:])):
            lines = [f"{name} {1 + i % 2} {1 + i % 2} 1" for i, name in enumerate(part)]
            (root / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return trimaps
