"""The X-Codec feature extractor: raw audio -> ``input_values`` and ``padding_mask``.

``XcodecFeatureExtractor`` behaves like transformers' ``DacFeatureExtractor`` as the X-Codec
checkpoints configure it (``hop_length`` 320, 16 kHz, mono): inputs are right-padded with zeros to
the longest item rounded up to a multiple of ``hop_length``, and ``padding_mask`` marks the real
samples. It reads and writes the same ``preprocessor_config.json``. Audio files: ``xcodec_fast.audio``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PREPROCESSOR_CONFIG = "preprocessor_config.json"


class BatchFeature(dict):
    """The feature extractor's result: a dict with attribute access and ``.to(device)``, like
    transformers' ``BatchFeature``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchFeature has no field {name!r}; it has {list(self)}") from None

    def to(self, *args, **kwargs) -> "BatchFeature":
        import torch

        return BatchFeature({k: (v.to(*args, **kwargs) if isinstance(v, torch.Tensor) else v) for k, v in self.items()})

    def convert_to_tensors(self, tensor_type: str | None) -> "BatchFeature":
        if tensor_type is None:
            return self
        tensor_type = str(getattr(tensor_type, "value", tensor_type))
        if tensor_type not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {tensor_type!r}")
        for key, value in list(self.items()):
            if isinstance(value, list):
                shapes = {np.shape(v) for v in value}
                if len(shapes) > 1:
                    raise ValueError(
                        f"cannot make one tensor of {key!r}: items have different shapes {sorted(shapes)}; "
                        "pass padding=True (or 'longest'/'max_length') to pad them to one length"
                    )
                value = np.stack(value) if value else np.zeros((0,), dtype=np.float32)
            if tensor_type == "pt":
                import torch

                value = torch.from_numpy(np.ascontiguousarray(value))
            self[key] = value
        return self


_PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")


