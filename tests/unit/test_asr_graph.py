"""The decoder's with-cache step graph (processors/asr_graph.py) on the bundled model files."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from streamscribe.processors import asr_graph
from streamscribe.processors.asr import (
    AsrModelError,
    ModelFiles,
    MoonshineAsr,
    bundled_recording,
    read_audio_16k,
)
from streamscribe.processors.asr_graph import CACHE_FLAG, cache_step_decoder, read_ort_model
from streamscribe.processors.offline import transcribe_file

RECORDINGS = ("beckett.wav", "two_cities.wav", "endgame_nagg_nell.wav")


@pytest.fixture(scope="module")
def merged() -> MoonshineAsr:
    """Every decoder step through the merged decoder (the If), as before the step graph."""
    asr = MoonshineAsr.load(intra_threads=1, step_graph=False)
    asr.warm_up()
    return asr


@pytest.fixture(scope="module")
def stepped() -> MoonshineAsr:
    asr = MoonshineAsr.load(intra_threads=1)
    asr.warm_up()
    return asr


def test_doctests() -> None:
    assert doctest.testmod(asr_graph, raise_on_error=True).attempted > 0


def test_step_graph_signature() -> None:
    files = ModelFiles.bundled()
    step = cache_step_decoder(files.decoder)
    merged = ort.InferenceSession(str(files.decoder), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in step.graph.input]
    outputs = [o.name for o in step.graph.output]
    merged_inputs = [i.name for i in merged.get_inputs()]
    # every merged input but the branch flag, the cross-attention cache included
    assert sorted(inputs) == sorted(n for n in merged_inputs if n != CACHE_FLAG)
    assert len(inputs) == 3 + 6 * 4
    # logits and the self-attention cache only: 1 + 6 layers x (key, value)
    assert outputs[0] == "logits"
    assert len(outputs) == 13
    assert all(".decoder." in n for n in outputs[1:])
    assert not any(n.op_type == "If" for n in step.graph.node)


@pytest.mark.parametrize("name", RECORDINGS)
def test_offline_transcripts_are_the_merged_decoders(
    name: str, merged: MoonshineAsr, stepped: MoonshineAsr
) -> None:
    """The whole offline path (segmentation, then one final per utterance) gives the same
    utterances, texts and confidences to the last bit either way."""
    wav = bundled_recording(name)
    before = transcribe_file(wav, asr=merged)
    after = transcribe_file(wav, asr=stepped)
    assert len(after) == len(before) > 0
    assert [u.to_dict() for u in after] == [u.to_dict() for u in before]


def test_tokens_and_batches_are_the_merged_decoders(
    merged: MoonshineAsr, stepped: MoonshineAsr
) -> None:
    audio = np.concatenate([read_audio_16k(bundled_recording(n)) for n in RECORDINGS])
    pieces = [audio[i : i + 40_000] for i in range(0, 40_000 * 12, 40_000)]  # 2.5 s each
    one_by_one = [stepped.transcribe(p) for p in pieces]
    assert [d.token_ids for d in one_by_one] == [merged.transcribe(p).token_ids for p in pieces]
    assert sum(len(d.token_ids) for d in one_by_one) > 12 * 5  # real speech, not silence
    batch_after = stepped.transcribe_batch(pieces[:6])
    batch_before = merged.transcribe_batch(pieces[:6])
    assert [d.token_ids for d in batch_after] == [d.token_ids for d in batch_before]  # type: ignore[union-attr]


def test_converted_encoder_computes_what_the_ort_file_does() -> None:
    """read_ort_model keeps every node and weight: the converted encoder's hidden states
    are the ORT file's."""
    files = ModelFiles.bundled()
    proto = read_ort_model(files.encoder)
    original = ort.InferenceSession(str(files.encoder), providers=["CPUExecutionProvider"])
    converted = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = read_audio_16k(bundled_recording("beckett.wav"))[np.newaxis, :32_000]
    feed = {"input_values": x, "attention_mask": np.ones_like(x, dtype=np.int64)}
    (a,) = original.run(["last_hidden_state"], feed)
    (b,) = converted.run(["last_hidden_state"], feed)
    assert a.shape == b.shape == (1, a.shape[1], 288)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)


def test_a_file_that_is_not_an_ort_model_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "decoder_model_merged.ort"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(AsrModelError, match="cannot read the ORT model"):
        read_ort_model(bad)


def test_a_model_without_the_cache_branch_is_refused() -> None:
    with pytest.raises(AsrModelError, match="one If on use_cache_branch"):
        cache_step_decoder(ModelFiles.bundled().encoder)
