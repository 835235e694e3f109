"""Draft-checked decoding (MoonshineAsr.transcribe(draft=...), asr_graph.prefill_decoder,
processors/drafts.py) on the bundled model and recordings: a draft changes the time, not
the tokens."""

from __future__ import annotations

import doctest
import threading

import numpy as np
import onnxruntime as ort
import pytest

from streamscribe.processors import asr, drafts
from streamscribe.processors.asr import (
    BOS_TOKEN_ID,
    ModelFiles,
    MoonshineAsr,
    bundled_recording,
    read_audio_16k,
)
from streamscribe.processors.asr_graph import per_row_quantized, prefill_decoder
from streamscribe.processors.drafts import KEY_SAMPLES, DraftBook

RATE = 16000


@pytest.fixture(scope="module")
def model() -> MoonshineAsr:
    m = MoonshineAsr.load(intra_threads=1, drafts=True)
    m.warm_up()
    assert m.drafts
    return m


def _segments() -> list[np.ndarray]:
    """Ten utterance-sized pieces (3-10 s) of the three bundled recordings."""
    out = []
    for name in ("two_cities.wav", "beckett.wav", "endgame_nagg_nell.wav"):
        audio = read_audio_16k(bundled_recording(name))
        for a, b in ((0, 6), (6, 14), (14, 20), (20, 30)):
            seg = audio[a * RATE : b * RATE]
            if len(seg) >= 3 * RATE:
                out.append(seg)
    return out


def test_doctests() -> None:
    assert doctest.testmod(drafts, raise_on_error=True).attempted > 0
    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(asr) if t.name.endswith("_proposal")]
    runner = doctest.DocTestRunner()
    assert tests and all(runner.run(t).failed == 0 for t in tests)


def test_per_row_prefill_of_one_token_is_the_merged_first_step_bit_for_bit(
    model: MoonshineAsr,
) -> None:
    files = ModelFiles.bundled()
    prefill = ort.InferenceSession(
        prefill_decoder(files.decoder).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    merged = ort.InferenceSession(str(files.decoder), providers=["CPUExecutionProvider"])
    audio = _segments()[0][None, :]
    mask = np.ones_like(audio, dtype=np.int64)
    (hidden,) = model._encoder.run(
        ["last_hidden_state"], {"input_values": audio, "attention_mask": mask}
    )
    ids = np.array([[BOS_TOKEN_ID]], dtype=np.int64)
    layout = model._layout
    empty = np.zeros((1, layout.num_heads, 0, layout.head_dim), dtype=np.float32)
    feed = dict.fromkeys(layout.past_names, empty)
    feed.update(
        encoder_hidden_states=hidden,
        encoder_attention_mask=mask,
        input_ids=ids,
        use_cache_branch=np.array([False]),
    )
    names = [o.name for o in merged.get_outputs()]
    want = merged.run(names, feed)
    got = prefill.run(
        names, {"encoder_hidden_states": hidden, "encoder_attention_mask": mask, "input_ids": ids}
    )
    assert len(want) == len(got) == 25
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape
        assert np.array_equal(a, b)  # one row: the same quantization, the same arithmetic


def test_prefill_graph_has_no_per_tensor_quantization_of_tokens() -> None:
    graph = prefill_decoder(ModelFiles.bundled().decoder).graph
    ops = [n.op_type for n in graph.node]
    assert "DynamicQuantizeMatMul" not in ops
    # the one left quantizes the encoder output, the same tensor for every token
    dql = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    assert [n.input[0] for n in dql] == ["encoder_hidden_states"]
    assert ops.count("MatMulInteger") == 31 + 30 - 12  # token activations only


def test_per_row_rewrite_rejects_per_column_zero_points() -> None:
    import onnx
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.zeros((4, 3), np.uint8), "w")
    zp = numpy_helper.from_array(np.zeros(3, np.uint8), "zp")
    sc = numpy_helper.from_array(np.float32(1.0), "sc")
    node = onnx.helper.make_node("DynamicQuantizeMatMul", ["x", "w", "sc", "zp"], ["y"])
    with pytest.raises(asr.AsrModelError, match="per-column"):
        per_row_quantized([node], [w, zp, sc], keep=set())


