"""Fixed-shape padded encode (the CUDA-graph path of the tokenizer) and its length buckets.

Without a GPU: encode_fixed_shape gives each item its alone codes (near ties verified), the fill
items and the bucket length leave an item's codes unchanged, its host checks, the bucket grid, the
bucketed tokenizer batches. Its freedom from host syncs is proven on the meta device in
test_sync_free.py. With a GPU: graph replay equals the same call without graphs.
"""

import numpy as np
import pytest
import torch

import xcodec_fast
import tolerances
from near_ties import check_near_ties
from xcodec_fast import XcodecModel
from xcodec_fast.config import tiny_config
from xcodec_fast.cuda_graphs import FixedShapeEncoder
from xcodec_fast.tokenize.batching import BUCKET_STEP, Segment, bucket_batch_size, bucket_length, collate, pack_buckets
from xcodec_fast.tokenize.engine import BatchEncoder

TIE_TOL = tolerances.TIE[torch.float32]


@pytest.fixture(scope="module")
def model():
    return XcodecModel.from_random(tiny_config(), seed=3)


def _batch(model, lengths, num_samples, seed=0, garbage=0.7):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(len(lengths), 1, num_samples, generator=g) * 0.2
    for b, n in enumerate(lengths):
        audio[b, :, n:] = garbage  # the lengths alone must make padding irrelevant
    return audio


def _lengths(model):
    hop, shortest = model.config.hop_length, model.min_input_length()
    padded = [n for n in range(shortest, shortest + 3 * hop) if model.acoustic_needs_padding(n)]
    plain = [n for n in range(shortest, shortest + 3 * hop) if not model.acoustic_needs_padding(n)]
    assert padded and plain, "the tiny config must show both of transformers' acoustic alignments"
    return [11 * hop + 7, 9 * hop, padded[0] + 2 * hop, plain[-1] + 4 * hop, shortest]


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_each_item_gets_its_alone_codes(model, backend):
    lengths = _lengths(model)
    num_samples = max(lengths) + 3 * model.config.hop_length + 5  # a bucket longer than every item
    audio = _batch(model, lengths, num_samples)
    encoder = FixedShapeEncoder(model)
    with xcodec_fast.use_backend(backend), torch.inference_mode():
        codes, code_lengths = encoder.encode(audio, lengths)
        assert codes.shape == (len(lengths), model.num_quantizers, model.code_frames(num_samples))
        for b, n in enumerate(lengths):
            item = audio[b : b + 1, :, :n]
            alone = model.encode(item).audio_codes
            frames = alone.shape[-1]
            assert code_lengths[b] == frames
            assert (codes[b, :, frames:] == 0).all()
            ours = codes[b : b + 1, :, :frames]
            if not torch.equal(ours, alone):
                with model.running():
                    embeddings = model.encode_latent(item)
                parted, total = check_near_ties(ours, alone, embeddings, model.quantizer.codebooks, TIE_TOL)
                assert parted <= max(1, total // 20), f"item {b} ({n} samples): {parted} of {total} frames part"


def test_padded_encode_gives_the_same_code_lengths(model):
    lengths = _lengths(model)
    num_samples = max(lengths)
    audio = _batch(model, lengths, num_samples, seed=1, garbage=0.0)
    mask = (torch.arange(num_samples)[None, :] < torch.tensor(lengths)[:, None]).long()
    with torch.inference_mode():
        want = model.encode(audio, padding_mask=mask)
        codes, code_lengths = FixedShapeEncoder(model).encode(audio, lengths)
    assert torch.equal(code_lengths, want.audio_code_lengths)
    assert codes.shape == want.audio_codes.shape


def test_fill_items_do_not_touch_the_real_ones(model):
    """The batch is filled to its fixed size with silent items: the real items' codes are the ones
    they get beside other real items in the same shape, bit for bit."""
    lengths = _lengths(model)
    num_samples = max(lengths)
    audio = _batch(model, lengths, num_samples, seed=2)
    encoder = FixedShapeEncoder(model)
    with torch.inference_mode():
        full, full_lengths = encoder.encode(audio, lengths)
        part, part_lengths = encoder.encode(audio[:2], lengths[:2], batch_size=len(lengths))
    assert part.shape[0] == 2
    assert torch.equal(part, full[:2]) and torch.equal(part_lengths, full_lengths[:2])


@pytest.mark.parametrize(
    "lengths, match",
    [
        ([5000, 10**6], "item 1 has 1000000 valid samples, more than the batch's"),
        ([5000, 3], "item 1: .*too short"),
        ([], "non-empty 1-D integer"),
        ([5000.0], "non-empty 1-D integer"),
    ],
)
def test_bad_lengths_name_the_item(model, lengths, match):
    audio = torch.zeros(max(len(lengths), 1), 1, 6000)
    with pytest.raises(ValueError, match=match):
        FixedShapeEncoder(model).encode(audio, torch.tensor(lengths) if lengths else torch.tensor([], dtype=torch.long))


def test_encoder_argument_errors(model):
    encoder = FixedShapeEncoder(model)
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device.*cpu"):
        FixedShapeEncoder(model, graphs=True)
    with pytest.raises(TypeError, match="model must be an XcodecModel"):
        FixedShapeEncoder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"audio must have shape \(batch, 1, samples\)"):
        encoder.encode(torch.zeros(2, 6000), [6000, 6000])
    with pytest.raises(ValueError, match="batch_size must be an int of at least the 2 items"):
        encoder.encode(torch.zeros(2, 1, 6000), [6000, 6000], batch_size=1)
    with pytest.raises(ValueError, match="one value per item"):
        encoder.encode(torch.zeros(2, 1, 6000), [6000])
    nan = torch.zeros(1, 1, 6000)
    nan[0, 0, 10] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        encoder.encode(nan, [6000])
    with pytest.raises(TypeError, match="floating point"):
        encoder.encode(torch.zeros(1, 1, 6000, dtype=torch.int16), [6000])
    with pytest.raises(TypeError, match="floating point"):
        FixedShapeEncoder(model, check_inputs=False).encode(torch.zeros(1, 1, 6000, dtype=torch.int16), [6000])


