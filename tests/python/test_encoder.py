"""gfer.Encoder: bit for bit `gfer extract`'s features, from every kind of input, on
threads at once with the GIL released."""

import threading
import time

import numpy as np
import pytest
from PIL import Image

import gfer
from conftest import read_features, run_cli, synthetic_face


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    return gfer.Encoder(tiny_clip, progress=False)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """40 distinct images of several sizes, as PNG files."""
    folder = tmp_path_factory.mktemp("many")
    paths = []
    for i in range(40):
        path = folder / f"{i:02d}.png"
        Image.fromarray(synthetic_face(i % 7, 300 + i, size=24 + i)).save(path)
        paths.append(path)
    return paths


def test_the_encoder_says_what_it_is(encoder, tiny_clip):
    assert encoder.dim == 32
    assert encoder.input_size == 32
    assert encoder.preprocess == "cafe"
    assert isinstance(encoder.backbone, str) and len(encoder.fingerprint) == 16
    assert "dim=32" in repr(encoder)
    assert gfer.Encoder(tiny_clip, preprocess="clip").preprocess == "clip"


def test_the_precision_is_a_keyword_and_a_wrong_one_names_the_choices(encoder, tiny_clip):
    assert encoder.precision == "f32"
    assert gfer.Encoder(tiny_clip, precision="f32").precision == "f32"
    with pytest.raises(ValueError, match=r"precision='fp16'.*`f32`, `bf16`, `int8`"):
        gfer.Encoder(tiny_clip, precision="fp16")


def test_int8_features_are_gfer_extracts_and_close_to_f32(gfer_bin, encoder, tiny_clip, many, tmp_path):
    """Needs the int8 kernel."""
    int8 = gfer.Encoder(tiny_clip, precision="int8", progress=False)
    assert int8.precision == "int8" and int8.fingerprint == encoder.fingerprint
    out = tmp_path / "int8.safetensors"
    run_cli(gfer_bin, "extract", "--weights", tiny_clip, "--precision", "int8", "--out", out, *many[:8])
    written, metadata = read_features(out)
    assert metadata["precision"] == "int8"
    features = int8.encode(many[:8])
    assert features.tobytes() == written.tobytes()
    exact = encoder.encode(many[:8])
    cosine = (features * exact).sum(1) / (np.linalg.norm(features, axis=1) * np.linalg.norm(exact, axis=1))
    assert cosine.min() > 0.999, cosine


def test_features_are_gfer_extracts_bit_for_bit(gfer_bin, encoder, tiny_clip, many, tmp_path):
    out = tmp_path / "features.safetensors"
    run_cli(gfer_bin, "extract", "--weights", tiny_clip, "--out", out, many[0].parent)
    written, metadata = read_features(out)
    assert metadata["weights_fingerprint"] == encoder.fingerprint
    features = encoder.encode(many)
    assert features.dtype == np.float32 and features.shape == (len(many), 32)
    assert np.array_equal(features, written)
    assert features.tobytes() == written.tobytes()
    # With CLIP's preprocessing too.
    clip = gfer.Encoder(tiny_clip, preprocess="clip", progress=False)
    out = tmp_path / "clip.safetensors"
    run_cli(gfer_bin, "extract", "--weights", tiny_clip, "--preprocess", "clip", "--out", out, *many[:5])
    assert clip.encode(many[:5]).tobytes() == read_features(out)[0].tobytes()


def test_every_kind_of_input_encodes_the_same(encoder, many):
    path = many[7]
    pixels = np.asarray(Image.open(path).convert("RGB"))
    expected = encoder.encode(path)
    assert expected.shape == (1, 32)
    for image in [str(path), path.read_bytes(), Image.open(path), pixels, [pixels]]:
        assert np.array_equal(encoder.encode(image), expected)
    assert encoder.encode([]).shape == (0, 32)


def test_a_wrong_array_is_a_clear_value_error(encoder):
    with pytest.raises(ValueError, match=r"images\[1\]: a NumPy array of shape \(24, 24\) and dtype float64"):
        encoder.encode([np.zeros((24, 24, 3), np.uint8), np.zeros((24, 24))])


def test_two_threads_encoding_at_once_get_what_one_gets(encoder, many):
    expected = encoder.encode(many)
    results = {}

    def encode(name, images):
        for _ in range(3):
            results.setdefault(name, []).append(encoder.encode(images))

    threads = [
        threading.Thread(target=encode, args=("first", many)),
        threading.Thread(target=encode, args=("second", many[::-1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(r, expected) for r in results["first"])
    assert all(np.array_equal(r, expected[::-1]) for r in results["second"])


def test_python_runs_while_an_encoder_works(tiny_clip, many):
    """The GIL is released during model work: while one thread encodes, this thread keeps
    running Python (with the GIL held throughout, it would not run at all)."""
    encoder = gfer.Encoder(tiny_clip, batch_size=1, progress=False)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in many] * 5
    start = time.perf_counter()
    encoder.encode(images)
    alone = time.perf_counter() - start
    finished = threading.Event()
    ticks = []

    def work():
        encoder.encode(images)
        finished.set()

    thread = threading.Thread(target=work)
    thread.start()
    while not finished.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    thread.join()
    assert alone > 0.05, f"the encoding took {alone:.3f} s, too short to tell"
    gaps = np.diff(ticks) if len(ticks) > 1 else [alone]
    # Python switches threads every 5 ms; a GIL held by the encoder would stall this loop
    # for the whole encoding.
    assert len(ticks) >= 10 and max(gaps) < alone / 2, (len(ticks), max(gaps), alone)
