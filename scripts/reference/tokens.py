"""Intermediate-token references for fast mode's `tokens:LAYER` mask generator.

Committed (default): the mean of the patch tokens (class token left out) of every
block's output (transformers' `hidden_states[layer]`, layer counted from 1) of the tiny
committed encoders on their committed inputs:
  tests/fixtures/clip/tiny_tokens.safetensors    `layer1`, `layer2` [3,64]: tiny_hf.safetensors
                                                  on tiny_io.safetensors' `pixels`
  tests/fixtures/dinov2/tiny_tokens.safetensors  `layer1`, `layer2` [2,64]: tiny_hf.safetensors
                                                  on formula_pixels(2) (224 px)
Reference implementation: transformers' CLIPVisionModelWithProjection and Dinov2Model
with output_hidden_states=True, loaded from the committed weight files.
"""
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from reference import clip as clip_ref
from reference import dinov2 as dinov2_ref

ROOT = Path(__file__).resolve().parents[2]


def mean_patch(hidden):
    return hidden[:, 1:].mean(1).contiguous()


def clip_tokens():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    fixtures = ROOT / "tests/fixtures/clip"
    config = CLIPVisionConfig(hidden_act="quick_gelu", layer_norm_eps=1e-5, **clip_ref.TINY)
    model = CLIPVisionModelWithProjection(config).eval()
    missing, unexpected = model.load_state_dict(load_file(fixtures / "tiny_hf.safetensors"), strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    pixels = load_file(fixtures / "tiny_io.safetensors")["pixels"]
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    expected = load_file(fixtures / "tiny_io.safetensors")["embeds"]
    assert torch.allclose(out.image_embeds, expected, atol=1e-5), "tiny CLIP does not reload"
    layers = {f"layer{i}": mean_patch(out.hidden_states[i]) for i in range(1, clip_ref.TINY["num_hidden_layers"] + 1)}
    save_file(layers, fixtures / "tiny_tokens.safetensors",
              metadata={"input": "tiny_io.safetensors pixels", "reference": "transformers hidden_states[i][:, 1:].mean(1)"})
    print("wrote", (fixtures / "tiny_tokens.safetensors").relative_to(ROOT))


def dinov2_tokens():
    fixtures = ROOT / "tests/fixtures/dinov2"
    model = dinov2_ref.tiny_model()
    hub = load_file(fixtures / "tiny_hf.safetensors")
    state = {}
    for name, tensor in hub.items():
        if not name.startswith("dinov2."):
            continue
        name = name[len("dinov2."):]
        for new, old in dinov2_ref.HUB_NAMES.items():
            name = name.replace(old, new)
        state[name] = tensor.float()
    model.load_state_dict(state, strict=True)
    pixels = torch.from_numpy(dinov2_ref.formula_pixels(2))
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    expected = load_file(fixtures / "tiny_reference.safetensors")["hf_tokens"]
    assert torch.allclose(out.last_hidden_state, expected, atol=1e-4), "tiny DINOv2 does not reload"
    layers = {f"layer{i}": mean_patch(out.hidden_states[i]) for i in range(1, model.config.num_hidden_layers + 1)}
    save_file(layers, fixtures / "tiny_tokens.safetensors",
              metadata={"input": "formula_pixels(2)", "reference": "transformers hidden_states[i][:, 1:].mean(1)"})
    print("wrote", (fixtures / "tiny_tokens.safetensors").relative_to(ROOT))


def main(argv):
    clip_tokens()
    dinov2_tokens()
