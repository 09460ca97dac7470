"""Fixture data sets in the exact native formats, with their traps.

Writes tests/fixtures/datasets/<name>/ for every format gfer reads (see
shared/spec/datasets.md): RAF-DB's misspelt label file, FER2013's three CSV variants and
its image folders (icml_face_data.csv with leading spaces in the header), FERPlus'
fer2013new.csv joined row by row (empty names, file numbers that drift from the row
index) and its generated folders (header-less label.csv), AffectNet's original CSVs
(validation.csv without a header, faces to crop with the box) and its newer npy release,
SFEW's capitalised class folders, MMA's mix of grey and RGB files, CK+'s float label
files, a generic class-folder tree and a manifest CSV. Planted problems: missing listed
images, a duplicate inside MMA (train vs test) and an MMA PNG that is FER2013 row 10.

Images are tiny (8x8 to 48x48) so the whole tree stays far below 1 MB. The Rust tests
(tests/data_loaders.rs, tests/data_cli.rs) check counts and the canonical label of
named images, worked out by hand from the tables below.

Usage: python scripts/make_reference.py datasets
"""
import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "datasets"
RNG = np.random.RandomState(20240917)


def noise(height, width, channels=3, low=0, high=256):
    shape = (height, width) if channels == 1 else (height, width, channels)
    return RNG.randint(low, high, size=shape).astype(np.uint8)


def save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if array.ndim == 2 else "RGB"
    Image.fromarray(array, mode).save(path, **kwargs)