def test_any_draft_gives_the_tokens_of_the_plain_decode(model: MoonshineAsr) -> None:
    rng = np.random.default_rng(7)
    checked = 0
    for seg in _segments():
        plain = model.transcribe(seg)
        assert plain.token_ids and plain.draft_tokens == 0
        assert plain.decoder_runs == len(plain.token_ids) + 1  # one run a token and </s>
        prefix = model.transcribe(seg[: int(len(seg) * 0.8)]).token_ids
        half = len(seg) // 2
        halves = model.transcribe(seg[:half]).token_ids + model.transcribe(seg[half:]).token_ids
        junk = [int(t) for t in rng.integers(100, 30000, 30)]
        shuffled = list(plain.token_ids)
        rng.shuffle(shuffled)
        for draft in (plain.token_ids, prefix, halves, junk, shuffled, [BOS_TOKEN_ID, 2, 99999]):
            got = model.transcribe(seg, draft)
            assert got.token_ids == plain.token_ids
            assert got.text == plain.text
            assert got.truncated == plain.truncated
            assert abs(got.mean_logprob - plain.mean_logprob) < 2e-3
            checked += 1
        own = model.transcribe(seg, plain.token_ids)
        assert own.decoder_runs == 1  # the whole draft and </s> checked in one run
        assert own.draft_tokens == len(plain.token_ids)
    assert checked == 10 * 6


def test_a_draft_that_runs_past_the_budget_is_cut_to_it(model: MoonshineAsr) -> None:
    seg = _segments()[0]
    short = MoonshineAsr(
        model._encoder,
        model._decoder,
        model._tokenizer,
        asr.DecodeConfig(max_tokens=5),
        model._step_decoder,
        model._draft_decoders,
    )
    plain = short.transcribe(seg)
    assert plain.truncated and len(plain.token_ids) == 5
    drafted = short.transcribe(seg, model.transcribe(seg).token_ids)
    assert drafted.token_ids == plain.token_ids and drafted.truncated


def test_batch_with_drafts_is_the_batch_without(model: MoonshineAsr) -> None:
    segs = _segments()[:3]
    alone = [model.transcribe(s).token_ids for s in segs]
    # at most DRAFT_BATCH_MAX: the ones with a draft are decoded alone with it
    pair = model.transcribe_batch(segs[:2], drafts=[alone[0], None])
    assert [d.token_ids for d in pair] == alone[:2]  # type: ignore[union-attr]
    assert [d.draft_tokens for d in pair] == [len(alone[0]), 0]  # type: ignore[union-attr]
    # a larger batch decodes as one, its drafts unused
    assert asr.DRAFT_BATCH_MAX == 2
    plain = model.transcribe_batch(segs)
    drafted = model.transcribe_batch(segs, drafts=alone)
    assert [d.token_ids for d in drafted] == [d.token_ids for d in plain]  # type: ignore[union-attr]
    assert [d.draft_tokens for d in drafted] == [0, 0, 0]  # type: ignore[union-attr]


def test_without_drafts_the_draft_is_ignored() -> None:
    m = MoonshineAsr.load(intra_threads=1, drafts=False)
    assert not m.drafts
    seg = _segments()[1]
    plain = m.transcribe(seg)
    again = m.transcribe(seg, plain.token_ids)
    assert again.token_ids == plain.token_ids and again.draft_tokens == 0


def test_draft_book_chains_segments_and_keeps_the_latest() -> None:
    book = DraftBook()
    line = np.random.default_rng(1).standard_normal(10 * RATE).astype(np.float32)
    book.record("a", line[: 2 * RATE], [1])  # a tail window from the start
    book.record("a", line[: 3 * RATE], [1, 2])  # the next one replaces it
    assert book.draft("a", line[: 4 * RATE]) == [1, 2]
    book.record("a", line[3 * RATE : 5 * RATE], [3])  # the rest after a cut at 3 s
    book.record("a", line[5 * RATE : 7 * RATE], [4, 5])
    assert book.draft("a", line) == [1, 2, 3, 4, 5]
    assert book.draft("a", line[3 * RATE :]) == [3, 4, 5]  # a window from the anchor
    assert book.draft("a", line[1 * RATE :]) == []  # no segment started there
    assert book.draft("b", line) == []  # another line's audio is not looked at
    book.record("a", line[: KEY_SAMPLES - 1], [9])  # too short to name a start: not kept
    assert book.draft("a", line) == [1, 2, 3, 4, 5]
    book.record("a", line, [7, 7])  # a whole-line decode (a speculation)
    assert book.draft("a", line) == [7, 7]
    book.forget("a")
    assert book.draft("a", line) == [] and len(book) == 0


def test_draft_book_is_bounded_and_thread_safe() -> None:
    book = DraftBook(max_lines=50)
    rng = np.random.default_rng(2)
    audio = rng.standard_normal(RATE).astype(np.float32)

    def work(k: int) -> None:
        for i in range(200):
            book.record(f"{k}/{i}", audio, [i])
            book.draft(f"{k}/{i}", audio)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(book) == 50
    assert book.draft("0/0", audio) == []  # the oldest went first
