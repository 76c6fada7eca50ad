"""End-to-end encode/decode: xcodec_fast per backend against transformers' XcodecModel (eager and
torch.compile), same random weights, same inputs, same process."""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from typing import Callable

import torch

from ..config import XcodecConfig
from ..errors import short_error
from .machine import math_modes
from .timing import Policy, measure_once, peak_memory, summarize, synchronize


def build_reference(config: XcodecConfig, seed: int, device: torch.device, calibration: torch.Tensor):
    """transformers' model with random weights at realistic scales.

    transformers initialises codebooks to zero and the DAC convolutions with std 0.02, which makes
    every frame pick the same code and the comparison vacuous. So: PyTorch's default conv init,
    then codebooks drawn at the scale of the embeddings the quantizer actually receives."""
    from transformers import XcodecConfig as HFConfig
    from transformers import XcodecModel as HFModel

    data = config.to_dict()
    data.pop("model_type", None)
    torch.manual_seed(seed)
    model = HFModel(HFConfig(**data)).eval().to(device)
    with torch.no_grad():
        for part in (model.acoustic_encoder, model.acoustic_decoder):
            for module in part.modules():
                if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                    module.reset_parameters()
        captured = {}
        hook = model.fc.register_forward_hook(lambda _m, _i, out: captured.setdefault("embeddings", out))
        model.encode(calibration.to(device))
        hook.remove()
        scale = captured["embeddings"].reshape(-1, config.codebook_dim).std(0).clamp_min(1e-6)
        gen = torch.Generator().manual_seed(seed + 1)
        for stage, quantizer in enumerate(model.quantizer.quantizers):
            book = torch.randn(config.codebook_size, config.codebook_dim, generator=gen).to(device) * scale * 0.5**stage
            quantizer.codebook.embed.copy_(book)
            quantizer.codebook.embed_avg.copy_(book)
    return model


def make_audio(batch: int, num_samples: int, sample_rate: int, gen: torch.Generator) -> torch.Tensor:
    """Speech-like test signal: a few random partials with a slow envelope, plus a little noise."""
    t = torch.arange(num_samples) / sample_rate
    audio = torch.zeros(batch, 1, num_samples)
    for b in range(batch):
        f0 = 100 + 150 * torch.rand((), generator=gen)
        for harmonic in range(1, 6):
            phase = 2 * math.pi * torch.rand((), generator=gen)
            audio[b, 0] += torch.sin(2 * math.pi * f0 * harmonic * t + phase) / harmonic
        envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * (1 + 3 * torch.rand((), generator=gen)) * t)
        audio[b, 0] = 0.2 * audio[b, 0] * envelope + 0.01 * torch.randn(num_samples, generator=gen)
    return audio


