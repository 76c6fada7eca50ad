"""The X-Codec model: acoustic (DAC) and semantic (HuBERT/WavLM) branches, RVQ, and the codec API."""

from .codec import XcodecModel
from .outputs import XcodecDecoderOutput, XcodecEncoderOutput, XcodecOutput

__all__ = ["XcodecModel", "XcodecOutput", "XcodecEncoderOutput", "XcodecDecoderOutput"]
