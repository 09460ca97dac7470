"""Shared fixtures of the Python tests: generated data sets (as tests/common/mod.rs makes
them for the Rust tests), a model bundle trained with gfer.train on the tiny CLIP fixture,
and the gfer binary the Rust tests built, to compare the bindings with the CLI."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import gfer

ROOT = Path(__file__).resolve().parents[2]
# MTCNN's weights, for the library and the CLI alike, wherever pytest runs from.
os.environ.setdefault("GFER_ASSETS", str(ROOT / "assets"))
TINY_CLIP = ROOT / "tests" / "fixtures" / "clip" / "tiny_hf.safetensors"
CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
HUES = [
    (220, 40, 40),
    (40, 200, 40),
    (40, 40, 220),
    (220, 220, 40),
    (200, 40, 200),
    (40, 200, 200),
    (140, 140, 140),
]


def required() -> bool:
    """GFER_REQUIRE_ASSETS=1 (scripts/test) turns a missing asset or binary into a failure."""
    return os.environ.get("GFER_REQUIRE_ASSETS") == "1"


def missing(what: str, how: str):
    message = f"{what} is missing; {how}"
    if required():
        pytest.fail(f"{message} (GFER_REQUIRE_ASSETS=1, so this is an error)")
    pytest.skip(message)


def synthetic_face(cls: int, index: int, size: int = 40) -> np.ndarray:
    """A synthetic expression image: each class its own colour and stripe, per-image
    noise, so that even a random encoder separates the classes."""
    rng = np.random.default_rng(cls * 1000 + index)
    image = np.empty((size, size, 3), dtype=np.int32)
    image[:] = HUES[cls % 7]
    stripe = (np.arange(size) * 7 // size) == cls
    image[:, stripe] = 255
    image += rng.integers(-30, 31, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: Path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_folder_dataset(root: Path, train_per_class: int, test_per_class: int, offset=0):
    """A `folder:` data set, root/{train,test}/<class>/*.png."""
    for split, n, start in (("train", train_per_class, 0), ("test", test_per_class, 500)):
        for cls, name in enumerate(CLASSES):
            for i in range(n):
                image = synthetic_face(cls, offset + start + i)
                save_png(image, root / split / name / f"{i}.png")
    return f"folder:{root}"


@pytest.fixture(scope="session")
def tiny_clip() -> Path:
    assert TINY_CLIP.exists(), f"missing committed fixture {TINY_CLIP}"
    return TINY_CLIP


@pytest.fixture(scope="session")
def gfer_bin() -> Path:
    """The gfer binary of the Rust tests' build (GFER_BIN, else
    $CARGO_TARGET_DIR/debug/gfer)."""
    path = os.environ.get("GFER_BIN")
    if path is None:
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        path = target / "debug" / "gfer"
    path = Path(path)
    if not path.exists():
        missing(str(path), "build it with cargo test --no-run (scripts/test does), or set GFER_BIN")
    return path


def run_cli(gfer_bin: Path, *args, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(gfer_bin), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check and done.returncode != 0:
        raise AssertionError(f"gfer {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> str:
    """A `folder:` spec of synthetic faces: 12 training and 2 test images per class."""
    return write_folder_dataset(tmp_path_factory.mktemp("data"), 12, 2)


# The recipe of the Rust tests' tiny bundle (tests/predict_support/mod.rs).
TINY_RECIPE = dict(
    fast=True, views=2, mlp_hidden=[32], epochs=15, batch_size=8, lr=2e-3, progress=False
)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, dataset, tiny_clip) -> dict:
    """gfer.train's result for fast-mode CAFE on the synthetic faces and the tiny CLIP."""
    folder = tmp_path_factory.mktemp("trained")
    return gfer.train(
        data=dataset,
        out=folder / "run",
        weights=tiny_clip,
        cache=folder / "cache",
        **TINY_RECIPE,
    )


@pytest.fixture(scope="session")
def bundle(trained) -> Path:
    return Path(trained["bundle"])


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list:
    """Face crops of every class as PNG files (test images the model did not train on)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for cls in range(7):
        for i in range(3):
            path = folder / f"{CLASSES[cls]}_{i}.png"
            save_png(synthetic_face(cls, 900 + i, size=30 + 5 * i), path)
            paths.append(path)
    return paths


def read_features(path: Path):
    """The `features` tensor and the metadata of a gfer features file (safetensors)."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    entry = header["features"]
    assert entry["dtype"] == "F32", entry
    start, end = entry["data_offsets"]
    data = raw[8 + size + start : 8 + size + end]
    return np.frombuffer(data, dtype="<f4").reshape(entry["shape"]), header["__metadata__"]


def read_tensors(path: Path) -> dict:
    """Every tensor of a safetensors file, as raw bytes (for exact comparison)."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    return {
        name: (entry["dtype"], entry["shape"], raw[8 + size + entry["data_offsets"][0] : 8 + size + entry["data_offsets"][1]])
        for name, entry in header.items()
        if name != "__metadata__"
    }
