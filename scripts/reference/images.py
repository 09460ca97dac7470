"""Image decoding and preprocessing references (Pillow + torchvision) for tests/image_parity.rs.

Writes into tests/fixtures/images/:
  - a set of small generated test images in every supported format and colour layout
    (grey, grey+alpha, RGBA, palette, 1-bit, 16-bit, JPEG 4:2:0/4:2:2/4:4:4, progressive
    and with restart markers, CMYK JPEG, EXIF-rotated JPEG, GIF, WebP, BMP, TIFF), of odd
    sizes that make the presets scale up, down, and both;
  - for each image NAME.EXT a file NAME.EXT.safetensors holding
      decoded   [H,W,3] u8  the image as RGB u8 after Pillow's decode, EXIF transpose and
                            convert("RGB") (omitted above 10,000 pixels, to keep
                            the fixtures small)
      cafe.u8   [S,S,3] u8  torchvision Resize((S,S)) (PIL bilinear) of `decoded`
      clip.u8   [S,S,3] u8  torchvision Resize(S, bicubic) + CenterCrop(S) of `decoded`
      cafe.f32  [3,S,S] f32 cafe.u8 after ToTensor + ImageNet Normalize   (only when S <= 24)
      clip.f32  [3,S,S] f32 clip.u8 after ToTensor + CLIP Normalize       (only when S <= 24)
    with metadata `image` (the file name) and `size` (S);
  - erasing_stats.json: statistics of torchvision RandomErasing's rectangle sampling.

Two deliberate departures from Pillow, both in `decoded`: 16-bit images become 8-bit by
rounding v * 255 / 65535 (Pillow keeps only the high byte of 16-bit RGB and clips 16-bit
grey to 255, which turns most of such an image white); and all images are converted to
RGB before resizing (gfer decodes to RGB first; CLIP's own transform resizes first, which
differs only for images with transparency).

Usage: python scripts/make_reference.py images
"""
import io
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.numpy import save_file
from torchvision import transforms as T

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "images"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
F32_MAX_SIZE = 24
DECODED_MAX_PIXELS = 10_000


