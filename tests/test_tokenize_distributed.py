import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from xcodec_fast.tokenize import list_items, tokenize

REPO = Path(__file__).resolve().parents[1]


def _data(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):
        sr = (16000, 22050, 8000)[i % 3]
        sf.write(root / f"{i}.{'flac' if i % 2 else 'wav'}", (0.1 * rng.standard_normal(int(sr * (0.2 + 0.07 * i)))).astype(np.float32), sr)
    (root / "broken.wav").write_bytes(b"RIFF....not a wav")
    return root


def test_two_rank_torchrun_covers_every_item_once(tmp_path):
    data = _data(tmp_path / "data")
    args = ["--model", "random-tiny", "--shard-size", "2", "--max-seconds", "1", "--batch-seconds", "2",
            "--num-workers", "0", "--threads", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "xcodec_fast.tokenize", str(data), "-o", str(out), *args],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each rank wrote its own shards (k % 2 == rank) and journal; rank 0 merged one index.
    journals = {p.name: [json.loads(line)["shard"] for line in p.read_text().splitlines()] for p in (out / "journal").glob("*.jsonl")}
    assert sorted(journals) == ["rank-00000.jsonl", "rank-00001.jsonl"]
    assert all(k % 2 == int(name[5:10]) for name, shards in journals.items() for k in shards)
    index = json.loads((out / "index.json").read_text())
    ids = [i for s in index["shards"] for i in pq.read_table(out / s["file"]).column("id").to_pylist()]
    failed = [json.loads(line)["id"] for line in (out / "errors.jsonl").read_text().splitlines()]
    assert failed == ["broken.wav"]
    assert len(ids) == len(set(ids)) == 9 and sorted(ids + failed) == sorted(i.id for i in list_items([data]))

    # The shards equal a single-process run's: the rank count does not change the output.
    single = tmp_path / "single"
    tokenize([data], single, model="random-tiny", shard_size=2, max_seconds=1, batch_seconds=2, num_workers=0,
             progress=False, rank=0, world_size=1)
    for s in index["shards"]:
        assert pq.read_table(out / s["file"]).equals(pq.read_table(single / s["file"]), check_metadata=True)
