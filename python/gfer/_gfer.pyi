"""gfer: generalizable facial expression recognition (CAFE, ECCV 2024), in Rust."""

from os import PathLike
from typing import Any, Literal, Sequence, Union, overload

import numpy as np
import numpy.typing as npt
import PIL.Image

__version__: str

_StrPath = Union[str, PathLike[str]]
"""A path: a ``str`` or an ``os.PathLike`` such as ``pathlib.Path``."""

_ImageLike = Union[_StrPath, bytes, bytearray, npt.NDArray[np.uint8], PIL.Image.Image]
"""An image: a path, encoded bytes (JPEG, PNG, BMP, TIFF, WebP, GIF), a PIL image, or a
NumPy ``uint8`` array of shape ``(height, width, 3)`` in RGB."""

_Device = str
"""``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""

_Precision = Literal["f32", "bf16", "int8", "int8-fast"]
"""The arithmetic of a frozen encoder's linear layers (``--precision``)."""

class GferError(ValueError):
    """Something given to gfer is wrong or missing: a file, an image, an array, an option,
    a data set, weights. The message says what and where. A subclass of ValueError.
    """

class Face:
    """One face found in an image, and what the model makes of it.

    Attributes:
        box: The face as the detector boxed it, ``(x, y, width, height)`` in pixels (the
            whole image with ``detector="none"``).
        crop_box: The square region around the face, ``(x, y, width, height)``: what the
            model saw when the face was not aligned.
        crop: The pixels the model saw, a NumPy ``uint8`` array ``(height, width, 3)``, RGB:
            the face turned upright by its landmarks when ``aligned``, else ``crop_box``'s.
        score: The detector's confidence; ``None`` with ``detector="none"``.
        landmarks: The five landmarks ``[(x, y), ...]`` (left eye, right eye, nose, left
            and right mouth corner, as seen), with MTCNN; else ``None``.
        roll: The head's roll in degrees (the eyes' line against the horizontal), from
            the landmarks; else ``None``.
        aligned: Whether the model saw the face aligned by its landmarks.
        label: The most probable class.
        confidence: Its probability.
        probabilities: The probability of each class, ``{class: p}``, in class order.
    """

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The face as the detector boxed it: ``(x, y, width, height)``."""
    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """The square region around the face, ``(x, y, width, height)``: the model saw its
        pixels when the face was not aligned.
        """
    @property
    def crop(self) -> npt.NDArray[np.uint8]:
        """The pixels the model saw: a NumPy ``uint8`` array ``(height, width, 3)``, RGB (the
        upright face when ``aligned``, else ``crop_box``'s pixels).
        """
    @property
    def score(self) -> float | None:
        """The detector's confidence; ``None`` when faces are not detected."""
    @property
    def landmarks(self) -> list[tuple[float, float]] | None:
        """The five landmarks ``[(x, y), ...]`` (left eye, right eye, nose, left and right
        mouth corner, as seen); ``None`` without MTCNN.
        """
    @property
    def roll(self) -> float | None:
        """The head's roll in degrees (the eyes' line against the horizontal); ``None``
        without landmarks.
        """
    @property
    def aligned(self) -> bool:
        """Whether the model saw the face aligned by its landmarks."""
    @property
    def label(self) -> str:
        """The most probable class."""
    @property
    def confidence(self) -> float:
        """The probability of ``label``."""
    @property
    def probabilities(self) -> dict[str, float]:
        """The probability of each class, ``{class: p}``, in the order of ``class_names``."""
    def to_dict(self) -> dict[str, Any]:
        """The face as one flat record with the columns of ``gfer predict --format csv``:
        ``x``, ``y``, ``width``, ``height`` (the box), ``detection_score`` (``score``),
        ``label``, ``confidence``, one column per class, ``roll`` and the landmarks
        (``left_eye_x``, ``left_eye_y``, ... ``mouth_right_y``; ``None`` without MTCNN).
        A list of them makes a ``pandas.DataFrame``.
        """

class Predictor:
    """A trained model bundle with its frozen encoder and a face detector: finds the faces in
    photos and predicts their expressions, as ``gfer predict`` does.

    Args:
        model: The model bundle written by ``gfer.train`` (``model.safetensors``).
        weights: The frozen encoder weights the model was trained on (not needed by a
            model that reads no frozen feature, ``method="resnet"``).
        device: ``"auto"`` (the first GPU when gfer is built with CUDA and one is
            usable, else the CPU), ``"cpu"``, ``"cuda"`` (the first GPU) or ``"cuda:N"``.
        precision: The arithmetic of the frozen encoder's linear layers, ``"f32"``,
            ``"bf16"``, ``"int8"`` or ``"int8-fast"`` (``gfer predict --precision``; layer norm, softmax and
            the residuals stay f32; bf16 and the int8s run on the CPU only).
        detector: ``"mtcnn"`` (MTCNN, with five landmarks; its weights are read from
            ``assets``, fetched there on first use) or ``"seetaface"`` (SeetaFace's frontal
            detector, built in, boxes only) finds the faces; ``"none"`` takes each image as
            one face (for photos that are face crops).
        batch_size: Most faces per forward pass.
        det_threshold: The score a face needs: MTCNN's probability (default 0.9) or
            SeetaFace's cascade score (default 2.0).
        align: ``"landmarks"`` turns each face upright by its five landmarks (MTCNN's), as
            the aligned training sets were made; ``"none"`` takes the square crop as found.
        assets: The folder MTCNN's weights are in (default: ``$GFER_ASSETS``, else
            ``./assets``).
        margin: Margin around a detected face on every side, as a fraction of its size,
            in the crop the model sees.
        min_face: Detected faces smaller than this many pixels are skipped.
        max_pixels: Images with more pixels than this are refused (decompression bombs).
        progress: Show a progress bar on a terminal when predicting many images.

    Raises:
        GferError: The bundle or the weights are unreadable or do not match (a
            ``ValueError``).
        OSError: A file could not be read (``FileNotFoundError`` when missing).
    """

    def __init__(
        self,
        model: _StrPath,
        weights: _StrPath | None = None,
        device: _Device = "auto",
        detector: Literal["mtcnn", "seetaface", "none"] = "mtcnn",
        batch_size: int = 32,
        *,
        precision: _Precision = "f32",
        det_threshold: float | None = None,
        align: Literal["landmarks", "none"] = "landmarks",
        assets: _StrPath | None = None,
        margin: float = 0.2,
        min_face: int = 48,
        max_pixels: int = 64000000,
        progress: bool = True,
    ) -> None: ...
    @property
    def class_names(self) -> list[str]:
        """The names of the classes, in the order of every face's probabilities."""
    @overload
    def predict(self, images: list[_ImageLike] | tuple[_ImageLike, ...], /) -> list[list[Face]]:
        """The faces in one image, or in each image of a list, and their expressions.

        Args:
            images: An image (a path, encoded bytes, a PIL image, or a NumPy ``uint8``
                array of shape ``(height, width, 3)`` in RGB) or a list of them. A list is
                read and predicted a step of images at a time, as ``gfer predict`` does
                (memory stays bounded); the faces of a step share forward passes.

        Returns:
            For one image, its faces (left to right); for a list, one such list per image.

        Raises:
            GferError: An image is unreadable, or an array has the wrong shape or dtype
                (the message names the file or the list index, and the shape).
            OSError: A file could not be read (``FileNotFoundError`` when missing).
            KeyboardInterrupt: Ctrl-C; the work stopped after its current step.
        """
    @overload
    def predict(self, images: _ImageLike, /) -> list[Face]: ...
    def predict_batch(
        self, images: list[_ImageLike] | tuple[_ImageLike, ...] | _ImageLike, /
    ) -> list[list[Face]]:
        """The faces of many images at once: every image is read, then all of their faces go
        through the model together (``batch_size`` faces per forward pass), as the
        library's ``Predictor::predict_batch``.

        Args:
            images: A list of images (paths, encoded bytes, PIL images or NumPy ``uint8``
                arrays of shape ``(height, width, 3)``), or one image.

        Returns:
            One list of faces per image, in order.

        Raises:
            GferError: An image is unreadable, or an array has the wrong shape or dtype.
            OSError: A file could not be read.
            KeyboardInterrupt: Ctrl-C.
        """

class Encoder:
    """A frozen image encoder (CLIP or DINOv2): images in, one feature vector per image out,
    bit for bit what ``gfer extract`` writes for the same images and batch size.

    Args:
        weights: Encoder weights (safetensors, PyTorch ``.pt``/``.bin``/``.pth``, or a
            DINOv2 checkpoint converted by ``gfer convert``).
        backbone: The architecture (``"clip-vit-b32"``, ``"clip-vit-b16"``,
            ``"clip-vit-l14"``, ``"clip-vit-l14-336"``, ``"dinov2"``); inferred from the
            weights when ``None``.
        preprocess: ``"cafe"`` (the authors' 224x224 resize and ImageNet normalisation) or
            ``"clip"`` (CLIP's bicubic resize, centre crop and normalisation).
        device: ``"auto"`` (the first GPU when gfer is built with CUDA and one is
            usable, else the CPU), ``"cpu"``, ``"cuda"`` (the first GPU) or ``"cuda:N"``.
        precision: The arithmetic of the encoder's linear layers, ``"f32"``, ``"bf16"``, ``"int8"``
            or ``"int8-fast"`` (``gfer extract --precision``; layer norm, softmax and the residuals
            stay f32; bf16 and the int8s run on the CPU only).
        batch_size: Images per forward pass (``gfer extract --batch-size``).
        max_pixels: Images with more pixels than this are refused.
        progress: Show a progress bar on a terminal when encoding many images.

    Raises:
        GferError: The weights are unreadable or not the architecture asked for.
        OSError: The file could not be read.
    """

    def __init__(
        self,
        weights: _StrPath,
        backbone: Literal["clip-vit-b32", "clip-vit-b16", "clip-vit-l14", "clip-vit-l14-336", "dinov2"]
        | None = None,
        preprocess: Literal["cafe", "clip"] = "cafe",
        *,
        device: _Device = "auto",
        precision: _Precision = "f32",
        batch_size: int = 16,
        max_pixels: int = 64000000,
        progress: bool = True,
    ) -> None: ...
    def encode(
        self, images: list[_ImageLike] | tuple[_ImageLike, ...] | _ImageLike, /
    ) -> npt.NDArray[np.float32]:
        """The features of images.

        Args:
            images: An image (a path, encoded bytes, a PIL image, or a NumPy ``uint8``
                array of shape ``(height, width, 3)`` in RGB) or a list of them.

        Returns:
            A ``float32`` array of shape ``(N, dim)``, one row per image in order (``N`` is
            1 for one image).

        Raises:
            GferError: An image is unreadable, or an array has the wrong shape or dtype.
            OSError: A file could not be read.
            KeyboardInterrupt: Ctrl-C; the work stopped after its current batch.
        """
    @property
    def dim(self) -> int:
        """Width of the features (e.g. 512 for CLIP ViT-B/32)."""
    @property
    def backbone(self) -> str:
        """The architecture, as ``gfer`` names it (``"clip-vit-b32"``, ``"dinov2-small"``, ...)."""
    @property
    def fingerprint(self) -> str:
        """The fingerprint of the weights that feature files and model bundles record."""
    @property
    def precision(self) -> str:
        """The arithmetic of the encoder's linear layers, ``"f32"``, ``"bf16"``, ``"int8"`` or ``"int8-fast"``."""
    @property
    def input_size(self) -> int:
        """Side of the square input the images are resized to."""
    @property
    def preprocess(self) -> str:
        """The preprocessing, ``"cafe"`` or ``"clip"``."""

def train(
    data: str | None = None,
    out: _StrPath | None = None,
    *,
    resume: _StrPath | None = None,
    cache_only: bool = False,
    shard: str | None = None,
    method: str = "cafe",
    stop_after_steps: int | None = None,
    backbone: str | None = None,
    weights: _StrPath | None = None,
    precision: _Precision = "f32",
    preprocess: Literal["cafe", "clip"] = "cafe",
    mask_init: _StrPath | None = None,
    allow_partial: bool = False,
    epochs: int = 60,
    batch_size: int = 32,
    lr: float = 0.0002,
    weight_decay: float = 0.0001,
    gamma: float = 0.9,
    seed: int = 3407,
    lambda_: float = 1.5,
    beta: float = 5.0,
    paper_div: bool = False,
    group_max_inference: bool = False,
    unrestricted_mask: bool = False,
    max_pixels: int = 64000000,
    fast: bool = False,
    views: int = 8,
    generator: str = "feature",
    mlp_hidden: Sequence[int] | None = None,
    cache: _StrPath = "runs/cache",
    device: _Device = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train CAFE (or a baseline) on one data set, as ``gfer train``: on the train split of
    ``data``, scored on its test split (val when it has none) after every epoch, into the
    run folder ``out`` (``config.json``, ``log.jsonl``, ``checkpoints/last.safetensors``,
    ``best.safetensors``, ``model.safetensors``, ``report.md``). The defaults are the
    authors' recipe; every option is ``gfer train``'s flag of the same name (``lambda_``
    for ``--lambda``).

    Ctrl-C finishes the current step, saves the checkpoint and raises
    ``KeyboardInterrupt``; ``train(resume=out)`` continues to the same weights as an
    uninterrupted run.

    Args:
        data: The data set spec, e.g. ``"rafdb:/data/raf-basic"`` or ``"folder:/data/faces"``.
        out: The run folder to write (must not hold a run yet).
        resume: Continue the run in this folder from its checkpoint, with its own
            configuration (instead of ``data`` and ``out``).
        cache_only: With ``fast=True``: build fast mode's feature cache and stop.
        shard: With ``cache_only``: cache only task K's part of N, ``"K/N"``.
        method: ``"cafe"``, an ablation (``"cafe-no-sep"``, ``"cafe-no-div"``,
            ``"cafe-mask-only"``, ``"cafe-no-sigmoid"``, ``"cafe-no-mask"``) or a baseline
            (``"linear-probe"``, ``"concat"``, ``"resnet"``).
        stop_after_steps: Stop (saving, as on Ctrl-C) after this many steps.
        backbone: Frozen encoder architecture; inferred from the weights when ``None``.
        weights: Frozen encoder weights (not needed by ``method="resnet"``).
        precision: The arithmetic of the frozen encoder's linear layers, ``"f32"``,
            ``"bf16"``, ``"int8"`` or ``"int8-fast"`` (``--precision``; layer norm, softmax and the
            residuals stay f32; bf16 and the int8s run on the CPU only).
        preprocess: ``"cafe"`` or ``"clip"``.
        mask_init: ResNet-18 starting weights (MS-Celeb or torchvision).
        allow_partial: Accept a ``mask_init`` with missing or mis-shaped tensors.
        epochs, batch_size, lr, weight_decay, gamma, seed: The recipe (Adam with L2
            weight decay, ExponentialLR ``gamma`` per epoch).
        lambda_: Weight of the separation loss.
        beta: Weight of the channel-diverse loss.
        paper_div: The paper's diverse-loss normalisation instead of the code's.
        group_max_inference: Classify by the group maxima instead of the FC.
        unrestricted_mask: No ReLU before the sigmoid.
        max_pixels: Images with more pixels than this are skipped.
        fast: Fast mode: train on cached frozen features with an MLP mask generator.
        views: Fast mode: augmented views cached per training image.
        generator: Fast mode: what the mask generator reads, ``"feature"``,
            ``"resnet18"`` or ``"tokens:LAYER"``.
        mlp_hidden: Fast mode: hidden widths of the MLP (``[]`` for one linear layer;
            ``None``: the generator's default).
        cache: Fast mode: the feature cache folder.
        device: ``"auto"`` (the first GPU when gfer is built with CUDA and one is
            usable, else the CPU), ``"cpu"``, ``"cuda"`` (the first GPU) or ``"cuda:N"``.
        progress: Show progress bars on a terminal.

    Returns:
        ``{"run", "finished", "bundle", "best", "log", "metrics", "stopped_at"}``: the run
        folder; whether it trained to the end; the final and best model bundles; the
        epochs this call trained (``log.jsonl`` holds them all); the final model's metrics
        on the held-out split (``None`` without one); and, when ``stop_after_steps``
        stopped it, ``{"epoch", "step"}``. With ``cache_only``: ``{"cache", "counts"}``.

    Raises:
        GferError: A wrong option, data set, image or weights file.
        OSError: A file could not be read or written.
        KeyboardInterrupt: Ctrl-C; the run was saved and can be resumed.
    """

def evaluate(
    model: _StrPath,
    data: str | Sequence[str],
    *,
    weights: _StrPath | None = None,
    precision: _Precision = "f32",
    split: Literal["train", "val", "test"] | None = None,
    batch_size: int = 64,
    max_pixels: int = 64000000,
    device: _Device = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model bundle on data sets, as ``gfer eval --json``: accuracy, per-class
    accuracy (recall), macro-F1 and the confusion matrix on each data set's test split
    (val when it has none).

    Args:
        model: The model bundle written by ``gfer.train``.
        data: A data set spec or a list of them, e.g. ``"rafdb:/data/raf-basic"``.
        weights: The frozen encoder weights the model was trained on.
        precision: The arithmetic of the frozen encoder's linear layers, ``"f32"``,
            ``"bf16"``, ``"int8"`` or ``"int8-fast"`` (``--precision``; layer norm, softmax and the
            residuals stay f32; bf16 and the int8s run on the CPU only).
        split: The split to evaluate, ``"train"``, ``"val"`` or ``"test"`` (default: test,
            or val when there is no test split).
        batch_size: Images per forward pass.
        max_pixels: Images with more pixels than this are skipped.
        device: ``"auto"`` (the first GPU when gfer is built with CUDA and one is
            usable, else the CPU), ``"cpu"``, ``"cuda"`` (the first GPU) or ``"cuda:N"``.
        progress: Show a progress bar on a terminal.

    Returns:
        ``{"model": model, "results": {spec: {"split", "metrics", "skipped"}}}``, the
        object ``gfer eval --json`` prints; ``metrics`` holds ``total``, ``correct``,
        ``accuracy``, ``per_class_accuracy``, ``macro_f1`` and ``confusion``
        (``classes``, ``counts[true][predicted]``).

    Raises:
        GferError: A wrong option, data set or model.
        OSError: A file could not be read.
        KeyboardInterrupt: Ctrl-C; the evaluation stopped after its current batch.
    """

def protocol(
    source: str | Sequence[str] | None = None,
    target: str | Sequence[str] | None = None,
    *,
    method: str | Sequence[str] = "cafe",
    out: _StrPath | None = None,
    cell: str | None = None,
    merge: _StrPath | None = None,
    reference: Literal["paper"] | None = None,
    backbone: str | None = None,
    weights: _StrPath | None = None,
    precision: _Precision = "f32",
    preprocess: Literal["cafe", "clip"] = "cafe",
    mask_init: _StrPath | None = None,
    allow_partial: bool = False,
    epochs: int = 60,
    batch_size: int = 32,
    lr: float = 0.0002,
    weight_decay: float = 0.0001,
    gamma: float = 0.9,
    seed: int = 3407,
    lambda_: float = 1.5,
    beta: float = 5.0,
    paper_div: bool = False,
    group_max_inference: bool = False,
    unrestricted_mask: bool = False,
    max_pixels: int = 64000000,
    fast: bool = False,
    views: int = 8,
    generator: str = "feature",
    mlp_hidden: Sequence[int] | None = None,
    cache: _StrPath = "runs/cache",
    device: _Device = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train on each source, test on every target: the paper's cross-domain table, as
    ``gfer protocol``. For every source and method: trains (runs kept under
    ``out/runs/SOURCE/VARIANT``, so a rerun continues where it stopped), evaluates on every
    target's test split (val when it has none), and writes ``out/table.md``,
    ``table.csv``, ``table.json``, ``per_class.md`` and a metrics file and confusion image
    per cell. The training options are ``gfer.train``'s.

    Args:
        source: Data sets to train on, ``NAME=SPEC`` (e.g. ``"raf=rafdb:/data/raf-basic"``):
            a list, or one str with commas between them.
        target: Data sets to test on, likewise; a target named as the source is seen.
        method: Methods side by side, each ``METHOD[:full|:fast[:GENERATOR]]``
            (``"cafe"``, ``"cafe:full"``, ``"cafe:fast:resnet18"``, ``"linear-probe:fast"``):
            a list or a comma-separated str.
        out: The protocol's folder.
        cell: In a job array: run only task K's part of N, ``"K/N"``.
        merge: Instead of running: write the tables of the protocol in this folder from
            its finished runs.
        reference: ``"paper"`` puts the published numbers (Table 1) beside ours.
        device: ``"auto"`` (the first GPU when gfer is built with CUDA and one is
            usable, else the CPU), ``"cpu"``, ``"cuda"`` (the first GPU) or ``"cuda:N"``.
        progress: Show progress bars on a terminal.

    Returns:
        ``{"out", "complete", "rows", "table", "markdown", "missing", "failed"}``: the
        folder; whether every run has finished; one dict per row (``method``, ``source``,
        the accuracy in [0, 1] on each target, ``mean``, ``unseen_mean``, and with
        ``reference="paper"`` a ``TARGET (paper)`` column of the published %), which
        ``pandas.DataFrame(rows)`` takes as it is; ``table.json``'s content;
        ``table.md``'s; the runs not finished and the failed ones
        (``{"run", "error"}``).

    Raises:
        GferError: A wrong option, data set, image or weights file.
        OSError: A file could not be read or written.
        KeyboardInterrupt: Ctrl-C; the current run was saved, and calling again with the
            same arguments continues.
    """

def find_images(*inputs: _StrPath) -> list[str]:
    """The image files that inputs name, as ``gfer predict`` expands its arguments: files,
    folders (searched recursively for image extensions) and glob patterns
    (``"photos/**/*.jpg"``), sorted and without duplicates.

    Args:
        inputs: Paths and patterns.

    Returns:
        The image paths, sorted.

    Raises:
        GferError: An input names nothing (the message lists each one and why).
    """

def _time_library_encode(encoder: Encoder, images: list[_ImageLike]) -> float:
    """Seconds that `gfer::backbone::features::encode_images` takes on `images` (decoded and
    converted first, untimed), in one forward pass, with the GIL released.
    """

def _time_library_predict_batch(predictor: Predictor, images: list[_ImageLike]) -> float:
    """Seconds that `gfer::predict::Predictor::predict_batch` takes on `images` (decoded and
    converted first, untimed), with the GIL released.
    """
