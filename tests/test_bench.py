"""The benchmark suite: quick mode on tiny shapes, its JSON schema, and that every ratio it
reports is computed from the times it measured. No assertion on any timing value."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from xcodec_fast import benchmark, ops
from xcodec_fast.benchmark import cases, e2e, report
from xcodec_fast.hardware import bf16_instructions
from xcodec_fast.ops import native
from xcodec_fast.config import XcodecConfig, tiny_config
from xcodec_fast.lengths import conv_output_length

ALL_OPS = set(ops.OPS)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    output = folder / "result.json"
    argv = [
        "--quick", "--device", "cpu", "--config", "tiny", "--seconds", "0.05",
        "--e2e-config", "tiny", "--e2e-seconds", "0.1", "--copy-mb", "16", "--matmul-n", "256",
        "--output", str(output), "--plots-dir", str(folder / "out"), "--quiet",
    ]  # fmt: skip
    assert benchmark.main(argv) == 0
    return json.loads(output.read_text()), folder


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def test_schema_and_machine(quick_run):
    result, _ = quick_run
    assert result["schema"] == benchmark.SCHEMA
    assert result["mode"] == "quick"
    assert result["standard"] is False  # tiny shapes: never mistaken for a comparable quick run
    assert result["machine"]["kind"] == "cpu" and result["machine"]["id"].startswith("cpu-")
    assert result["machine"]["id"].endswith(f"-{result['machine']['cpu_cores']}c")
    assert {"torch", "triton", "transformers", "xcodec_fast"} <= set(result["versions"])
    assert {"commit", "dirty"} <= set(result["git"])
    assert list(result["backends"])[0] == "eager"
    for status in result["backends"].values():
        assert isinstance(status["available"], bool) and status["reason"]
    # Triton on CPU is the interpreter at best: never timed, always with a reason.
    assert result["backends"]["triton"]["available"] is False
    ceilings = result["roofline"]
    assert ceilings["bandwidth_gbps"] > 0 and ceilings["matmul_tflops"]["float32"] > 0


def test_kernel_records_cover_every_op_and_ratios_follow_from_times(quick_run):
    result, _ = quick_run
    records = result["kernels"]
    assert {r["op"] for r in records if r["backend"] == "eager" and r["status"] == "ok"} == ALL_OPS
    ceilings = result["roofline"]
    eager = {
        (r["op"], r["label"], r["batch"], r["dtype"]): r
        for r in records
        if r["backend"] == "eager" and r["status"] == "ok"
    }
    for r in records:
        assert r["status"] in ("ok", "skipped", "error")
        assert r["bytes"] > 0 and r["flops"] > 0
        if r["status"] != "ok":
            assert r["reason"]
            continue
        median = r["median_s"]
        assert r["reps"] >= 3 and r["min_s"] <= median <= r["p90_s"]
        assert _close(r["gbps"], r["bytes"] / median / 1e9)
        assert _close(r["tflops"], r["flops"] / median / 1e12)
        bound = max(
            r["bytes"] / (ceilings["bandwidth_gbps"] * 1e9), r["flops"] / (ceilings["matmul_tflops"][r["dtype"]] * 1e12)
        )
        assert _close(r["roofline_s"], bound) and _close(r["roofline_fraction"], bound / median)
        base = eager[(r["op"], r["label"], r["batch"], r["dtype"])]
        assert _close(r["speedup_vs_eager"], base["median_s"] / median)
        if r["backend"] != "eager":
            assert "code_match" in r or "max_rel_err" in r
        # CPU fp32: every side computes in IEEE fp32 (no TF32 off a GPU)
        expected = "ieee" if r["dtype"] == "float32" else {"bfloat16": "bf16", "float16": "fp16"}[r["dtype"]]
        assert r["math_mode"] == r["eager_math_mode"] == expected


def test_end_to_end_records(quick_run):
    result, _ = quick_run
    section = result["end_to_end"]
    assert section["config"] == "tiny" and section["clip_seconds"] == pytest.approx(0.1)
    ok = [r for r in section["results"] if r["status"] == "ok"]
    impls = {r["impl"] for r in ok}
    assert "transformers eager" in impls and "xcodec_fast eager" in impls
    # On CPU every implementation runs twice: glibc malloc as the process started, then in reuse mode.
    assert {r["cpu_malloc"] for r in ok} == {"default", "reuse"}
    assert result["settings"]["cpu_malloc_kernels"] == "reuse"
    base = {(r["stage"], r["batch"], r["cpu_malloc"]): r["median_s"] for r in ok if r["impl"] == "transformers eager"}
    for r in ok:
        expected_mode = "bf16" if r["dtype"] == "bfloat16" else "ieee"
        assert r["math_mode"] == {"conv": expected_mode, "matmul": expected_mode}
        assert _close(r["realtime_factor"], r["batch"] * section["clip_seconds"] / r["median_s"])
        assert _close(r["speedup_vs_transformers"], base[(r["stage"], r["batch"], r["cpu_malloc"])] / r["median_s"])
        assert r["peak_memory_mb"] >= 0
        if r["stage"] == "encode":
            assert 0.0 <= r["code_match"] <= 1.0 and r["distinct_codes"] > 1  # random codebooks, not a constant code
            assert len(r["code_match_per_stage"]) == 8
            assert _close(sum(r["code_match_per_stage"]) / 8, r["code_match"])
        else:
            assert r["max_rel_err"] >= 0 and r["snr_db"] > 0
    skipped = {s["impl"] for s in section["skipped"]}
    assert "transformers compile" in skipped  # quick mode leaves torch.compile out, and says so
    # ONNX Runtime runs the exported graphs of the same weights as a peer
    assert "onnxruntime" in impls if importlib.util.find_spec("onnxruntime") else "onnxruntime" in skipped
    # the opt-in bf16 path is measured where the CPU has bf16 instructions, else skipped and said why
    if bf16_instructions("cpu") and native.availability(torch.device("cpu"))[0]:
        half = [r for r in ok if r["impl"] == "xcodec_fast native bf16"]
        assert {r["stage"] for r in half} == {"encode", "decode"} and all(r["dtype"] == "bfloat16" for r in half)
        assert section["bf16_instructions"] == bf16_instructions("cpu")
        fp32_decode = next(r for r in ok if r["impl"] == "xcodec_fast native" and r["stage"] == "decode")
        bf16_decode = next(r for r in half if r["stage"] == "decode")
        assert bf16_decode["snr_db"] < fp32_decode["snr_db"]  # bf16 rounding shows in the figures
    else:
        assert "xcodec_fast native bf16" in skipped
    # the opt-in Winograd F(4,7) beside the default native path, fp32, with its own error figures
    if native.availability(torch.device("cpu"))[0]:
        fast = [r for r in ok if r["impl"] == e2e.FAST_WINOGRAD_IMPL]
        assert {r["stage"] for r in fast} == {"encode", "decode"} and all(r["dtype"] == "float32" for r in fast)
    else:
        assert e2e.FAST_WINOGRAD_IMPL in skipped


def test_code_and_audio_agreement_figures():
    ref = torch.randint(0, 1024, (2, 8, 50))
    codes = ref.clone()
    assert e2e.compare_codes(codes, ref) == {"code_match": 1.0, "code_match_per_stage": [1.0] * 8}
    codes[:, 7, :25] += 1  # half of the last stage differs
    codes[0, 0, 0] += 1  # one code of the first
    figures = e2e.compare_codes(codes, ref)
    assert figures["code_match_per_stage"][7] == 0.5 and figures["code_match_per_stage"][0] == 1 - 1 / 100
    assert figures["code_match"] == pytest.approx((800 - 50 - 1) / 800)
    assert e2e.compare_codes(codes[:, :4], ref)["code_match"] == 0.0  # wrong shape: nothing agrees

    audio = torch.sin(torch.arange(1000.0) / 7).reshape(1, 1, -1)
    assert e2e.compare_audio(audio, audio)["snr_db"] == float("inf")
    noisy = audio + 0.01 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    figures = e2e.compare_audio(noisy, audio)
    # signal power 1/2, noise power 1e-4: 10·log10(5000) ≈ 37 dB
    assert figures["snr_db"] == pytest.approx(37.0, abs=0.5) and figures["max_rel_err"] > 0.01
    assert f"SNR {figures['snr_db']:.1f} dB" in report.agreement_text({"stage": "decode", **figures})
    assert report.agreement_text({"stage": "encode", "code_match": 0.5, "code_match_per_stage": [1.0, 0.0]}) == \
        "codes 50.00% equal (per stage 100 / 0)"


def test_outputs_markdown_and_plots(quick_run, capsys):
    result, folder = quick_run
    text = report.summary_markdown(result)
    assert "| op | dtype | batch |" in text and "| implementation | stage |" in text
    for stages in result["end_to_end"]["flops"].values():
        # the floor: convolutions are most of both stages' FLOPs, and the line cites the measured rate
        assert 0 < stages["decode"]["convolution"] <= stages["decode"]["total"]
        assert 0 < stages["encode"]["convolution"] <= stages["encode"]["total"]
    assert "floor, decode batch 1" in text and "TFLOP/s fp32 matmul rate" in text
    assert "| CPU malloc |" in text and "Kernels timed with CPU malloc in reuse mode" in text
    pngs = sorted(p.name for p in (folder / "out").glob("*.png"))
    assert any(name.endswith("-roofline.png") for name in pngs) and any(name.endswith("-e2e.png") for name in pngs)


def test_sites_follow_the_config():
    """Kernel shapes are the shapes transformers' DAC really produces, for any config."""
    from transformers import DacConfig, DacModel

    config = tiny_config(acoustic_model_config={"downsampling_ratios": [2, 4, 5, 8], "upsampling_ratios": [8, 5, 4, 2]})
    acoustic = config.acoustic_model_config
    from transformers.models.xcodec.modeling_xcodec import XcodecModel as HFXcodecModel

    dac = DacModel(DacConfig(**{k: v for k, v in acoustic.to_dict().items() if k != "model_type"})).eval()
    HFXcodecModel._adjust_dac_decoder(dac.decoder)  # X-Codec's output_padding, as its model does
    seen = {"enc": set(), "dec": set()}

    def recorder(part):
        return lambda module, inputs, output: seen[part].add((inputs[0].shape[1], inputs[0].shape[2]))

    hooks = [block.res_unit1.register_forward_hook(recorder("enc")) for block in dac.encoder.block]
    hooks += [block.res_unit1.register_forward_hook(recorder("dec")) for block in dac.decoder.block]
    num_samples = 3200
    with torch.no_grad():
        latent = dac.encoder(torch.zeros(1, 1, num_samples))
        dac.decoder(latent)
    for hook in hooks:
        hook.remove()
    sites = cases.model_sites(config, num_samples)
    for part in ("enc", "dec"):
        ours = {
            (s.params["channels"], s.params["frames"]) for s in sites if s.op == "residual_unit" and part in s.where
        }
        assert ours == seen[part]
    assert latent.shape[-1] == num_samples // config.hop_length

    full = cases.model_sites(XcodecConfig(), 160_000, dilations=(1,))
    enc = [
        (s.params["channels"], s.params["frames"])
        for s in full
        if s.op == "residual_unit" and s.where.startswith("enc")
    ]
    dec = [(s.params["channels"], s.params["frames"]) for s in full if s.op == "residual_unit" and "dec" in s.where]
    assert enc == [(64, 160_000), (128, 20_000), (256, 4_000), (512, 1_000)]
    assert sorted(dec, reverse=True) == [(512, 4_000), (256, 20_000), (128, 80_000), (64, 160_000)]
    assert any(s.op == "rvq_encode" and s.params["frames"] == 500 and s.params["num_quantizers"] == 8 for s in full)


