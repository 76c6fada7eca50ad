"""Winograd error study: how far each tile size F(m, 7) of the native residual unit lands from a
float64 reference, per real site and through a whole decode and encode, next to the direct
implementations' own fp32 error. ``python -m xcodec_fast.benchmark.winograd`` writes
``bench/results/winograd-error-<machine>.json``; the tests hold the kernel to the bound chosen here.

Figures: ``max_err`` is max |out - ref| / max |ref| (the "of scale" of the decode bound, 1e-5),
``rms_err`` the same in root-mean-square. Decode: the same random-weight full-size model, codes
and clip for every implementation; encode: codes equal to eager fp32 per quantizer stage.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .. import ops
from ..config import XcodecConfig
from ..ops import eager, tuning, winograd
from ..sites import model_sites
from . import cases
from .machine import machine_info
from .suite import DEFAULT_RESULTS

DIRECT = ("eager", "gemm", "onednn")


def _errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = out.double() - ref
    scale = ref.abs().max().item() or 1.0
    return {"max_err": diff.abs().max().item() / scale,
            "rms_err": diff.pow(2).mean().sqrt().item() / (ref.pow(2).mean().sqrt().item() or 1.0)}


def implementations() -> list[str]:
    return [*DIRECT, *(f"winograd{m}" for m in winograd.TILE_SIZES)]


def site_errors(seconds: float, seed: int = 0) -> list[dict]:
    """Every residual-unit site of a ``seconds`` clip: each implementation's error vs float64."""
    config = XcodecConfig()
    rows = []
    for site in model_sites(config, int(seconds * config.sample_rate)):
        if site.op != "residual_unit":
            continue
        gen = torch.Generator().manual_seed(seed)
        params = cases.make_params(site, gen)
        inputs = cases.make_input(site, 1, gen)
        exact = {k: v.double() for k, v in {**params, **inputs}.items()}
        ref = eager.residual_unit(exact["x"], exact["alpha1"], exact["weight1"], exact["bias1"],
                                  site.params["dilation"], exact["alpha2"], exact["weight2"], exact["bias2"])
        row = {"site": site.where, **site.params}
        for name in implementations():
            with tuning.forced("residual_unit", name), ops.use_backend("eager" if name == "eager" else "native"):
                row[name] = _errors(cases.call(site, params, inputs), ref)
        rows.append(row)
    return rows


def model_errors(seconds: float, seed: int = 0) -> dict:
    """A full-size random model (transformers', loaded into xcodec_fast): decode error vs
    transformers' float64 decode, and encode codes equal to xcodec_fast eager fp32, with every
    residual unit forced to one implementation."""
    import tempfile

    from transformers.utils import logging as hf_logging

    from ..modeling.codec import XcodecModel
    from .e2e import build_reference, make_audio

    config = XcodecConfig()
    samples = int(seconds * config.sample_rate)
    audio = make_audio(1, samples, config.sample_rate, torch.Generator().manual_seed(seed))
    reference = build_reference(config, seed, torch.device("cpu"), audio)
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="xcodec-winograd-") as folder:
        reference.save_pretrained(folder)
        model = XcodecModel.from_pretrained(folder, backend="eager").eval()
    result: dict = {"clip_seconds": seconds, "decode": {}, "encode_codes_equal": {}}
    with torch.no_grad():
        codes = model.encode(audio, return_dict=False)
        exact = reference.double().decode(codes).audio_values
        for name in implementations():
            model.backend = "eager" if name == "eager" else "native"
            with tuning.forced("residual_unit", name):
                result["decode"][name] = _errors(model.decode(codes, return_dict=False), exact)
                got = model.encode(audio, return_dict=False)
            equal = (got == codes).double()
            result["encode_codes_equal"][name] = {"all": round(equal.mean().item(), 4),
                                                   "per_stage": [round(v, 4) for v in equal.mean(dim=(0, 2)).tolist()]}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--site-seconds", type=float, default=1.0, help="clip length for the per-site figures")
    p.add_argument("--model-seconds", type=float, default=2.0, help="clip length for decode / encode")
    p.add_argument("-o", "--output", type=Path, default=None)
    args = p.parse_args(argv)
    started = time.time()
    machine = machine_info(torch.device("cpu"))
    doc = {"schema": "xcodec-fast-winograd-error/1", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine, "torch": torch.__version__, "bound": 1e-5,
           "settings": {"site_seconds": args.site_seconds, "model_seconds": args.model_seconds},
           "sites": site_errors(args.site_seconds), "model": model_errors(args.model_seconds)}
    doc["seconds"] = round(time.time() - started, 1)
    out = args.output or DEFAULT_RESULTS / f"winograd-error-{machine['id']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for row in doc["sites"]:
        figures = "  ".join(f"{n} {row[n]['max_err']:.2e}" for n in implementations())
        print(f"{row['site']:<12} C{row['channels']:<4} d{row['dilation']} T{row['frames']:<7} {figures}")
    for name, e in doc["model"]["decode"].items():
        codes = doc["model"]["encode_codes_equal"][name]
        print(f"decode {name:<10} max {e['max_err']:.2e} rms {e['rms_err']:.2e}   encode codes equal "
              f"{codes['all']:.4f} per stage {codes['per_stage']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