def write_text(path, text, newline="\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline=newline) as f:
        f.write(text)


# ---------------------------------------------------------------------------------------
# RAF-DB basic: codes 1 Surprise .. 7 Neutral; train_00005 is listed but has no image.
RAFDB = [
    ("train_00001.jpg", 5),
    ("train_00002.jpg", 1),
    ("train_00003.jpg", 4),
    ("train_00004.jpg", 7),
    ("train_00005.jpg", 2),
    ("test_0001.jpg", 3),
    ("test_0002.jpg", 6),
    ("test_0003.jpg", 5),
]


def rafdb():
    root = ROOT / "rafdb"
    lines = "".join(f"{name} {code}\n" for name, code in RAFDB)
    write_text(root / "EmoLabel" / "list_patition_label.txt", lines)
    for name, _ in RAFDB:
        if name == "train_00005.jpg":
            continue
        stem = name[: -len(".jpg")]
        save(root / "Image" / "aligned" / f"{stem}_aligned.jpg", noise(12, 12), quality=80)
        save(root / "Image" / "original" / name, noise(16, 20), quality=80)


# ---------------------------------------------------------------------------------------
# FER2013 rows, shared with FERPlus' fer2013new.csv (joined row by row).
# (FER2013 emotion, Usage, FERPlus image name, FERPlus votes
#  neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF)
# After row 2 (an empty name) the file numbers drift away from the row index.
FER_ROWS = [
    (0, "Training", "fer0000000.png", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # neutral
    (3, "Training", "fer0000001.png", [0, 6, 1, 1, 0, 0, 0, 0, 1, 1]),  # happiness
    (6, "Training", "", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # dropped by FERPlus
    (2, "Training", "fer0000010.png", [4, 0, 3, 0, 0, 0, 0, 0, 0, 3]),  # no majority
    (5, "Training", "fer0000011.png", [0, 0, 0, 0, 0, 0, 0, 6, 4, 0]),  # contempt
    (1, "Training", "fer0000012.png", [5, 1, 1, 1, 1, 1, 0, 0, 0, 0]),  # neutral once 1s go
    (4, "Training", "fer0000013.png", [0, 0, 0, 0, 0, 7, 3, 0, 0, 0]),  # disgust
    (2, "Training", "fer0000014.png", [0, 0, 0, 0, 0, 0, 7, 0, 3, 0]),  # fear
    (5, "PublicTest", "fer0000015.png", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8]),  # NF
    (0, "PublicTest", "fer0000016.png", [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),  # no majority
    (0, "PublicTest", "fer0000017.png", [2, 0, 0, 0, 5, 2, 1, 0, 0, 0]),  # anger
    (6, "PublicTest", "fer0000018.png", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),  # no majority (half)
    (5, "PrivateTest", "fer0000019.png", [0, 0, 8, 0, 0, 0, 2, 0, 0, 0]),  # surprise
    (4, "PrivateTest", "fer0000020.png", [0, 0, 0, 0, 0, 0, 0, 0, 9, 1]),  # unknown
    (4, "PrivateTest", "fer0000021.png", [0, 0, 0, 7, 0, 3, 0, 0, 0, 0]),  # sadness
    (3, "PrivateTest", "fer0000022.png", [0, 9, 0, 0, 0, 0, 0, 0, 0, 1]),  # happiness
]
VOTE_NAMES = "neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


# fer2013.csv's pixels by row, for the MMA copy of row 10.
FER_PIXELS = []


def fer_pixels(row):
    """48x48 grey values; the first pixel is the row index, so a test can tell which
    fer2013.csv row a FERPlus sample was joined to. Small values keep the file small."""
    pixels = noise(48, 48, channels=1, high=30)
    pixels[0, 0] = row
    return pixels


def pixel_text(pixels):
    return " ".join(str(v) for v in pixels.reshape(-1))


def fer2013():
    root = ROOT / "fer2013"
    root.mkdir(parents=True)
    rows = [fer_pixels(i) for i in range(len(FER_ROWS))]
    FER_PIXELS.extend(rows)
    with open(root / "fer2013.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["emotion", "pixels", "Usage"])
        for (emotion, usage, _, _), pixels in zip(FER_ROWS, rows):
            w.writerow([emotion, pixel_text(pixels), usage])
    with open(root / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["Usage", "Image name"] + VOTE_NAMES.split(","))
        for _, usage, name, votes in FER_ROWS:
            w.writerow([usage, name] + votes)

    # icml_face_data.csv: the header names carry leading spaces.
    icml = ROOT / "fer2013-icml"
    icml.mkdir(parents=True, exist_ok=True)
    icml_rows = [(3, "Training"), (0, "Training"), (1, "Training"), (5, "PublicTest"), (6, "PrivateTest")]
    with open(icml / "icml_face_data.csv", "w", newline="") as f:
        f.write("emotion, Usage, pixels\n")
        for i, (emotion, usage) in enumerate(icml_rows):
            pixels = noise(48, 48, channels=1, high=10)
            pixels[0, 0] = 100 + i
            f.write(f"{emotion},{usage},{pixel_text(pixels)}\n")

    # The competition files: train.csv (emotion,pixels), test.csv (pixels only).
    kaggle = ROOT / "fer2013-kaggle"
    kaggle.mkdir(parents=True, exist_ok=True)
    with open(kaggle / "train.csv", "w", newline="") as f:
        f.write("emotion,pixels\n")
        for emotion in (4, 2, 6):
            f.write(f'{emotion},"{pixel_text(noise(48, 48, channels=1, high=10))}"\n')
    with open(kaggle / "test.csv", "w", newline="") as f:
        f.write("pixels\n")
        for _ in range(2):
            f.write(f'"{pixel_text(noise(48, 48, channels=1, high=10))}"\n')

    # Image folders train|test/<class>/.
    folders = ROOT / "fer2013-folders"
    for split, klass, name in [
        ("train", "angry", "Training_10118481.jpg"),
        ("train", "happy", "Training_1206.jpg"),
        ("train", "sad", "Training_2913.jpg"),
        ("test", "surprise", "PublicTest_1032.jpg"),
        ("test", "neutral", "PrivateTest_88.jpg"),
    ]:
        save(folders / split / klass / name, noise(16, 16, channels=1), quality=80)


# ---------------------------------------------------------------------------------------
# FERPlus generated folders: header-less label.csv `name,"(0, 0, 48, 48)",votes...`.
FERPLUS_FOLDERS = {
    "FER2013Train": [
        ("fer0000000.png", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]),  # no majority
        ("fer0000001.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),  # happiness
        ("fer0000002.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # NF
        ("fer0000003.png", [0, 0, 0, 0, 8, 0, 0, 2, 0, 0]),  # anger, but the PNG is missing
    ],
    "FER2013Valid": [
        ("fer0028709.png", [0, 0, 0, 9, 0, 0, 0, 1, 0, 0]),  # sadness
    ],
    "FER2013Test": [
        ("fer0032298.png", [0, 0, 6, 0, 0, 0, 0, 4, 0, 0]),  # surprise
        ("fer0032299.png", [0, 0, 0, 0, 0, 0, 0, 7, 3, 0]),  # contempt
    ],
}


def ferplus_folders():
    root = ROOT / "ferplus-folders"
    for folder, rows in FERPLUS_FOLDERS.items():
        lines = []
        for name, votes in rows:
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(str(v) for v in votes) + "\n")
            if name != "fer0000003.png":
                gradient = (np.add.outer(np.arange(48), np.arange(48)) * 2 + len(lines)).astype(np.uint8)
                save(root / folder / name, gradient)
        write_text(root / folder / "label.csv", "".join(lines))


# ---------------------------------------------------------------------------------------
# AffectNet, original release. Columns: subDirectory_filePath, face_x, face_y, face_width,
# face_height, facial_landmarks, expression, valence, arousal. Images 32x32 (x 24 high),
# the face box painted white on black so that a crop can be checked.
AFFECTNET_TRAIN = [
    ("1/a_neutral.jpg", (4, 2, 16, 20), 0),
    ("1/b_happy.jpg", (8, 4, 20, 12), 1),
    ("2/c_sad.jpg", (20, 6, 20, 10), 2),  # box runs past the right edge: cut to 12 wide
    ("2/d_contempt.jpg", (4, 4, 8, 8), 7),
    ("3/e_none.jpg", (4, 4, 8, 8), 8),
    ("3/f_uncertain.jpg", (4, 4, 8, 8), 9),
    ("3/g_nonface.jpg", (4, 4, 8, 8), 10),
    ("3/h_missing.jpg", (4, 4, 8, 8), 3),  # listed, never written
]
AFFECTNET_VAL = [  # validation.csv has no header row
    ("4/v_surprise.jpg", (2, 2, 10, 10), 3),
    ("4/v_fear.jpg", (2, 2, 10, 10), 4),
    ("4/v_disgust.jpg", (2, 2, 10, 10), 5),
    ("4/v_anger.jpg", (2, 2, 10, 10), 6),
]


def affectnet():
    root = ROOT / "affectnet"
    images = root / "Manually_Annotated_Images"
    for file, rows, header in [("training.csv", AFFECTNET_TRAIN, True), ("validation.csv", AFFECTNET_VAL, False)]:
        lines = []
        if header:
            lines.append(
                "subDirectory_filePath,face_x,face_y,face_width,face_height,"
                "facial_landmarks,expression,valence,arousal\n"
            )
        for path, (x, y, w, h), code in rows:
            landmarks = ";".join(f"{v:.2f}" for v in RNG.uniform(0, 32, size=136))
            valence, arousal = (-2, -2) if code in (9, 10) else (round(RNG.uniform(-1, 1), 6), round(RNG.uniform(-1, 1), 6))
            lines.append(f"{path},{x},{y},{w},{h},{landmarks},{code},{valence},{arousal}\n")
            if "missing" in path:
                continue
            array = np.zeros((24, 32, 3), dtype=np.uint8)
            array[y : y + h, x : x + w] = 255
            save(images / path, array, quality=95)
        write_text(root / file, "".join(lines))

    # Newer release: *_set/images/<id>.jpg + annotations/<id>_exp.npy, pre-cropped faces.
    # The annotations are numpy scalars of numeric strings ('<U1'); one is an integer.
    newer = ROOT / "affectnet-npy"
    for split, entries in [
        ("train_set", [("0", "1"), ("1", "7"), ("2", np.int64(6))]),
        ("val_set", [("10", "0"), ("11", "4"), ("12", None)]),
    ]:
        for image_id, code in entries:
            save(newer / split / "images" / f"{image_id}.jpg", noise(12, 12), quality=80)
            if code is None:
                continue
            annotations = newer / split / "annotations"
            annotations.mkdir(parents=True, exist_ok=True)
            np.save(annotations / f"{image_id}_exp.npy", np.array(code))
            np.save(annotations / f"{image_id}_val.npy", np.array("0.5"))
            np.save(annotations / f"{image_id}_aro.npy", np.array("-0.25"))


# ---------------------------------------------------------------------------------------
# SFEW 2.0: capitalised class folders; Test_Aligned_Faces has no labels.
SFEW = {
    "Train_Aligned_Faces": {
        "Angry": ["Airheads_000519240_00000005.png"],
        "Disgust": ["Bridesmaids_005031280_00000001.png"],
        "Fear": ["Hellboy_004012634_00000012.png"],
        "Happy": ["21_003214560_00000003.png", "21_003214560_00000004.png"],
        "Neutral": ["Unstoppable_004839480_00000010.png"],
        "Sad": ["Harry_Potter_5_013527400_00000008.png"],
        "Surprise": ["Inception_003040200_00000002.png"],
    },
    "Val_Aligned_Faces": {
        "Angry": ["Pulp_Fiction_001314480_00000020.png"],
        "Sad": ["Titanic_013400640_00000007.png"],
        "Surprise": ["Twilight_005520080_00000009.png"],
    },
}


def sfew():
    root = ROOT / "sfew"
    for split, classes in SFEW.items():
        for klass, names in classes.items():
            for name in names:
                save(root / split / klass / name, noise(18, 14))
    save(root / "Test_Aligned_Faces" / "Hancock_001234567_00000001.png", noise(18, 14))


# ---------------------------------------------------------------------------------------
# MMA: grey (mode L) and RGB JPGs mixed. Planted: test/happy/dup_train_happy.jpg is a
# byte copy of train/happy/h_rgb.jpg, and valid/angry/fer_row10.png is FER2013 row 10's
# pixels (anger there too) saved as a lossless grey PNG.
MMA = {
    "train": [
        ("angry", "a_grey.jpg", 1),
        ("angry", "a_rgb.jpg", 3),
        ("happy", "h_grey.jpg", 1),
        ("happy", "h_rgb.jpg", 3),
        ("sad", "s_grey.jpg", 1),
        ("surprise", "su_rgb.jpg", 3),
        ("fear", "f_grey.jpg", 1),
        ("disgust", "d_rgb.jpg", 3),
        ("neutral", "n_grey.jpg", 1),
    ],
    "valid": [("neutral", "n_rgb.jpg", 3)],
    "test": [("sad", "s_rgb.jpg", 3)],
}


def mma():
    root = ROOT / "mma" / "MMAFEDB"
    for split, files in MMA.items():
        for klass, name, channels in files:
            save(root / split / klass / name, noise(16, 16, channels=channels), quality=80)
    (root / "test" / "happy").mkdir(parents=True)
    shutil.copyfile(root / "train" / "happy" / "h_rgb.jpg", root / "test" / "happy" / "dup_train_happy.jpg")
    save(root / "valid" / "angry" / "fer_row10.png", FER_PIXELS[10])


# ---------------------------------------------------------------------------------------
# CK+: the emotion file names the last (apex) frame and holds one float code.
CKPLUS = [
    ("S005", "001", 4, "   3.0000000e+00\n", 1),  # disgust, grey frames
    ("S010", "002", 3, "   2.0000000e+00\n", 1),  # contempt: dropped
    ("S011", "001", 2, None, 1),  # no emotion file: unlabelled
    ("S014", "003", 5, "   7.0000000e+00\n", 3),  # surprise, RGB frames
    ("S022", "001", 3, "   5.0000000e+00\n", 1),  # happiness
]


def ckplus():
    root = ROOT / "ckplus"
    for subject, sequence, frames, code, channels in CKPLUS:
        for frame in range(1, frames + 1):
            name = f"{subject}_{sequence}_{frame:08d}.png"
            save(root / "cohn-kanade-images" / subject / sequence / name, noise(8, 10, channels=channels))
        if code is not None:
            name = f"{subject}_{sequence}_{frames:08d}_emotion.txt"
            write_text(root / "Emotion" / subject / sequence / name, code)


# ---------------------------------------------------------------------------------------
# Generic class-folder trees and a manifest.
def folders():
    root = ROOT / "folder"
    for split, klass, name in [
        ("train", "happy", "p1.png"),
        ("train", "happy", "p2.png"),
        ("train", "Angry", "p3.png"),
        ("train", "contempt", "p4.png"),
        ("train", "misc", "p5.png"),
        ("val", "neutral", "p6.png"),
        ("test", "Surprised", "p7.png"),
        ("test", "fear", "p8.png"),
    ]:
        save(root / split / klass / name, noise(8, 8))
    write_text(root / "README.txt", "not an image\n")
    flat = ROOT / "folder-flat"
    for klass, name in [("Surprise", "q1.png"), ("fear", "q2.png"), ("fear", "q3.png")]:
        save(flat / klass / name, noise(8, 8))

    manifest = ROOT / "manifest"
    for name in "abcde":
        save(manifest / "images" / f"{name}.png", noise(8, 8))
    write_text(
        manifest / "manifest.csv",
        "path,label,split,domain\n"
        "images/a.png,happy,train,studio\n"
        "images/b.png,0,train,studio\n"
        "images/c.png,Sad,test,\n"
        "images/d.png,6,val,outdoor\n"
        "images/e.png,contempt,train,\n"
        "images/missing.png,anger,test,\n",
    )
    write_text(manifest / "plain.csv", "images/a.png,3\nimages/b.png,Fear,test\n")


def main(argv):
    if ROOT.exists():
        shutil.rmtree(ROOT)
    ROOT.mkdir(parents=True)
    rafdb()
    fer2013()
    ferplus_folders()
    affectnet()
    sfew()
    mma()
    ckplus()
    folders()
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    print(f"wrote {ROOT} ({total / 1024:.0f} KiB)")