def test_every_dispatch_op_is_benchmarked():
    from xcodec_fast import ops

    # a new op must get a site, a cost model and a call
    assert set(cases.OPS) == ALL_OPS == set(ops.backend._registry)


def test_cost_model_counts_bytes_and_flops():
    site = cases.Site("snake", "x", dict(channels=8, frames=100))
    assert cases.cost(site, 2, torch.float32) == ((2 * 2 * 8 * 100 + 8) * 4, cases.SNAKE_FLOPS * 2 * 8 * 100)
    assert cases.cost(site, 2, torch.bfloat16)[0] == (2 * 2 * 8 * 100 + 8) * 2
    conv = cases.Site(
        "snake_conv1d", "x", dict(in_channels=4, out_channels=6, frames=40, kernel=4, stride=2, padding=1)
    )
    t_out = conv_output_length(40, 4, 2, 1)
    assert (
        t_out == torch.nn.functional.conv1d(torch.zeros(1, 4, 40), torch.zeros(6, 4, 4), stride=2, padding=1).shape[-1]
    )
    assert cases.cost(conv, 1, torch.float32)[1] == 2 * t_out * 6 * 4 * 4 + cases.SNAKE_FLOPS * 4 * 40 + 6 * t_out


def test_render_writes_only_between_markers(quick_run, tmp_path):
    result, _ = quick_run
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / f"{result['machine']['id']}-quick-custom.json").write_text(json.dumps(result))
    assert report.load_results(results_dir) == []  # custom workloads stay out of the README
    (results_dir / f"{result['machine']['id']}-quick.json").write_text(json.dumps(dict(result, standard=True)))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n\n{report.START}\nstale\n{report.END}\n\nafter\n")
    written, section = report.render_readme(readme, results_dir)
    text = readme.read_text()
    assert written and "stale" not in text and section in text
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    unmarked = tmp_path / "PLAIN.md"
    unmarked.write_text("no markers\n")
    assert report.render_readme(unmarked, results_dir)[0] is False and unmarked.read_text() == "no markers\n"


