"""A real local Ray Data pipeline: read_parquet -> map_batches(XcodecTokenizeBatch) -> write_parquet,
whose codes equal the command line's for the same items."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from xcodec_fast.tokenize import read_codes, tokenize

ray = pytest.importorskip("ray")


def _flac(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * (120 + 30 * seed) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, audio, 16000, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_ray_pipeline_codes_equal_the_cli(ray_local, tmp_path):
    from xcodec_fast.tokenize.ray import tokenize_dataset

    names = [f"utt{i}" for i in range(5)]
    table = pa.table({"name": names, "audio": [_flac(0.3 + 0.2 * i, i) for i in range(5)]})
    source = tmp_path / "audio.parquet"
    pq.write_table(table, source)

    ds = ray.data.read_parquet(str(source))
    tokens = tokenize_dataset(ds, model="random-tiny", concurrency=1, batch_size=2)
    tokens.write_parquet(str(tmp_path / "ray_out"))
    got = {row["name"]: np.asarray(row["codes"]) for row in ray.data.read_parquet(str(tmp_path / "ray_out")).take_all()}
    assert sorted(got) == names

    cli_out = tmp_path / "cli_out"
    tokenize([source], cli_out, model="random-tiny", id_column="name", num_workers=0, progress=False)
    shards = pa.concat_tables([pq.read_table(p) for p in sorted((cli_out / "shards").glob("*.parquet"))])
    for ident, codes in zip(shards.column("id").to_pylist(), read_codes(shards)):
        np.testing.assert_array_equal(got[ident], codes, err_msg=ident)
