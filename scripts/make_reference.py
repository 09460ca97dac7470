#!/usr/bin/env python3
"""Writes the reference fixtures that gfer's parity tests compare against.

Each part lives in scripts/reference/<part>.py and exposes `main(argv)`. Run
`python scripts/make_reference.py PART [ARGS...]`, or `all` for every committed fixture.
Reference implementations: Pillow/torchvision, PyTorch, Hugging Face transformers,
onnxruntime.
"""
import importlib
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def parts():
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE / "reference")]) if not m.name.startswith("_"))


def main():
    if sys.argv[1:] == ["--testtime-parts"]:
        # Parts whose references are too large to commit and are generated before the
        # tests run (they define `TESTTIME = True` and honour `--testtime`).
        for part in parts():
            if getattr(importlib.import_module(f"reference.{part}"), "TESTTIME", False):
                print(part)
        return 0
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        print("parts:", " ".join(parts()))
        return 0
    name, argv = sys.argv[1], sys.argv[2:]
    names = parts() if name == "all" else [name]
    for part in names:
        if part not in parts():
            print(f"unknown part '{part}'; parts: {' '.join(parts())}", file=sys.stderr)
            return 2
        importlib.import_module(f"reference.{part}").main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
