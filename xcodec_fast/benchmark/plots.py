"""PNG plots of one result: kernel speedups, the roofline, end-to-end real-time factors."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on benchmark machines
    import matplotlib.pyplot as plt

    return plt


def plot_result(result: dict, out_dir: Path) -> list[Path]:
    plt = _pyplot()
    from matplotlib import ticker

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['machine']['id']}-{result['mode']}"
    written = []
    ok = [r for r in result.get("kernels", []) if r["status"] == "ok"]
    backends = [b for b in result["backends"] if any(r["backend"] == b for r in ok)]
    colors = {b: c for b, c in zip(backends, ("tab:gray", "tab:blue", "tab:orange", "tab:green"))}

    # Speedup over eager, one bar per (case, backend); one figure per dtype keeps full runs legible.
    fast = [r for r in ok if r["backend"] != "eager" and r.get("speedup_vs_eager")]
    others = [b for b in backends if b != "eager"]
    for dtype in sorted({r["dtype"] for r in fast}):
        mine = [r for r in fast if r["dtype"] == dtype]
        keys = sorted({(r["op"], r["label"], r["batch"]) for r in mine})
        fig, ax = plt.subplots(figsize=(10, 0.22 * len(keys) * len(others) + 1.5))
        height = 0.8 / len(others)
        for j, b in enumerate(others):
            by_key = {(r["op"], r["label"], r["batch"]): r["speedup_vs_eager"] for r in mine if r["backend"] == b}
            ys = [i + j * height for i, k in enumerate(keys) if k in by_key]
            ax.barh(ys, [by_key[k] for k in keys if k in by_key], height=height, color=colors[b], label=b)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(keys))])
        ax.set_yticklabels([f"{op} {label} b={b}" for op, label, b in keys], fontsize=6)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("speedup over eager (ratio of median times)")
        ax.set_title(f"Kernel speedups, {dtype}, {result['machine']['id']}")
        ax.legend()
        fig.tight_layout()
        written.append(out_dir / f"{stem}-speedup-{dtype}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # Classic roofline: achieved TFLOP/s against arithmetic intensity, with the measured ceilings.
    ceilings = result.get("roofline") or {}
    if ok and ceilings.get("bandwidth_gbps"):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        intensities = [r["flops"] / r["bytes"] for r in ok]
        lo, hi = min(intensities) / 2, max(intensities) * 2
        bandwidth = ceilings["bandwidth_gbps"] * 1e9
        for dtype, peak in (ceilings.get("matmul_tflops") or {}).items():
            if not peak:
                continue
            knee = peak * 1e12 / bandwidth
            xs = [lo, min(max(knee, lo), hi), hi]
            ax.plot(
                xs,
                [min(x * bandwidth, peak * 1e12) / 1e12 for x in xs],
                linestyle="--",
                linewidth=1,
                label=f"ceiling {dtype}",
            )
        for b in backends:
            mine = [r for r in ok if r["backend"] == b]
            ax.scatter(
                [r["flops"] / r["bytes"] for r in mine],
                [r["tflops"] for r in mine],
                s=14,
                color=colors[b],
                label=b,
                alpha=0.8,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / byte)")
        ax.set_ylabel("achieved TFLOP/s")
        ax.set_title(f"Roofline, {result['machine']['id']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / f"{stem}-roofline.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    e2e = [r for r in (result.get("end_to_end") or {}).get("results", []) if r.get("status") == "ok"]
    if e2e:
        labels = [f"{r['impl']}\n{r['stage']} b={r['batch']}" for r in e2e]
        fig, ax = plt.subplots(figsize=(10, 0.32 * len(e2e) + 1.5))
        ax.barh(range(len(e2e)), [r["realtime_factor"] for r in e2e], color="tab:blue")
        ax.set_yticks(range(len(e2e)))
        ax.set_yticklabels(labels, fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("× real time (audio seconds per wall second)")
        ax.set_title(f"End to end, {result['end_to_end']['config']} config, {result['machine']['id']}")
        fig.tight_layout()
        written.append(out_dir / f"{stem}-e2e.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
