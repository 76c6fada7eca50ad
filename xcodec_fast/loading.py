"""One model loader for the command line and the tokenizer: a hub id or directory, an in-memory
model, or deterministic random weights ('random', 'random-tiny')."""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

import torch

from .config import XcodecConfig, tiny_config
from .dtypes import parse_dtype
from .errors import short_error
from .checkpoints import hub_offline

DEFAULT_MODEL = "hf-audio/xcodec-hubert-librispeech"
RANDOM_MODELS = {"random": XcodecConfig, "random-tiny": tiny_config}


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect, instead of huggingface_hub's minute of retries when offline."""
    if hub_offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_default(**kwargs):
    from .modeling.codec import XcodecModel

    try:  # a cached copy needs no network
        return XcodecModel.from_pretrained(DEFAULT_MODEL, local_files_only=True, **kwargs)
    except OSError:
        if not hub_reachable():
            raise OSError(
                f"{DEFAULT_MODEL} is not in the local Hugging Face cache and the hub cannot be reached; "
                "pass --model with a local checkpoint directory"
            ) from None
        return XcodecModel.from_pretrained(DEFAULT_MODEL, **kwargs)


def check_device(device) -> None:
    """A device this torch can use, or a ValueError that says what to pass instead."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {device!r} is not a device ({short_error(exc, with_type=False)}); "
                         "pass cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this machine's torch has no CUDA device; pass --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu":
        raise ValueError(f"--device {device}: only cpu and cuda devices are supported")


def load_model(spec=None, device=None, dtype=None, backend=None, random_fallback: bool = False,
               fallback_config: XcodecConfig | None = None):
    """(model, model_id). ``spec``: None (the default checkpoint), a hub id or local directory, an
    XcodecModel, or 'random' / 'random-tiny'. With ``random_fallback`` (the demo only), a default
    checkpoint that cannot be had becomes a random-weight model of ``fallback_config``, said loudly."""
    from .modeling.codec import XcodecModel

    check_device(device)
    if isinstance(spec, torch.nn.Module):
        model, model_id = spec, getattr(spec, "name_or_path", None) or "in-memory-model"
    elif spec in RANDOM_MODELS:
        model, model_id = XcodecModel.from_random(RANDOM_MODELS[spec](), seed=0), f"{spec} (seed 0)"
    elif spec is not None:
        fingerprint = _float32_fingerprint(lambda: XcodecModel.from_pretrained(str(spec)), dtype)
        return _keep(XcodecModel.from_pretrained(str(spec), dtype=dtype, device=device, backend=backend),
                     fingerprint), str(spec)
    else:
        try:
            fingerprint = _float32_fingerprint(_load_default, dtype)
            return _keep(_load_default(dtype=dtype, device=device, backend=backend), fingerprint), DEFAULT_MODEL
        except Exception as exc:
            if not random_fallback:
                raise
            print(
                f"note: could not load {DEFAULT_MODEL} ({short_error(exc, limit=200)}).\n"
                "note: using the built-in RANDOM-WEIGHT model (full X-Codec architecture, seed 0): the pipeline "
                "runs end to end, but codes and audio are meaningless. Pass --model ID_OR_DIR for a real checkpoint.",
                file=sys.stderr,
                flush=True,
            )
            model, model_id = XcodecModel.from_random(fallback_config or XcodecConfig(), seed=0), "random-weights"
    if backend is not None:
        model.backend = backend
    if device is not None:
        model = model.to(device)
    if dtype not in (None, "auto") and parse_dtype(dtype) != model.dtype:
        fingerprint = weights_fingerprint(model)  # of the weights as given, not as cast for this run
        model = _keep(model.to(parse_dtype(dtype)), fingerprint)
    return model, model_id


def _float32_fingerprint(load, dtype) -> str | None:
    """The fingerprint of the float32 load when ``dtype`` would cast the checkpoint to half
    precision (cast weights hash differently); None otherwise. Costs one more load, in float32."""
    if dtype in (None, "auto") or parse_dtype(dtype) == torch.float32:
        return None
    reference = load()
    try:
        return weights_fingerprint(reference)
    finally:
        del reference


def _keep(model, fingerprint: str | None):
    if fingerprint is not None:
        # Remembered with the dtype it stands for: a later cast by the caller hashes afresh.
        model._xcodec_weights_sha256 = (model.dtype, fingerprint)
    return model


def weights_fingerprint(model) -> str:
    """sha256 over the model's parameters and persistent buffers (names, dtypes, shapes, bytes):
    the same for the same weights however they were loaded, different for any other weights.
    It does not depend on the run's dtype: floating tensors are hashed as float32, and a model that
    ``load_model`` cast to half precision carries the fingerprint of its weights before the cast
    (so shards tokenized with --dtype bfloat16 detokenize with the float32 model)."""
    import hashlib

    kept = getattr(model, "_xcodec_weights_sha256", None)
    if kept is not None and kept[0] == model.dtype:
        return kept[1]
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            tensor = tensor.float()  # a half-precision checkpoint hashes as its (exact) float32 load
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