def pattern(h, w, seed, channels=3, noise=6.0):
    """Smooth gradients, a ring, fine stripes and a little noise: content that compresses
    well yet exercises both the antialiasing (stripes) and the rounding (gradients)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r = np.hypot((y - cy) / max(h, 1), (x - cx) / max(w, 1))
    planes = []
    for c in range(channels):
        base = 255 * (x / max(w - 1, 1)) if c % 3 == 0 else 255 * (y / max(h - 1, 1))
        if c % 3 == 2:
            base = 127 + 120 * np.cos(2 * np.pi * (x + 2 * y) / (3 + c))
        ring = 90 * ((r > 0.25) & (r < 0.35))
        stripes = 60 * (((x + c) // 2) % 2)
        plane = 0.6 * base + ring + stripes + rng.normal(0, noise, size=(h, w))
        planes.append(plane)
    return np.clip(np.stack(planes, -1), 0, 255).round().astype(np.uint8)


def png_bytes(array, bit_depth):
    """A minimal PNG writer (Pillow cannot write 16-bit RGB)."""
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = array.astype(dtype).reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def to_u8(array16):
    return np.floor(array16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


def save(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def cases():
    """(file name, file bytes, preset size S, RGB u8 array or None to decode with Pillow)."""
    out = []
    rgb = lambda h, w, s: Image.fromarray(pattern(h, w, s))
    out.append(("rgb_1x1.png", save(rgb(1, 1, 1), "PNG"), 8, None))
    out.append(("rgb_5x3.png", save(rgb(3, 5, 2), "PNG"), 16, None))
    out.append(("rgb_37x91.png", save(rgb(91, 37, 3), "PNG"), 24, None))
    out.append(("rgb_91x37.png", save(rgb(37, 91, 4), "PNG"), 30, None))
    smooth = Image.fromarray(pattern(211, 300, 5, noise=0))
    out.append(("rgb_300x211.png", save(smooth, "PNG", optimize=True), 40, None))
    out.append(("rgb_64x64.png", save(rgb(64, 64, 6), "PNG"), 64, None))
    out.append(("rgb_50x70.png", save(rgb(70, 50, 7), "PNG"), 31, None))
    grey = Image.fromarray(pattern(48, 48, 8, 1)[..., 0], "L")
    out.append(("grey_48x48.png", save(grey, "PNG"), 224, None))
    la = Image.fromarray(pattern(30, 40, 9, 2), "LA")
    out.append(("grey_alpha_40x30.png", save(la, "PNG"), 32, None))
    rgba = Image.fromarray(pattern(70, 50, 10, 4), "RGBA")
    out.append(("rgba_50x70.png", save(rgba, "PNG"), 32, None))
    palette = rgb(33, 45, 11).quantize(colors=32, dither=Image.Dither.NONE)
    out.append(("palette_45x33.png", save(palette, "PNG"), 32, None))
    bits = Image.fromarray(pattern(20, 27, 12, 1)[..., 0] > 128)
    out.append(("bilevel_27x20.png", save(bits, "PNG"), 32, None))

    rng = np.random.default_rng(13)
    y, x = np.mgrid[0:29, 0:33]
    rgb16 = np.stack([x * 2000 + y * 7, y * 2200 + x * 3, (x * y * 67) % 65536], -1)
    rgb16 = (rgb16 + rng.integers(0, 300, rgb16.shape)).clip(0, 65535).astype(np.uint16)
    out.append(("rgb16_33x29.png", png_bytes(rgb16, 16), 32, to_u8(rgb16)))
    grey16 = ((np.mgrid[0:21, 0:19][1] * 3400 + np.mgrid[0:21, 0:19][0] * 97) % 65536).astype(np.uint16)
    out.append(
        ("grey16_19x21.png", png_bytes(grey16, 16), 24, np.repeat(to_u8(grey16)[..., None], 3, -1))
    )

    photo = rgb(100, 100, 14)
    out.append(("rgb_100x100.jpg", save(photo, "JPEG", quality=90), 112, None))
    out.append(("rgb444_60x45.jpg", save(rgb(45, 60, 15), "JPEG", quality=95, subsampling=0), 32, None))
    out.append(("rgb422_61x47.jpg", save(rgb(47, 61, 28), "JPEG", quality=80, subsampling=1), 32, None))
    restart = save(rgb(51, 77, 29), "JPEG", quality=75, optimize=True, restart_marker_blocks=3)
    out.append(("restart_77x51.jpg", restart, 32, None))
    out.append(("progressive_70x52.jpg", save(rgb(52, 70, 16), "JPEG", quality=85, progressive=True), 32, None))
    out.append(("grey_41x47.jpg", save(Image.fromarray(pattern(47, 41, 17, 1)[..., 0], "L"), "JPEG"), 32, None))
    cmyk = Image.fromarray(pattern(48, 64, 18, 4), "CMYK")
    out.append(("cmyk_64x48.jpg", save(cmyk, "JPEG", quality=95), 32, None))
    upright = rgb(40, 60, 19)
    out.append(("exif6_60x40.jpg", save(upright, "JPEG", quality=95, exif=exif_orientation(6)), 32, None))
    out.append(("exif5_60x40.jpg", save(upright, "JPEG", quality=95, exif=exif_orientation(5)), 32, None))
    out.append(("exif3_44x30.png", save(rgb(30, 44, 20), "PNG", exif=exif_orientation(3)), 32, None))

    frames = [rgb(33, 45, 21 + i).quantize(colors=64, dither=Image.Dither.NONE) for i in range(2)]
    out.append(
        ("anim_45x33.gif", save(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0), 32, None)
    )
    out.append(("lossless_41x53.webp", save(rgb(53, 41, 23), "WEBP", lossless=True), 32, None))
    out.append(("lossy_41x53.webp", save(rgb(53, 41, 24), "WEBP", quality=90), 32, None))
    out.append(("rgb_23x17.bmp", save(rgb(17, 23, 25), "BMP"), 32, None))
    out.append(("rgb_70x50.tif", save(rgb(50, 70, 26), "TIFF", compression="tiff_lzw"), 32, None))
    out.append(("rgb_35x36.tif", save(rgb(36, 35, 27), "TIFF"), 20, None))
    return out


def pillow_decode(data):
    image = Image.open(io.BytesIO(data))
    image.seek(0)
    image = ImageOps.exif_transpose(image)
    return np.asarray(image.convert("RGB"))


def preprocess(rgb_u8, size):
    image = Image.fromarray(rgb_u8, "RGB")
    cafe = T.Resize((size, size))(image)  # PIL bilinear, antialiased
    clip = T.CenterCrop(size)(T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)(image))
    tensors = {"cafe.u8": np.asarray(cafe), "clip.u8": np.asarray(clip)}
    if size <= F32_MAX_SIZE:
        for name, img, (mean, std) in (("cafe", cafe, IMAGENET), ("clip", clip, CLIP)):
            tensors[f"{name}.f32"] = T.Normalize(mean, std)(T.ToTensor()(img)).numpy()
    return tensors


def erasing_stats(samples=20000, height=224, width=224):
    """Rectangle statistics of RandomErasing(p=1, scale=(0.02,0.25), ratio=(0.3,3.3))."""
    torch.manual_seed(3407)
    erase = T.RandomErasing(p=1.0, scale=(0.02, 0.25), ratio=(0.3, 3.3), value=0)
    img = torch.zeros(3, height, width)
    hs, ws, tops, lefts, fallbacks = [], [], [], [], 0
    for _ in range(samples):
        i, j, h, w, _ = erase.get_params(img, scale=erase.scale, ratio=erase.ratio, value=[0.0])
        if h == height and w == width:
            fallbacks += 1
            continue
        hs.append(h), ws.append(w), tops.append(i), lefts.append(j)
    hs, ws, tops, lefts = map(np.asarray, (hs, ws, tops, lefts))
    area = hs * ws / (height * width)

    def describe(values):
        q = np.quantile(values, [0.1, 0.5, 0.9])
        return {"mean": float(values.mean()), "std": float(values.std()), "q10": q[0], "q50": q[1], "q90": q[2]}

    return {
        "source": "torchvision.transforms.RandomErasing.get_params, torch.manual_seed(3407)",
        "height": height,
        "width": width,
        "samples": samples,
        "fallback_fraction": fallbacks / samples,
        "h": describe(hs),
        "w": describe(ws),
        "area_fraction": describe(area),
        "top": describe(tops),
        "left": describe(lefts),
    }


def main(argv):
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink()
    for name, data, size, decoded in cases():
        (OUT / name).write_bytes(data)
        if decoded is None:
            decoded = pillow_decode(data)
        tensors = {}
        if decoded.shape[0] * decoded.shape[1] <= DECODED_MAX_PIXELS:
            tensors["decoded"] = np.ascontiguousarray(decoded)
        tensors.update({k: np.ascontiguousarray(v) for k, v in preprocess(decoded, size).items()})
        save_file(tensors, str(OUT / f"{name}.safetensors"), metadata={"image": name, "size": str(size)})
        h, w = decoded.shape[:2]
        short, long = min(h, w), max(h, w)
        crop_slack = int(size * long / short) - size
        print(f"{name:28s} {w}x{h} -> {size}  clip crop slack {crop_slack}")
    stats = erasing_stats()
    (OUT / "erasing_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KiB, to {OUT}")