def test_long_results_render_between_their_markers(tmp_path):
    from xcodec_fast.benchmark import long as long_bench

    assert long_bench.speechlike(0.5).shape == (8000,)
    result = {
        "schema": long_bench.SCHEMA, "created": "2026-12-01T00:00:00+00:00", "threads": 2,
        "machine": {"id": "cpu-test-2c", "cpu": "Test CPU", "cpu_cores": 2}, "git": {"commit": "abc", "dirty": False},
        "config": "XcodecConfig()",
        "lengths": [{"task": "decode", "minutes": 60, "chunk_frames": 500, "seconds": 1200.0, "realtime_factor": 3.0,
                     "peak_rss_mb": 1300.0, "added_peak_mb": 250.0}],
        "streaming": [{"chunk_frames": 25, "lookahead_frames": 10, "algorithmic_latency_s": 0.7,
                       "first_chunk_compute_s": 0.3, "chunk_compute_s": 0.25, "realtime_factor": 2.0}],
        "decode_agreement": {"minutes": 1, "grid_frames": 18,
                             "rows": [{"kind": "chunked", "chunk_frames": 25, "max_rel_error": 0.0, "bit_equal_fraction": 1.0},
                                      {"kind": "stream", "chunk_frames": None, "max_rel_error": 3e-7,
                                       "bit_equal_fraction": 0.99}]},
        "encode_agreement": {"audio_seconds": 120, "chunk_frames": 1000, "seam_band_frames": 50, "weights": "random",
                             "rows": [{"context_frames": 50, "per_stage": [0.95] * 8, "per_stage_near_seams": [0.87] * 8,
                                       "per_stage_away_from_seams": [0.97] * 8, "all_stages_equal": 0.8}]},
    }
    (tmp_path / "long-cpu-test-2c.json").write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.LONG_START}\nold\n{report.LONG_END}\noutro\n")
    assert report.render_long(readme, tmp_path)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| decode | 60 | 500 | 1200.0 | 3.00 | 1300 | 250 |" in text
    assert "| chunked | 25 | 0 | 1.0000 |" in text and "| stream | per push | 3e-07 | 0.9900 |" in text
    assert "| 25 | 10 | 0.70 | 0.300 | 0.250 | 2.00 |" in text and "| 50 | 0.950 | 0.870 | 0.970 | 0.950 | 0.800 |" in text
    unmarked = tmp_path / "plain.md"
    unmarked.write_text("none\n")
    assert not report.render_long(unmarked, tmp_path) and unmarked.read_text() == "none\n"


