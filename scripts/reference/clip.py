"""Reference CLIP image embeddings for gfer's parity tests (tests/clip_parity.rs).

Reference implementation: Hugging Face `transformers` CLIPVisionModelWithProjection,
whose `image_embeds` is CLIP's `encode_image` (ln_post(CLS) @ proj, not normalised).
Every parameter is drawn at random (seeded), layer norms included, so that no weight
sits at an identity value that would hide a loading bug.

  python scripts/make_reference.py clip             committed tiny fixtures -> tests/fixtures/clip/
  python scripts/make_reference.py clip --testtime  full-size ViT-B/32 -> assets/reference/clip/

The tiny fixtures hold one random tower in every layout gfer reads:
  tiny_hf.safetensors        Hugging Face names (vision_model.*, visual_projection.weight)
  tiny_openai.safetensors    OpenAI/open_clip names (visual.*, fused attn.in_proj_weight)
  tiny_openai.pt             the same state dict written by torch.save (PyTorch zip)
  tiny_openai_jit.pt         a TorchScript archive, like the clip package's ViT-B-32.pt
  tiny_io.safetensors        `pixels` [3,3,32,32] and `embeds` [3,32] (the reference)
The OpenAI-layout copy is checked here against a plain PyTorch re-implementation of
OpenAI's VisionTransformer, so the name conversion itself is proven before any Rust runs.
"""
TESTTIME = True  # has references too large to commit, made by --testtime before the tests
import argparse
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

ROOT = Path(__file__).resolve().parents[2]

# heads = 4 gives a head width of 16: the tiny tower splits heads like the real ones.
TINY = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=128, projection_dim=32)
# CLIPVisionConfig's defaults are OpenAI's ViT-B/32; spelled out for the reader.
VIT_B32 = dict(image_size=224, patch_size=32, hidden_size=768, num_hidden_layers=12,
               num_attention_heads=12, intermediate_size=3072, projection_dim=512)


def random_tower(shape, seed):
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_act="quick_gelu", layer_norm_eps=1e-5, **shape)
    model = CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model


def hf_state(model):
    return {k: v.contiguous() for k, v in model.state_dict().items() if k != "vision_model.embeddings.position_ids"}


