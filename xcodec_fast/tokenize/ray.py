"""Ray Data adapter: tokenize a ``ray.data.Dataset`` with one model per actor.

    import ray
    from xcodec_fast.tokenize.ray import XcodecTokenizeBatch, tokenize_dataset

    ds = ray.data.read_parquet("s3://bucket/audio/")          # column "audio": bytes / path / struct
    tokens = tokenize_dataset(ds, model="hf-audio/xcodec-hubert-librispeech", concurrency=8, num_gpus=1)
    tokens.write_parquet("s3://bucket/tokens/")

``XcodecTokenizeBatch`` is a plain class (ray is imported only by ``tokenize_dataset``): its
``__call__`` takes a batch ``{column: array or list}`` and returns the other columns plus
``codes`` (one (n_q, T) int16 array per row, empty for failures), ``num_frames``, ``num_samples``,
``duration`` and ``error`` ('' when the row succeeded). Long audio is windowed as in
``xcodec_fast.tokenize`` (``batching``), and every row's codes equal its codes encoded alone.
"""

from __future__ import annotations

import numpy as np

from ..loading import load_model
from .batching import Segment, window_samples
from .engine import BatchEncoder, default_batch_seconds, item_error
from .sources import ItemLoader


class XcodecTokenizeBatch:
    """Stateful ``map_batches`` callable: loads the model once per worker, encodes every batch."""

    def __init__(self, model=None, bandwidth=None, audio_column: str = "audio", device=None, dtype=None,
                 backend=None, batch_seconds: float | None = None, max_seconds: float = 60.0,
                 max_file_seconds: float = 4 * 3600.0, sampling_rate_column: str | None = None):
        import torch

        if device is None and torch.cuda.is_available():
            device = "cuda"
        self.model, self.model_id = load_model(model, device=device, dtype=dtype, backend=backend)
        cfg = self.model.config
        self.audio_column = audio_column
        self.sampling_rate_column = sampling_rate_column
        self.window = window_samples(max_seconds, cfg.sample_rate, cfg.hop_length)
        if batch_seconds is None:
            batch_seconds = default_batch_seconds(self.model.device)
        self.encoder = BatchEncoder(self.model, bandwidth, int(batch_seconds * cfg.sample_rate) // cfg.hop_length * cfg.hop_length,
                                    window_samples=self.window)
        self.loader = ItemLoader(cfg.sample_rate, audio_column, max_file_seconds)
        self.sample_rate = cfg.sample_rate

    def _decode(self, value, sampling_rate, label: str) -> np.ndarray:
        from ..audio import load_audio

        if isinstance(value, dict):
            if value.get("array") is not None:
                return self.loader._from_array(value["array"], value.get("sampling_rate", sampling_rate), label)
            value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
        if isinstance(value, np.ndarray) and value.dtype != object and value.dtype.kind == "f":
            return self.loader._from_array(value, sampling_rate, label)
        if isinstance(value, (bytes, bytearray, memoryview, str)):
            audio, _ = load_audio(value if not isinstance(value, memoryview) else bytes(value), self.sample_rate,
                                  max_seconds=self.loader.max_file_seconds, name=label)
            return audio
        raise ValueError(f"{label}: cannot use a {type(value).__name__} as audio (bytes, path, struct or float array)")

    def __call__(self, batch):
        columns = dict(batch.items()) if hasattr(batch, "items") and not hasattr(batch, "to_dict") else {
            c: list(batch[c]) for c in batch.columns}  # pandas DataFrame batches too
        if self.audio_column not in columns:
            raise KeyError(f"batch has no audio column {self.audio_column!r} (columns: {sorted(columns)})")
        values = list(columns[self.audio_column])
        rates = list(columns[self.sampling_rate_column]) if self.sampling_rate_column else [None] * len(values)
        n = len(values)
        errors, lengths = [""] * n, [0] * n
        segments = []
        for row, (value, rate) in enumerate(zip(values, rates)):
            try:
                audio = self._decode(value, rate, f"row {row}")
            except Exception as exc:  # noqa: BLE001 - a bad row is reported in its 'error' field
                errors[row] = item_error(exc)  # as errors.jsonl has it: no run-to-run memory addresses
                continue
            lengths[row] = len(audio)
            segments.append(Segment(row, 0, audio))
        encoded: dict[int, np.ndarray] = {}
        for group in self.encoder.pack(segments):
            for seg, out in zip(group, self.encoder.encode(group)):
                if isinstance(out, str):
                    errors[seg.key] = errors[seg.key] or out
                else:
                    encoded[seg.key] = out
        n_q = self.encoder.model.config.num_quantizers_for_bandwidth(self.encoder.bandwidth)
        codes = np.empty(n, dtype=object)
        for row in range(n):
            if errors[row]:
                codes[row] = np.zeros((n_q, 0), np.int16)
            else:
                codes[row] = encoded[row]
        out = {k: v for k, v in columns.items() if k != self.audio_column}
        out.update(
            codes=codes,
            num_frames=np.array([c.shape[1] for c in codes], np.int64),
            num_samples=np.array(lengths, np.int64),
            duration=np.array(lengths, np.float64) / self.sample_rate,
            error=np.array(errors, dtype=object),
        )
        return out


def tokenize_dataset(ds, model=None, concurrency: int = 1, num_gpus: float | None = None, batch_size: int = 64, **kwargs):
    """``ds.map_batches`` with one ``XcodecTokenizeBatch`` actor per worker (``concurrency`` actors,
    ``num_gpus`` each: default 1 when CUDA is available here, else 0)."""
    import torch

    if num_gpus is None:
        num_gpus = 1 if torch.cuda.is_available() else 0
    return ds.map_batches(
        XcodecTokenizeBatch,
        fn_constructor_kwargs={"model": model, **kwargs},
        batch_size=batch_size,
        concurrency=concurrency,
        num_gpus=num_gpus,
    )
