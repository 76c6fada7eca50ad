"""transformers' XcodecModel as the oracle: random-weight models built from an xcodec_fast config.

transformers initialises codebooks to zeros (every code would be 0), Snake α to ones and most
biases to zero; :func:`randomize_hf_` replaces all of those so that a comparison can fail.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from xcodec_fast.config import XcodecConfig, tiny_config


# (semantic model_type, feat_extract_norm, do_stable_layer_norm) combinations the tiny tests cover.
SEMANTIC_VARIANTS = [
    ("hubert", "group", False),
    ("hubert", "layer", True),
    ("hubert", "layer", False),
    ("wavlm", "group", False),
    ("wavlm", "layer", True),
]


def tiny_variant(model_type: str, feat_extract_norm: str, stable: bool) -> XcodecConfig:
    return tiny_config(
        model_type,
        semantic_model_config={"feat_extract_norm": feat_extract_norm, "do_stable_layer_norm": stable},
    )


def hf_config(config: XcodecConfig):
    import transformers

    data = config.to_dict()
    data.pop("model_type")
    return transformers.XcodecConfig(**data)


@torch.no_grad()
def randomize_hf_(model: nn.Module, seed: int) -> nn.Module:
    """Random weights at O(1) activation scale for everything X-Codec adds around the semantic model."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=generator) * std

    for part in (model.acoustic_encoder, model.acoustic_decoder, model.encoder_semantic, model.decoder_semantic,
                 model.fc, model.fc1, model.fc2):
        for name, module in part.named_modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
                fan_in = module.weight[0].numel()
                if isinstance(module, nn.ConvTranspose1d):
                    fan_in = module.weight.shape[0] * module.weight.shape[2] / module.stride[0]
                module.weight.copy_(normal(module.weight.shape, 1 / math.sqrt(fan_in)))
                if module.bias is not None:
                    module.bias.copy_(normal(module.bias.shape, 0.05))
            if isinstance(getattr(module, "alpha", None), nn.Parameter):
                module.alpha.copy_(torch.rand(module.alpha.shape, generator=generator) + 0.5)
    # The semantic model keeps transformers' init, but with non-trivial norm affine parameters.
    for module in model.semantic_model.modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            module.weight.copy_(1 + normal(module.weight.shape, 0.1))
            module.bias.copy_(normal(module.bias.shape, 0.1))
    for quantizer in model.quantizer.quantizers:
        quantizer.codebook.embed.copy_(normal(quantizer.codebook.embed.shape, 1.0))
    return model


def make_hf_model(config: XcodecConfig, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    model = transformers.XcodecModel(hf_config(config)).eval()
    return randomize_hf_(model, seed)


def save_hf(model, directory: Path) -> Path:
    model.save_pretrained(str(directory))
    return directory


def random_audio(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 0.1).clamp(-1, 1)
