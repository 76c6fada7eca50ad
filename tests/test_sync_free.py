"""After the entry checks, encode and decode never bring a device value to the host.

On a GPU that is checked with torch.cuda.set_sync_debug_mode("error"). Without one, the same core
runs on the meta device: meta tensors have no values, so any .item(), .tolist(), bool() or
data-dependent shape on a device tensor raises there, exactly where a CUDA run would sync. Host
lengths (CPU tensors) stay legal, as they are on a GPU.
"""

import pytest
import torch

from xcodec_fast import XcodecModel
from xcodec_fast.config import tiny_config


def _core_calls(model: XcodecModel, device: str):
    """encode / decode's work after their entry checks, unpadded, padded, fixed-shape, windowed and chunked."""
    g = torch.Generator().manual_seed(0)
    n = 4 * model.config.hop_length * 7 + 5
    audio = (torch.randn(2, 1, n, generator=g) * 0.1).to(device)
    host_lengths = torch.tensor([n, n - 3 * model.config.hop_length - 11])
    nq = 2
    with model.running():
        codes = model.quantize(model.encode_latent(audio), nq)
        model.encode_windows(audio, nq, chunk_frames=3, context_frames=2)
        padded_codes, code_lengths = model._encode_padded(audio, host_lengths, nq)
        # The fixed-shape encode (one CUDA graph per batch shape) takes its lengths on the device.
        lengths, acoustic_padded = model.fixed_shape_lengths(host_lengths, n)
        model.encode_fixed_shape(audio, lengths.to(device), acoustic_padded.to(device), nq)
        model._decode_windows(codes, None, chunk=codes.shape[-1])
        model._decode_windows(codes, None, chunk=5)
        model._decode_windows(codes, code_lengths.cpu() if device != "meta" else torch.tensor([7, 4]), chunk=3)
        model.decode_latent(model.dequantize(codes))
    return codes


def test_the_core_makes_no_device_to_host_transfer():
    model = XcodecModel.from_random(tiny_config(), seed=0).to("meta")
    with torch.inference_mode():
        codes = _core_calls(model, "meta")
    assert codes.device.type == "meta" and codes.shape[:2] == (2, 2)


def test_the_meta_check_catches_a_sync():
    """The check is not vacuous: a device value brought to the host fails on meta."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.ones(3, device="meta").sum().item()
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool((torch.ones(3, device="meta") > 0).all())


@pytest.mark.gpu
def test_encode_and_decode_do_not_sync_on_cuda():
    model = XcodecModel.from_random(tiny_config(), seed=0).to("cuda")
    _core_calls(model, "cuda")  # warm up: Triton compiles, cuDNN picks algorithms
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _core_calls(model, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