def test_results_older_than_the_kernels_are_marked_stale(monkeypatch):
    code, head = report._git("rev-parse", "HEAD")
    if code != 0:
        pytest.skip("not a git checkout")
    _, last_kernel_change = report._git("log", "-1", "--format=%H", "--", *report.KERNEL_SOURCES)
    assert report.staleness({"git": {"commit": head}}) is None
    code, before = report._git("rev-parse", f"{last_kernel_change}~1")
    if code != 0:
        pytest.skip("shallow clone: the commit before the last kernel change is not here")
    assert "the kernels changed in" in report.staleness({"git": {"commit": before}})
    assert "not in this checkout's history" in report.staleness({"git": {"commit": "0" * 40}})
    assert report.staleness({"git": {}}) is None


def test_long_results_older_than_the_kernels_are_marked_stale():
    code, head = report._git("rev-parse", "HEAD")
    if code != 0:
        pytest.skip("not a git checkout")
    result = {
        "created": "2026-12-01T00:00:00+00:00", "threads": 2, "config": "XcodecConfig()",
        "machine": {"id": "cpu-test-2c", "cpu": "Test CPU", "cpu_cores": 2}, "git": {"commit": head, "dirty": False},
    }
    assert "STALE" not in report.long_markdown(result)
    assert "STALE" not in report.long_markdown({**result, "git": {}})
    text = report.long_markdown({**result, "git": {"commit": "0" * 40}})
    assert text.startswith("**STALE**: ") and "not in this checkout's history" in text
    assert "python -m xcodec_fast.benchmark.long" in text.split("\n\n")[0]
    _, last_kernel_change = report._git("log", "-1", "--format=%H", "--", *report.KERNEL_SOURCES)
    code, before = report._git("rev-parse", f"{last_kernel_change}~1")
    if code != 0:
        pytest.skip("shallow clone: the commit before the last kernel change is not here")
    assert "**STALE**: the kernels changed in" in report.long_markdown({**result, "git": {"commit": before}})


