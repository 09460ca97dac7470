"""gfer: generalizable facial expression recognition (CAFE, ECCV 2024), in Rust.

The gfer library itself, called from Python: no subprocess, no JSON to parse. Images are
paths, encoded bytes, PIL images or NumPy ``uint8`` arrays ``(height, width, 3)`` (RGB).

- :class:`Predictor`: find the faces in photos and predict their expressions
  (``gfer predict``), a :class:`Face` per face.
- :class:`Encoder`: frozen encoder features (``gfer extract``), a NumPy array.
- :func:`train`, :func:`evaluate`, :func:`protocol`: ``gfer train``, ``gfer eval`` and
  ``gfer protocol`` with their options as keyword arguments, returning dicts.
- :func:`find_images`: the image files in folders and glob patterns.

Errors are exceptions carrying the library's message: :class:`GferError` (a
``ValueError``) for bad input, ``OSError`` for files, ``KeyboardInterrupt`` after Ctrl-C
(the work stops cleanly: training saves its checkpoint), ``RuntimeError`` for a bug.
Model work runs with the GIL released, so Python threads run alongside it. The library's
log goes to the ``logging`` logger ``gfer``.
"""

from ._gfer import (
    Encoder,
    Face,
    GferError,
    Predictor,
    __version__,
    evaluate,
    find_images,
    protocol,
    train,
)

__all__ = [
    "Encoder",
    "Face",
    "GferError",
    "Predictor",
    "__version__",
    "evaluate",
    "find_images",
    "protocol",
    "train",
]