class XcodecFeatureExtractor:
    """Raw audio -> ``input_values`` (B, 1, N) float32 and ``padding_mask`` (B, N).

    Args:
        feature_size: channels the model takes; X-Codec takes 1 (mono).
        sampling_rate: the rate the model was trained at (16000).
        padding_value: the value padded samples get.
        hop_length: padded lengths are rounded up to a multiple of this (the model's frame hop).
    """

    model_input_names = ["input_values", "n_quantizers"]
    # What transformers writes for this extractor, so that a saved config loads there too.
    feature_extractor_type = "DacFeatureExtractor"

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        hop_length: int = 320,
        padding_side: str = "right",
        return_attention_mask: bool = True,
        **kwargs,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if int(hop_length) <= 0:
            raise ValueError(f"hop_length must be a positive integer, got {hop_length!r}")
        self.feature_size = int(feature_size)
        self.sampling_rate = int(sampling_rate)
        self.padding_value = padding_value
        self.hop_length = int(hop_length)
        self.padding_side = padding_side
        self.return_attention_mask = bool(return_attention_mask)
        kwargs.pop("feature_extractor_type", None)
        # Keys we do not use (e.g. processor_class) are kept so that save_pretrained round-trips.
        self.extra = kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_dict(), sort_keys=True)}"

    # ---- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "feature_extractor_type": self.feature_extractor_type,
            "feature_size": self.feature_size,
            "hop_length": self.hop_length,
            "padding_side": self.padding_side,
            "padding_value": self.padding_value,
            "return_attention_mask": self.return_attention_mask,
            "sampling_rate": self.sampling_rate,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "XcodecFeatureExtractor":
        return cls(**data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"save_pretrained needs a directory; {directory} is a file")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PREPROCESSOR_CONFIG
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")
        return str(path)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **overrides,
    ) -> "XcodecFeatureExtractor":
        """Read ``preprocessor_config.json`` from a local directory (offline) or a hub repository."""
        source = Path(pretrained_model_name_or_path)
        if source.is_dir():
            path = source / PREPROCESSOR_CONFIG
            if not path.is_file():
                raise FileNotFoundError(f"{source} has no {PREPROCESSOR_CONFIG}")
        elif source.is_file():
            path = source
        else:
            from huggingface_hub import hf_hub_download

            path = Path(
                hf_hub_download(
                    str(pretrained_model_name_or_path),
                    PREPROCESSOR_CONFIG,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=local_files_only,
                )
            )
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        kind = data.get("feature_extractor_type", cls.feature_extractor_type)
        if kind not in (cls.feature_extractor_type, cls.__name__):
            raise ValueError(
                f"{path} describes a {kind}; X-Codec checkpoints use {cls.feature_extractor_type}"
            )
        return cls.from_dict({**data, **overrides})

    # ---- featurisation --------------------------------------------------------------------
    def __call__(
        self,
        raw_audio,
        padding: bool | str | None = None,
        truncation: bool | None = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        sampling_rate: int | None = None,
    ) -> BatchFeature:
        """Featurise one clip (1-D array or list of floats) or a batch (list of them).

        ``padding``: True/'longest' (default) pads to the longest item, 'max_length' to
        ``max_length``, False/'do_not_pad' returns the items unpadded (and no ``padding_mask``).
        Padded lengths are rounded up to a multiple of ``hop_length``. ``truncation`` (with
        ``max_length``) cuts longer items. ``return_tensors``: 'pt', 'np' or None (lists of arrays).
        """
        if sampling_rate is not None:
            if sampling_rate != self.sampling_rate:
                raise ValueError(
                    f"The model corresponding to this feature extractor: {self} was trained using a sampling rate of"
                    f" {self.sampling_rate}. Please make sure that the provided audio input was sampled with"
                    f" {self.sampling_rate} and not {sampling_rate}."
                )
        else:
            logger.warning(
                "It is strongly recommended to pass the `sampling_rate` argument to %s(). Failing to do so can "
                "result in silent errors that might be hard to debug.",
                type(self).__name__,
            )
        if padding and truncation:
            raise ValueError("Both padding and truncation were set. Make sure you only set one.")
        if padding is None:
            padding = True
        strategy = self._padding_strategy(padding, max_length)
        if truncation and max_length is None:
            raise ValueError("When setting truncation=True, make sure that max_length is defined.")

        examples = self._as_examples(raw_audio)
        for idx, example in enumerate(examples):
            if example.ndim > 2:
                raise ValueError(f"Expected input shape (channels, length) but got shape {example.shape} (item {idx})")
            if self.feature_size == 1 and example.ndim != 1:
                raise ValueError(
                    f"Expected mono audio but item {idx} has shape {example.T.shape} (channels, samples); "
                    "downmix it first, e.g. with xcodec_fast.audio.downmix"
                )
            if self.feature_size == 2:
                raise ValueError("Stereo audio isn't supported for now")

        target = None if max_length is None else self._round_up(max_length)
        if truncation:
            examples = [e[:target] for e in examples]
        if strategy == "longest":
            target = self._round_up(max(len(e) for e in examples))
        pad = strategy != "do_not_pad"

        values, masks = [], []
        for example in examples:
            mask = np.ones(len(example), dtype=np.int32)
            missing = (target - len(example)) if pad else 0
            if missing > 0:
                widths = (0, missing) if self.padding_side == "right" else (missing, 0)
                example = np.pad(example, widths, constant_values=self.padding_value)
                mask = np.pad(mask, widths)
            values.append(example.astype(np.float32, copy=False))
            masks.append(mask)

        out = BatchFeature()
        if pad:
            # Padded items share one length: one (B, N) block, then a channel axis.
            out["padding_mask"] = np.stack(masks)
            out["input_values"] = np.stack(values)[:, None, :]
            if return_tensors is None:  # as transformers: a list of (1, N) arrays and a (B, N) mask
                out["input_values"] = list(out["input_values"])
        else:
            out["input_values"] = [v[None, :] for v in values]
        return out.convert_to_tensors(return_tensors)

    def _round_up(self, length: int) -> int:
        return -(-int(length) // self.hop_length) * self.hop_length

    @staticmethod
    def _padding_strategy(padding, max_length) -> str:
        padding = getattr(padding, "value", padding)  # transformers' PaddingStrategy enum
        if padding is True:
            strategy = "longest"
        elif padding is False:
            strategy = "do_not_pad"
        elif padding in _PADDING_STRATEGIES:
            strategy = padding
        else:
            raise ValueError(f"padding must be True, False or one of {_PADDING_STRATEGIES}, got {padding!r}")
        if strategy == "max_length" and max_length is None:
            raise ValueError("When setting padding='max_length', make sure that max_length is defined")
        return strategy

    @staticmethod
    def _as_examples(raw_audio) -> list[np.ndarray]:
        try:
            import torch

            def to_numpy(x):
                return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        except ImportError:  # pragma: no cover - torch is a dependency

            def to_numpy(x):
                return x

        raw_audio = to_numpy(raw_audio)
        if isinstance(raw_audio, (list, tuple)):
            if len(raw_audio) == 0:
                raise ValueError("raw_audio is an empty list: pass at least one clip")
            first = to_numpy(raw_audio[0])
            batched = isinstance(first, (np.ndarray, list, tuple))
        else:
            batched = False
        # Transformers' layout: (channels, samples) in, (samples, channels) inside.
        items = [to_numpy(a) for a in raw_audio] if batched else [raw_audio]
        examples = []
        for idx, item in enumerate(items):
            array = np.asarray(item)
            if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
                raise ValueError(f"item {idx} of raw_audio is not numeric audio (dtype {array.dtype})")
            if array.ndim == 0:
                raise ValueError(f"item {idx} of raw_audio is a scalar; expected a 1-D array of samples")
            if array.shape[-1] == 0 if array.ndim == 1 else array.size == 0:
                raise ValueError(f"item {idx} of raw_audio is empty (shape {array.shape})")
            examples.append(array.astype(np.float32, copy=False).T)
        return examples