def test_gpu_session_plan_fits_seven_minutes(tmp_path):
    """The one-call GPU check's dry run prints every part with its budget, in order, and a total
    of at most 420 s; at most six files are planned into $OUT."""
    import os
    import re
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path)}
    out = subprocess.run(["bash", os.path.join(root, "bench", "gpu_session.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    parts = re.findall(r"part (\S+): budget (\d+) s", out.stdout)
    assert [name for name, _ in parts] == ["setup", "tests", "kernels", "e2e-b1", "e2e-b16", "tokenize"]
    total = int(re.search(r"total (\d+) s", out.stdout).group(1))
    assert total == sum(int(s) for _, s in parts) <= 420
    planned = set(re.findall(r"--output \S*/([\w.-]+)", out.stdout)) | {"gpu.txt", "session.log"}
    assert len(planned) <= 6, planned


def test_math_modes_follow_torchs_switches(monkeypatch):
    from xcodec_fast.benchmark.machine import math_modes, op_math_mode

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    saved = torch.backends.cuda.matmul.allow_tf32  # a module-like object monkeypatch cannot patch
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert math_modes(cuda, torch.float32) == {"conv": "tf32", "matmul": "tf32"}
        torch.backends.cuda.matmul.allow_tf32 = False
        assert math_modes(cuda, torch.float32) == {"conv": "tf32", "matmul": "ieee"}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert op_math_mode("residual_unit", "triton", cuda, torch.float32) == "tf32"
    assert op_math_mode("rvq_encode", "triton", cuda, torch.float32) == "ieee"  # codes stay exact
    assert op_math_mode("residual_unit", "eager", cuda, torch.float32) == "tf32"
    assert op_math_mode("residual_unit", "native", torch.device("cpu"), torch.float32) == "ieee"
    assert math_modes(cuda, torch.bfloat16) == {"conv": "bf16", "matmul": "bf16"}
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert op_math_mode("residual_unit", "triton", cuda, torch.float32) == "ieee"


def test_module_entry_refuses_nonpositive_threads(capsys):
    from xcodec_fast.benchmark import suite

    for threads in ("0", "-1"):
        with pytest.raises(SystemExit) as exit_info:
            suite.main(["--threads", threads])
        assert exit_info.value.code == 2
        assert f"--threads must be a positive integer, got {threads}" in capsys.readouterr().err


def test_full_cpu_times_bf16_only_with_bf16_instructions(monkeypatch):
    from xcodec_fast import hardware
    from xcodec_fast.benchmark import suite

    monkeypatch.setattr(hardware, "bf16_instructions", lambda device: None)
    assert suite.default_dtypes("full-cpu") == ["float32"]
    assert suite.default_dtypes("full") == ["float32", "bfloat16", "float16"]
    monkeypatch.setattr(hardware, "bf16_instructions", lambda device: "avx512_bf16")
    assert suite.default_dtypes("full-cpu") == ["float32", "bfloat16"]