def to_openai(hf, layers):
    """HF CLIP vision names -> OpenAI `visual.*` names (q,k,v fused, projection transposed)."""
    v = "vision_model."
    out = {
        "visual.conv1.weight": hf[v + "embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf[v + "embeddings.class_embedding"],
        "visual.positional_embedding": hf[v + "embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf[v + "pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf[v + "pre_layrnorm.bias"],
        "visual.ln_post.weight": hf[v + "post_layernorm.weight"],
        "visual.ln_post.bias": hf[v + "post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].t().contiguous(),
    }
    for i in range(layers):
        src, dst = f"{v}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        att = src + "self_attn."
        out[dst + "attn.in_proj_weight"] = torch.cat([hf[att + f"{p}_proj.weight"] for p in "qkv"])
        out[dst + "attn.in_proj_bias"] = torch.cat([hf[att + f"{p}_proj.bias"] for p in "qkv"])
        pairs = [("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]
        for o, h in pairs:
            for w in ("weight", "bias"):
                out[f"{dst}{o}.{w}"] = hf[f"{src}{h}.{w}"]
    return {k: t.contiguous() for k, t in out.items()}


class QuickGELU(torch.nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(torch.nn.Module):
    """OpenAI clip/model.py's block: nn.MultiheadAttention with fused in_proj."""

    def __init__(self, width, heads, mlp):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(width, heads)
        self.ln_1 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential()
        self.mlp.add_module("c_fc", torch.nn.Linear(width, mlp))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", torch.nn.Linear(mlp, width))
        self.ln_2 = torch.nn.LayerNorm(width)

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(torch.nn.Module):
    def __init__(self, width, layers, heads, mlp):
        super().__init__()
        self.resblocks = torch.nn.Sequential(*[ResidualAttentionBlock(width, heads, mlp) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(torch.nn.Module):
    """OpenAI clip/model.py's VisionTransformer (sequence-first, as there)."""

    def __init__(self, image, patch, width, layers, heads, mlp, out):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = torch.nn.Parameter(torch.zeros(width))
        self.positional_embedding = torch.nn.Parameter(torch.zeros((image // patch) ** 2 + 1, width))
        self.ln_pre = torch.nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp)
        self.ln_post = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(torch.zeros(width, out))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(torch.nn.Module):
    """Only the image tower: state-dict names `visual.*`, as in OpenAI's checkpoints."""

    def __init__(self, **kw):
        super().__init__()
        self.visual = VisionTransformer(**kw)

    def forward(self, image):
        return self.visual(image)


def openai_clip(shape, state):
    model = CLIP(image=shape["image_size"], patch=shape["patch_size"], width=shape["hidden_size"],
                 layers=shape["num_hidden_layers"], heads=shape["num_attention_heads"],
                 mlp=shape["intermediate_size"], out=shape["projection_dim"]).eval()
    model.load_state_dict(state, strict=True)
    return model


def atomic(path, write):
    """Writes through a temporary folder beside `path`, keeping the final file name (torch
    archives record it as their top folder), then renames into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-") as tmp:
        staged = Path(tmp) / path.name
        write(str(staged))
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    print("wrote", path.relative_to(ROOT))


def reference(shape, seed, batch):
    model = random_tower(shape, seed)
    torch.manual_seed(seed + 1)
    pixels = torch.randn(batch, 3, shape["image_size"], shape["image_size"])
    with torch.no_grad():
        embeds = model(pixel_values=pixels).image_embeds
    return model, pixels, embeds


def check_openai_layout(shape, openai, pixels, embeds):
    with torch.no_grad():
        again = openai_clip(shape, openai)(pixels)
    err = ((again - embeds).abs().max() / embeds.abs().max()).item()
    assert err < 1e-5, f"OpenAI-layout conversion disagrees with transformers: {err}"


def write_tiny():
    out = ROOT / "tests/fixtures/clip"
    model, pixels, embeds = reference(TINY, seed=20240901, batch=3)
    hf = hf_state(model)
    openai = to_openai(hf, TINY["num_hidden_layers"])
    check_openai_layout(TINY, openai, pixels, embeds)
    atomic(out / "tiny_hf.safetensors", lambda p: save_file(hf, p))
    atomic(out / "tiny_openai.safetensors", lambda p: save_file(openai, p))
    atomic(out / "tiny_openai.pt", lambda p: torch.save(openai, p))
    traced = torch.jit.trace(openai_clip(TINY, openai), pixels[:1])
    atomic(out / "tiny_openai_jit.pt", lambda p: torch.jit.save(traced, p))
    atomic(out / "tiny_io.safetensors", lambda p: save_file({"pixels": pixels, "embeds": embeds}, p))


def write_testtime():
    out = ROOT / "assets/reference/clip"
    model, pixels, embeds = reference(VIT_B32, seed=7, batch=2)
    hf = hf_state(model)
    openai = to_openai(hf, VIT_B32["num_hidden_layers"])
    check_openai_layout(VIT_B32, openai, pixels, embeds)
    atomic(out / "vit_b32_hf.safetensors", lambda p: save_file(hf, p))
    atomic(out / "vit_b32_openai.pt", lambda p: torch.save(openai, p))
    atomic(out / "vit_b32_io.safetensors", lambda p: save_file({"pixels": pixels, "embeds": embeds}, p))


def main(argv):
    parser = argparse.ArgumentParser(prog="make_reference.py clip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testtime", action="store_true",
                        help="write the full-size ViT-B/32 reference into assets/reference/clip/")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.testtime:
        write_testtime()
    else:
        write_tiny()