# ---- the bucket grid ----------------------------------------------------------------------
@pytest.mark.parametrize("hop", [320, 7])
def test_bucket_lengths_hold_their_items_within_one_step(hop):
    window = 3000 * hop
    grid = set()
    for length in list(range(1, 40 * hop)) + list(range(40 * hop, window + 1, 997)) + [window]:
        samples = bucket_length(length, hop, window)
        grid.add(samples)
        assert samples % hop == 0 and samples >= length
        assert samples <= window
        assert samples <= max(-(-length // hop) * hop, BUCKET_STEP * length + hop), (length, samples)
    # few shapes: a geometric grid, not one per length
    assert len(grid) <= 4 * np.log2(window / hop) + 10


def test_bucket_length_is_past_the_window_for_long_items():
    assert bucket_length(3001 * 320, 320, 3000 * 320) > 3000 * 320


def test_pack_buckets_fixed_item_counts_and_every_segment_once():
    rng = np.random.default_rng(4)
    hop, budget = 320, 16000 * 20
    segments = [Segment(k, 0, np.zeros(int(rng.integers(400, 16000 * 18)), np.float32)) for k in range(200)]
    batches = pack_buckets(segments, budget, hop, window=16000 * 60, max_items=12)
    assert sorted(s.key for b in batches for s in b) == list(range(200))
    seen = set()
    for batch in batches:
        samples = {bucket_length(s.length, hop, 16000 * 60) for s in batch}
        assert len(samples) == 1, "a batch mixes buckets"
        (samples,) = samples
        size = bucket_batch_size(samples, budget, 12)
        assert len(batch) <= size and size * samples <= max(budget, samples)
        if samples in seen:
            continue  # only a bucket's first batch must be full (the last may hold fewer) ...
        seen.add(samples)
    by_bucket = {}
    for batch in batches:
        by_bucket.setdefault(bucket_length(batch[0].length, hop, 16000 * 60), []).append(len(batch))
    for samples, sizes in by_bucket.items():
        assert all(n == bucket_batch_size(samples, budget, 12) for n in sizes[:-1]), (samples, sizes)
    # arrival order does not change the batches
    again = pack_buckets(list(reversed(segments)), budget, hop, window=16000 * 60, max_items=12)
    assert [[s.key for s in b] for b in again] == [[s.key for s in b] for b in batches]


def test_collate_to_a_bucket_length():
    segments = [Segment(0, 0, np.ones(5, np.float32)), Segment(1, 0, np.ones(3, np.float32))]
    audio, mask = collate(segments, 2, num_samples=8)
    assert audio.shape == (2, 1, 8) and mask.sum(-1).tolist() == [5, 3]
    with pytest.raises(ValueError, match="shorter than the longest segment"):
        collate(segments, 2, num_samples=4)


def test_bucketed_tokenizer_batches_give_the_padded_batches_codes(model):
    rng = np.random.default_rng(5)
    shortest = model.min_input_length()
    segments = [Segment(k, 0, (0.2 * rng.standard_normal(int(rng.integers(shortest, 12000)))).astype(np.float32))
                for k in range(11)]
    padded = BatchEncoder(model, budget_samples=30000)
    bucketed = BatchEncoder(model, budget_samples=30000, bucketed=True)
    assert (padded.batching, bucketed.batching) == ("padded", "buckets")
    want = {s.key: out for batch in padded.pack(segments) for s, out in zip(batch, padded.encode(batch))}
    got = {s.key: out for batch in bucketed.pack(segments) for s, out in zip(batch, bucketed.encode(batch))}
    for seg in segments:
        _assert_codes_agree(model, seg, got[seg.key], want[seg.key])


def _assert_codes_agree(model, segment, got, want):
    """One segment's codes from two batchings: equal, or parted only at verified near ties."""
    ours, theirs = torch.from_numpy(got.astype(np.int64)), torch.from_numpy(want.astype(np.int64))
    assert ours.shape == theirs.shape
    if not torch.equal(ours, theirs):
        with torch.inference_mode(), model.running():
            embeddings = model.encode_latent(torch.from_numpy(segment.audio)[None, None])
        parted, total = check_near_ties(ours[None], theirs[None], embeddings, model.quantizer.codebooks, TIE_TOL)
        assert parted <= max(1, total // 20), f"segment {segment.key}: {parted} of {total} frames part"


# ---- on a GPU -----------------------------------------------------------------------------
@pytest.mark.gpu
def test_graph_replay_equals_the_same_batches_without_graphs():
    model = XcodecModel.from_random(tiny_config(), seed=3).to("cuda")
    graphed, plain = FixedShapeEncoder(model, graphs=True), FixedShapeEncoder(model)
    lengths = _lengths(model)
    for num_samples, seed in ((max(lengths), 0), (max(lengths), 1), (max(lengths) + 640, 2), (max(lengths), 3)):
        audio = _batch(model, lengths, num_samples, seed=seed)
        for items in (len(lengths), 2):  # a filled batch replays the same graph
            want = plain.encode(audio[:items], lengths[:items], batch_size=len(lengths))
            got = graphed.encode(audio[:items], lengths[:items], batch_size=len(lengths))
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert sorted(graphed.graphs) == [(len(lengths), max(lengths)), (len(lengths), max(lengths) + 640)]
    assert graphed.graph_memory_bytes > 0


@pytest.mark.gpu
def test_graph_replay_does_not_sync():
    model = XcodecModel.from_random(tiny_config(), seed=3).to("cuda")
    encoder = FixedShapeEncoder(model, graphs=True, check_inputs=False)
    lengths = _lengths(model)
    audio = _batch(model, lengths, max(lengths)).cuda()
    encoder.encode(audio, lengths)  # capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        encoder.encode(audio, lengths)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_tokenizer_graph_buckets_equal_the_same_buckets_without_graphs():
    model = XcodecModel.from_random(tiny_config(), seed=3).to("cuda")
    rng = np.random.default_rng(6)
    shortest = model.min_input_length()
    segments = [Segment(k, 0, (0.2 * rng.standard_normal(int(rng.integers(shortest, 12000)))).astype(np.float32))
                for k in range(23)]
    plain = BatchEncoder(model, budget_samples=30000, bucketed=True)
    graphed = BatchEncoder(model, budget_samples=30000, cuda_graphs=True)
    keys = lambda batches: [[s.key for s in batch] for batch in batches]  # noqa: E731
    assert graphed.batching == "cuda-graph-buckets" and keys(graphed.pack(segments)) == keys(plain.pack(segments))
    for batch in plain.pack(segments):
        for want, got in zip(plain.encode(batch), graphed.encode(batch)):
            assert np.array_equal(want, got)
    assert len(graphed.fixed_shape.graphs) == len({bucket_length(s.length, model.config.hop_length) for s in segments})


def test_bucketed_out_of_memory_shrinks_the_batches_and_drops_the_graphs(model, monkeypatch):
    rng = np.random.default_rng(7)
    segments = [Segment(k, 0, (0.2 * rng.standard_normal(6000 + 10 * k)).astype(np.float32)) for k in range(6)]
    encoder = BatchEncoder(model, budget_samples=6 * 6400, bucketed=True)
    want = {s.key: out for batch in encoder.pack(segments) for s, out in zip(batch, encoder.encode(batch))}
    real, shapes, released = model.encode_fixed_shape, [], []

    def encode_with_small_memory(audio, *args):
        shapes.append(audio.shape[0])
        if audio.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(audio, *args)

    monkeypatch.setattr(model, "encode_fixed_shape", encode_with_small_memory)
    monkeypatch.setattr(encoder.fixed_shape, "release_graphs", lambda: released.append(True))
    got = {s.key: out for batch in encoder.pack(segments) for s, out in zip(batch, encoder.encode(batch))}
    assert encoder.oom_splits >= 1 and released and max(shapes) == 6 and shapes[-1] <= 2
    for seg in segments:  # other batch sizes: the same codes up to near ties
        assert isinstance(got[seg.key], np.ndarray), got[seg.key]
        _assert_codes_agree(model, seg, got[seg.key], want[seg.key])


def test_an_empty_segment_is_reported_in_bucketed_batches(model):
    encoder = BatchEncoder(model, budget_samples=30000, bucketed=True)
    segments = [Segment(0, 0, np.zeros(0, np.float32)), Segment(1, 0, 0.1 * np.ones(5000, np.float32))]
    batches = encoder.pack(segments)
    results = {s.key: out for batch in batches for s, out in zip(batch, encoder.encode(batch))}
    assert results[0].startswith("too short: 0 samples") and isinstance(results[1], np.ndarray)


def test_pack_ready_holds_each_buckets_partial_batch_unless_final(model):
    hop = model.config.hop_length
    encoder = BatchEncoder(model, budget_samples=4 * 16 * hop, bucketed=True)
    rng = np.random.default_rng(8)
    segments = [Segment(k, 0, np.zeros(int(rng.integers(12 * hop, 16 * hop)), np.float32)) for k in range(9)]
    ready, held = encoder.pack_ready(segments, final=False)
    assert all(len(b) == encoder._filled_items(b) for b in ready)  # only full batches go now
    assert held, "some bucket's batch must be partial here"
    assert sorted([s.key for b in ready for s in b] + [s.key for s in held]) == list(range(9))
    final, none_held = encoder.pack_ready(segments, final=True)
    assert none_held == [] and sorted(s.key for b in final for s in b) == list(range(9))
    padded = BatchEncoder(model, budget_samples=4 * 16 * hop)
    assert padded.pack_ready(segments, final=False)[1] == []


def test_out_of_memory_on_one_item_first_sheds_the_fill(model, monkeypatch):
    """A lone item in a filled batch that runs out of memory is retried with fewer fill items
    before it is reported: only a call of that item alone can fail it."""
    encoder = BatchEncoder(model, budget_samples=4 * 6400, bucketed=True)
    real, shapes = model.encode_fixed_shape, []

    def encode_with_small_memory(audio, *args):
        shapes.append(audio.shape[0])
        if audio.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(audio, *args)

    monkeypatch.setattr(model, "encode_fixed_shape", encode_with_small_memory)
    (out,) = encoder.encode([Segment(0, 0, 0.1 * np.ones(6000, np.float32))])
    assert isinstance(out, np.ndarray), out
    assert shapes[0] == 4 and shapes[-1] == 1 and encoder.oom_splits == len(shapes) - 1