def compare_audio(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Error of decoded audio against a reference: max abs, max relative to the reference's peak,
    and the SNR in dB (inf where equal)."""
    out, ref = out.double(), ref.double()
    length = min(out.shape[-1], ref.shape[-1])
    out, ref = out[..., :length], ref[..., :length]
    diff = (out - ref).abs()
    scale = float(ref.abs().max()) or 1.0
    noise = float(diff.square().sum())
    snr = math.inf if noise == 0 else 10 * math.log10(float(ref.square().sum()) / noise)
    return {"max_abs_err": float(diff.max()), "max_rel_err": float(diff.max()) / scale, "snr_db": snr}


def compare_codes(codes: torch.Tensor, ref: torch.Tensor) -> dict:
    """Agreement of codes (batch, quantizers, frames) with reference codes: the fraction equal
    overall and per quantizer stage (stage 1 first; later stages quantize what earlier ones left,
    so one differing code changes the residual that every later stage sees)."""
    if codes.shape != ref.shape:
        return {"code_match": 0.0, "code_match_per_stage": [], "shape_mismatch": [list(codes.shape), list(ref.shape)]}
    equal = (codes.to(ref.device) == ref).double()
    return {"code_match": float(equal.mean()), "code_match_per_stage": [float(v) for v in equal.mean(dim=(0, 2))]}


def run_end_to_end(
    config: XcodecConfig,
    config_name: str,
    seconds: float,
    batches: list[int],
    backends: dict,
    device: torch.device,
    policy: Policy,
    compile_reference: bool,
    seed: int = 0,
    compile_skip_reason: str = "not requested",
    log: Callable[[str], None] = print,
    cpu_malloc: str | None = None,
    onnx_runtime: bool = True,
) -> dict:
    """cpu_malloc: the malloc mode in effect (xcodec_fast.cpu_malloc), recorded on every row.
    onnx_runtime: also time the ONNX export of the same weights in ONNX Runtime (CPU only)."""
    with tempfile.TemporaryDirectory(prefix="xcodec-bench-onnx-") as folders:
        return _run_end_to_end(config, config_name, seconds, batches, backends, device, policy, compile_reference,
                               seed, compile_skip_reason, log, cpu_malloc, onnx_runtime, folders)


def _run_end_to_end(config, config_name, seconds, batches, backends, device, policy, compile_reference, seed,
                    compile_skip_reason, log, cpu_malloc, onnx_runtime, folders) -> dict:
    num_samples = int(round(seconds * config.sample_rate))
    section = {
        "config": config_name,
        "clip_seconds": num_samples / config.sample_rate,
        "sample_rate": config.sample_rate,
        "dtype": "float32",
        "results": [],
        "skipped": [],
    }
    gen = torch.Generator().manual_seed(seed)
    calibration = make_audio(1, num_samples, config.sample_rate, gen)
    try:
        reference = build_reference(config, seed, device, calibration)
    except Exception as exc:
        section["skipped"].append({"impl": "transformers", "reason": short_error(exc)})
        log(f"end-to-end skipped: cannot build transformers' XcodecModel: {exc}")
        return section

    impls: dict[str, dict] = {"transformers eager": {"encode": reference.encode, "decode": reference.decode}}
    if compile_reference:
        # transformers' lru_cache'd helpers make Dynamo warn once per call site; the graph is right.
        warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
        impls["transformers compile"] = {
            "encode": torch.compile(reference.encode, dynamic=False),
            "decode": torch.compile(reference.decode, dynamic=False),
        }
    else:
        section["skipped"].append({"impl": "transformers compile", "reason": compile_skip_reason})

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's shard bar would interleave with the report
    with tempfile.TemporaryDirectory(prefix="xcodec-bench-") as folder:
        reference.cpu().save_pretrained(folder)  # saved from host memory, whatever the device
        reference.to(device)
        try:
            from ..modeling.codec import XcodecModel

            ours = XcodecModel.from_pretrained(folder, device=device).eval()
        except Exception as exc:
            ours = None
            section["skipped"].append(
                {"impl": "xcodec_fast", "reason": "cannot load: " + short_error(exc, limit=300 - len("cannot load: "))}
            )
            log(f"xcodec_fast skipped: {exc}")
    if ours is not None:
        for name, status in backends.items():
            if not status["available"]:
                section["skipped"].append({"impl": f"xcodec_fast {name}", "reason": status["reason"]})
                continue
            impls[f"xcodec_fast {name}"] = {
                "encode": _with_backend(ours, name, "encode"),
                "decode": _with_backend(ours, name, "decode"),
            }
        _add_bf16(impls, section, ours, backends, device, log)
        _add_fast_winograd(impls, section, ours, backends, device)
        if onnx_runtime:
            _add_onnx_runtime(impls, section, ours, device, log, folders)
        else:
            section["skipped"].append({"impl": "onnxruntime", "reason": "--no-onnx given"})

    section["flops"] = {}
    for batch in batches:
        inputs = [make_audio(batch, num_samples, config.sample_rate, gen).to(device) for _ in range(3)]
        with torch.inference_mode():
            reference_codes = [reference.encode(x, return_dict=False) for x in inputs]
            reference_audio = [reference.decode(c, return_dict=False) for c in reference_codes]
        if ours is not None:  # counted on our eager model: same math, and no weight-norm parametrizations
            section["flops"][str(batch)] = {
                "encode": count_flops(_with_backend(ours, "eager", "encode"), inputs[0]),
                "decode": count_flops(_with_backend(ours, "eager", "decode"), reference_codes[0]),
            }
        for stage in ("encode", "decode"):
            arg_sets = [(x,) for x in inputs] if stage == "encode" else [(c,) for c in reference_codes]
            fns = {impl: _plain(stages[stage]) for impl, stages in impls.items()}
            dtypes = {impl: stages.get("dtype", torch.float32) for impl, stages in impls.items()}
            records = _time_stage(
                fns,
                dtypes,
                stage,
                batch,
                arg_sets,
                reference_codes,
                reference_audio,
                device,
                policy,
                section["clip_seconds"],
                log,
            )
            if cpu_malloc is not None:
                for record in records:
                    record["cpu_malloc"] = cpu_malloc
            section["results"].extend(records)
    _add_speedups(section["results"])
    return section


# The backend whose bf16 path is measured on each device type: the fast one there.
BF16_BACKEND = {"cpu": "native", "cuda": "triton"}


def _add_bf16(impls: dict, section: dict, ours, backends: dict, device: torch.device, log) -> None:
    """The opt-in bf16 path (the same weights rounded to bf16) where the device has bf16 matrix
    instructions: its speed against fp32, its codes' agreement per stage and its decode SNR."""
    from ..hardware import bf16_instructions

    backend = BF16_BACKEND.get(device.type)
    impl = f"xcodec_fast {backend} bf16"
    instructions = bf16_instructions(device)
    if instructions is None:
        section["skipped"].append({"impl": impl, "reason": "no bf16 matrix instructions on this device"})
        return
    if backend is None or not backends.get(backend, {}).get("available"):
        section["skipped"].append({"impl": impl, "reason": f"{backend} backend unavailable"})
        return
    import copy

    half = copy.deepcopy(ours).to(torch.bfloat16)
    section["bf16_instructions"] = instructions
    impls[impl] = {"encode": _with_backend(half, backend, "encode"), "decode": _with_backend(half, backend, "decode"),
                   "dtype": torch.bfloat16}
    log(f"  bf16 path: {backend} on {instructions}")


FAST_WINOGRAD_IMPL = "xcodec_fast native fast-winograd"


def _add_fast_winograd(impls: dict, section: dict, ours, backends: dict, device: torch.device) -> None:
    """The opt-in Winograd F(4,7) residual units (XCODEC_FAST_WINOGRAD=fast) on native, fp32: its
    speed and its audio error against transformers, beside the default F(2,7)."""
    from ..ops import winograd

    if device.type != "cpu" or not backends.get("native", {}).get("available"):
        section["skipped"].append({"impl": FAST_WINOGRAD_IMPL, "reason": "native backend unavailable"})
        return

    def stage(name: str):
        run = _with_backend(ours, "native", name)

        def call(x):
            with winograd.fast_tiles():
                return run(x)

        return call

    impls[FAST_WINOGRAD_IMPL] = {"encode": stage("encode"), "decode": stage("decode")}


def _add_onnx_runtime(impls: dict, section: dict, ours, device: torch.device, log, folder: str) -> None:
    """ONNX Runtime as a peer: the eager reference exported (xcodec_fast.export), same weights."""
    if device.type != "cpu":
        section["skipped"].append({"impl": "onnxruntime", "reason": "timed on CPU only (CPU execution provider)"})
        return
    try:
        from ..export import OnnxCodec, export_onnx

        started = time.perf_counter()
        meta = export_onnx(ours, folder, max_frames=1 << 12)
        runner = OnnxCodec(folder)
    except Exception as exc:  # onnxruntime missing, or an export failure: reported, the rest still runs
        section["skipped"].append({"impl": "onnxruntime", "reason": short_error(exc)})
        log(f"  onnxruntime skipped: {short_error(exc)}")
        return
    import onnxruntime

    section["onnx"] = {"export_s": round(time.perf_counter() - started, 1), "opset": meta["opset"],
                       "onnxruntime": onnxruntime.__version__}
    impls["onnxruntime"] = {"encode": runner.encode, "decode": runner.decode}
    log(f"  onnxruntime {onnxruntime.__version__}: exported in {section['onnx']['export_s']} s")


def count_flops(fn, *args) -> dict:
    """FLOPs of one call, split into convolutions and the rest (matmuls, attention): the floor of a
    stage is its FLOPs at the measured matmul rate."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    conv = sum(n for op, n in by_op.items() if "convolution" in op)
    return {"total": int(counter.get_total_flops()), "convolution": conv}


def _with_backend(model, backend: str, stage: str):
    def call(x):
        model.backend = backend
        return getattr(model, stage)(x, return_dict=False)

    return call


def _plain(fn):
    """transformers returns ModelOutput; compare and time on the tensor inside."""

    def call(x):
        out = fn(x)
        return out if isinstance(out, torch.Tensor) else out[0]

    return call


def _time_stage(
    fns, dtypes, stage, batch, arg_sets, reference_codes, reference_audio, device, policy, clip_seconds, log
) -> list[dict]:
    """Time every implementation of one stage, interleaved call by call (in a rotating order), so
    that drift in the machine's load falls on all of them alike."""
    records, ready, firsts = {}, {}, {}
    slowest = 0.0
    with torch.inference_mode():
        for impl, fn in fns.items():
            # every implementation runs under the same torch switches: convs and matmuls per math_modes
            record = records[impl] = {"impl": impl, "stage": stage, "batch": batch,
                                      "dtype": str(dtypes[impl]).removeprefix("torch."),
                                      "math_mode": math_modes(device, dtypes[impl])}
            try:
                started = time.perf_counter()
                firsts[impl] = fn(*arg_sets[0])  # also triggers torch.compile: its cost is reported apart
                synchronize(device)
                record["first_call_s"] = time.perf_counter() - started
                started = time.perf_counter()
                for i in range(policy.warmup):
                    fn(*arg_sets[(i + 1) % len(arg_sets)])
                synchronize(device)
                slowest = max(slowest, (time.perf_counter() - started) / max(policy.warmup, 1))
                ready[impl] = fn
            except Exception as exc:  # a failing implementation is reported, the others still run
                record.update(status="error", reason=short_error(exc))
                log(f"  {impl:22s} {stage} b={batch}: {record['reason']}")
        reps = int(min(policy.max_reps, max(policy.min_reps, policy.budget_s // max(slowest * len(ready), 1e-9))))
        times = {impl: [] for impl in ready}
        order = list(ready)
        for rep in range(reps):
            for impl in order[rep % len(order) :] + order[: rep % len(order)]:
                times[impl].extend(measure_once(ready[impl], arg_sets[rep % len(arg_sets)], device))
        memory = {
            impl: peak_memory(lambda fn=fn: fn(*arg_sets[1 % len(arg_sets)]), device) for impl, fn in ready.items()
        }

    for impl in ready:
        record, stats = records[impl], summarize(times[impl])
        record.update(
            status="ok",
            **stats,
            realtime_factor=batch * clip_seconds / stats["median_s"],
            peak_memory_mb=memory[impl]["peak_mb"],
            memory_method=memory[impl]["method"],
        )
        if stage == "encode":
            record.update(compare_codes(firsts[impl], reference_codes[0]))
            record["distinct_codes"] = int(torch.unique(reference_codes[0]).numel())
        else:
            record.update(compare_audio(firsts[impl], reference_audio[0]))
        log(
            f"  {impl:22s} {stage} b={batch:<3d} {stats['median_s'] * 1e3:10.1f} ms  {record['realtime_factor']:8.1f}x real time  "
            f"peak {record['peak_memory_mb']:8.1f} MB"
        )
    return list(records.values())


def _add_speedups(records: list[dict]) -> None:
    """Speedup of every implementation over transformers eager, per stage, batch and malloc mode."""
    base = {
        (r["stage"], r["batch"], r.get("cpu_malloc")): r["median_s"]
        for r in records
        if r["impl"] == "transformers eager" and r.get("status") == "ok"
    }
    for r in records:
        key = (r["stage"], r["batch"], r.get("cpu_malloc"))
        if r.get("status") == "ok" and key in base:
            r["speedup_vs_transformers"] = base[key] / r["median_s"]
