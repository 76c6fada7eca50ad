"""xcodec_fast: the X-Codec neural audio codec, exact and fast."""

from __future__ import annotations

__version__ = "0.1.1"

from .config import AcousticConfig, ConfigError, SemanticConfig, XcodecConfig
from .ops import BackendUnavailableError, current_backend, use_backend

_LAZY = {
    "XcodecModel": ".modeling.codec",
    "XcodecOutput": ".modeling.codec",
    "XcodecEncoderOutput": ".modeling.codec",
    "XcodecDecoderOutput": ".modeling.codec",
    "XcodecFeatureExtractor": ".feature_extraction",
}


def __getattr__(name: str):
    # Model and audio modules import lazily so that `import xcodec_fast` stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'xcodec_fast' has no attribute {name!r}")


__all__ = [
    "__version__",
    "AcousticConfig",
    "ConfigError",
    "SemanticConfig",
    "XcodecConfig",
    "BackendUnavailableError",
    "current_backend",
    "use_backend",
    *_LAZY,
]
