"""Pure ASR core: Moonshine tiny-en (ONNX Runtime, ORT format) with greedy KV-cache decoding.

No Kafka, no faust: one :class:`MoonshineAsr` per worker process maps 16 kHz mono float32
audio to a :class:`Decoded` transcript. Nothing is loaded at import time; build the model
with :meth:`MoonshineAsr.load`.

Model files come from installed wheels, never from the network:

* encoder / merged decoder (wheel ``moonshine-voice``):
  ``moonshine_voice/assets/tiny-en/{encoder_model,decoder_model_merged}.ort``;
* tokenizer: ``moonshine_onnx/assets/tokenizer.json`` (wheel ``useful-moonshine-onnx``,
  32768 tokens, ``<s>`` = 1 starts decoding, ``</s>`` = 2 ends it).

Model signature (read from the sessions at load time and checked)::

    encoder  in : input_values [B, samples] f32, attention_mask [B, samples] i64
             out: last_hidden_state [B, frames, 288] f32
    decoder  in : input_ids [B, T] i64, encoder_hidden_states [B, frames, 288] f32,
                  encoder_attention_mask [B, samples] i64  (sample-level, like the encoder's),
                  past_key_values.{0..5}.{decoder,encoder}.{key,value} [B, 8, len, 36] f32,
                  use_cache_branch [1] bool
             out: logits [B, T, 32768] f32,
                  present.{0..5}.{decoder,encoder}.{key,value} [B, 8, len, 36] f32

Decoding: step 0 feeds ``<s>`` with empty (length-0) caches and ``use_cache_branch=False``;
every later step feeds the last token, ``use_cache_branch=True``, the growing
``present.*.decoder.*`` of the previous step and the ``present.*.encoder.*`` of step 0.
Those later steps run the merged decoder's with-cache branch as a graph of its own
(:mod:`~streamscribe.processors.asr_graph`, built at load; ``step_graph=False`` runs the
merged decoder): the same tokens, without the ``If`` copying the cross-attention cache
out on every step.
The number of generated tokens is capped in proportion to the audio length, and a
decoder repeating one phrase three times in a row stops with one copy kept
(:class:`DecodeConfig`), so a decoder stuck in a loop on noise or silence stops.

Errors (all under the project root ``streamscribe.core.errors``)::

    StreamscribeError
    └── ProcessorError
        └── AsrError                 the ASR model failed on an utterance
            ├── AsrModelError        model / tokenizer files missing, unreadable or unexpected
            └── AsrInputError        audio is not 1-D, not finite, or too long

Example:
    >>> import numpy as np
    >>> from streamscribe.processors.asr import MoonshineAsr, read_audio_16k, bundled_recording
    >>> asr = MoonshineAsr.load(intra_threads=1)
    >>> asr.transcribe(read_audio_16k(bundled_recording("beckett.wav"))).text
    'Ever tried, ever failed, no matter, try again, fail again, fail better.'
    >>> asr.transcribe(np.zeros(0, dtype=np.float32)).text
    ''
"""

from __future__ import annotations

import importlib.resources
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from streamscribe.core.errors import AsrError, AsrInputError, AsrModelError

if TYPE_CHECKING:
    import onnxruntime as ort
    import tokenizers

__all__ = [
    "BOS_TOKEN_ID",
    "EOS_TOKEN_ID",
    "MIN_AUDIO_SAMPLES",
    "SAMPLE_RATE",
    "AsrError",
    "AsrInputError",
    "AsrModelError",
    "DecodeConfig",
    "Decoded",
    "ModelFiles",
    "MoonshineAsr",
    "bundled_recording",
    "read_audio_16k",
]

SAMPLE_RATE: Final = 16_000
"""The only sample rate the model accepts (Hz)."""

BOS_TOKEN_ID: Final = 1
"""``<s>``: the decoder start token."""

EOS_TOKEN_ID: Final = 2
"""``</s>``: the end-of-transcript token."""

ENCODER_MIN_SAMPLES: Final = 895
"""Fewest samples the encoder's conv front end accepts (from its output-shape formula
``(((n - 127) // 64 + 1 - 7) // 3 + 1 - 3) // 2 + 1 >= 1``)."""

MIN_AUDIO_SAMPLES: Final = SAMPLE_RATE // 10
"""Non-empty audio shorter than this (0.1 s, Moonshine's documented minimum) is zero-padded
to it before encoding, when :attr:`DecodeConfig.min_audio_s` lets it reach the model."""

_REPLACEMENT_CHAR: Final = "\ufffd"

_LOGITS: Final = "logits"


@dataclass(frozen=True)
class DecodeConfig:
    """Greedy-decoding limits.

    The token budget for ``s`` seconds of audio is
    ``min(max_tokens, ceil(tokens_per_second * s) + extra_tokens)``; reaching it without
    ``</s>`` marks the result ``truncated``. Read speech runs at about 3.5 tokens/s.

    Audio shorter than ``min_audio_s`` is not run through the model and yields an empty
    transcript: no word fits in it, and the model answers such slivers with a hallucinated
    "You". Audio longer than ``max_audio_s`` is rejected (segment it first).
    """

    tokens_per_second: float = 6.5
    extra_tokens: int = 6
    max_tokens: int = 448
    min_audio_s: float = 0.1
    max_audio_s: float = 64.0
    # Runaway repetition: when the last tokens are one block of repeat_min..repeat_max
    # tokens said repeat_copies times in a row, decoding stops and one copy is kept.
    repeat_min_tokens: int = 4
    repeat_max_tokens: int = 16
    repeat_copies: int = 3

    def __post_init__(self) -> None:
        if self.tokens_per_second <= 0 or self.extra_tokens < 0 or self.max_tokens < 1:
            raise ValueError(f"invalid token budget: {self}")
        if not 0.0 <= self.min_audio_s < self.max_audio_s:
            raise ValueError(f"need 0 <= min_audio_s < max_audio_s: {self}")

    def token_budget(self, n_samples: int) -> int:
        """Most tokens (``</s>`` excluded) that may be generated for ``n_samples`` of audio.

        >>> DecodeConfig().token_budget(SAMPLE_RATE * 10)
        71
        """
        seconds = n_samples / SAMPLE_RATE
        return min(self.max_tokens, math.ceil(self.tokens_per_second * seconds) + self.extra_tokens)

    def repeated_block(self, tokens: Sequence[int]) -> int:
        """Length of the block the end of ``tokens`` repeats ``repeat_copies`` times (0: none).

        A decoder caught in a loop says the same phrase again and again ("it was the best
        of times. it was the best of times. it was ..."); real speech rarely repeats a
        phrase of four or more tokens three times in a row.

        >>> DecodeConfig().repeated_block([9, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4])
        4
        >>> DecodeConfig().repeated_block([1, 2, 3, 4, 1, 2, 3, 4, 5])
        0
        """
        n, copies = len(tokens), self.repeat_copies
        for k in range(self.repeat_min_tokens, min(self.repeat_max_tokens, n // copies) + 1):
            tail = list(tokens[n - k :])
            if all(list(tokens[n - (c + 1) * k : n - c * k]) == tail for c in range(1, copies)):
                return k
        return 0


@dataclass(frozen=True)
class Decoded:
    """One transcript.

    ``token_ids`` excludes ``<s>`` and ``</s>``. ``mean_logprob`` is the mean natural-log
    probability of every chosen token including the closing ``</s>`` (0.0 when the model
    was not run: empty audio or audio under ``min_audio_s``); ``confidence =
    exp(mean_logprob)`` in (0, 1].
    ``truncated`` is True when the token budget ran out before ``</s>``.
    """

    text: str
    token_ids: list[int]
    mean_logprob: float
    confidence: float
    truncated: bool
    encode_s: float
    decode_s: float
    audio_s: float
    decoder_runs: int = 0  # decoder session runs (one a token without a draft)
    draft_tokens: int = 0  # tokens taken from the draft (checked, not decoded one by one)


@dataclass(frozen=True)
class ModelFiles:
    """Where the model and tokenizer live on disk."""

    encoder: Path
    decoder: Path
    tokenizer: Path

    @classmethod
    def bundled(cls) -> ModelFiles:
        """The tiny-en files shipped in the moonshine-voice / useful-moonshine-onnx wheels."""
        try:
            voice = importlib.resources.files("moonshine_voice") / "assets" / "tiny-en"
            onnx = importlib.resources.files("moonshine_onnx") / "assets"
        except ModuleNotFoundError as exc:
            raise AsrModelError(f"model wheel not installed: {exc.name}") from exc
        return cls(
            encoder=Path(str(voice / "encoder_model.ort")),
            decoder=Path(str(voice / "decoder_model_merged.ort")),
            tokenizer=Path(str(onnx / "tokenizer.json")),
        )


def bundled_recording(name: str) -> Path:
    """Path of a real recording shipped in ``moonshine_voice/assets`` (e.g. ``beckett.wav``).

    >>> bundled_recording("beckett.wav").name
    'beckett.wav'
    """
    path = Path(str(importlib.resources.files("moonshine_voice") / "assets" / name))
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def read_audio_16k(path: str | Path) -> npt.NDArray[np.float32]:
    """Read a sound file as mono float32 at 16 kHz (mixes down and resamples if needed).

    >>> read_audio_16k(bundled_recording("beckett.wav")).shape
    (159414,)
    """
    import soundfile

    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


@dataclass(frozen=True)
class _CacheLayout:
    """Names of the KV-cache tensors, read from the decoder signature."""

    num_layers: int
    num_heads: int
    head_dim: int
    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    decoder_present: tuple[str, ...]

    @classmethod
    def from_session(cls, decoder: ort.InferenceSession) -> _CacheLayout:
        inputs = {i.name: i for i in decoder.get_inputs()}
        outputs = [o.name for o in decoder.get_outputs()]
        required = {
            "input_ids",
            "encoder_hidden_states",
            "encoder_attention_mask",
            "use_cache_branch",
        }
        missing = required - inputs.keys()
        if missing or not outputs or outputs[0] != _LOGITS:
            raise AsrModelError(f"unexpected decoder signature: missing {sorted(missing)}")
        past = tuple(n for n in inputs if n.startswith("past_key_values."))
        present = tuple("present." + n.removeprefix("past_key_values.") for n in past)
        if not past or any(n not in outputs for n in present):
            raise AsrModelError("decoder has no matching past_key_values / present outputs")
        shape = inputs[past[0]].shape
        if len(shape) != 4 or not isinstance(shape[1], int) or not isinstance(shape[3], int):
            raise AsrModelError(f"unexpected KV-cache shape {shape}")
        layers = 1 + max(int(n.split(".")[1]) for n in past)
        return cls(
            num_layers=layers,
            num_heads=shape[1],
            head_dim=shape[3],
            past_names=past,
            present_names=present,
            decoder_present=tuple(n for n in present if ".decoder." in n),
        )


class MoonshineAsr:
    """Moonshine tiny-en speech recogniser: one shared instance per worker.

    :meth:`transcribe` keeps all per-call state local, so one instance may be used from
    several threads at once (ONNX Runtime sessions are thread-safe for ``run``); each call
    then uses ``intra_threads`` cores.

    Example:
        >>> asr = MoonshineAsr.load(intra_threads=1)
        >>> _ = asr.warm_up()
        >>> d = asr.transcribe(read_audio_16k(bundled_recording("beckett.wav")))
        >>> d.text.lower().startswith("ever tried"), 0.0 < d.confidence <= 1.0
        (True, True)
    """

    def __init__(
        self,
        encoder: ort.InferenceSession,
        decoder: ort.InferenceSession,
        tokenizer: tokenizers.Tokenizer,
        config: DecodeConfig | None = None,
        step_decoder: ort.InferenceSession | None = None,
        draft_decoders: tuple[ort.InferenceSession, ort.InferenceSession] | None = None,
    ) -> None:
        self._encoder = encoder
        self._decoder = decoder
        self._step_decoder = step_decoder
        # (prefill, per-row step): the graphs that check a draft of many tokens in one run
        self._draft_decoders = draft_decoders if step_decoder is not None else None
        self._tokenizer = tokenizer
        self.config = config or DecodeConfig()
        enc_inputs = {i.name for i in encoder.get_inputs()}
        if not {"input_values", "attention_mask"} <= enc_inputs:
            raise AsrModelError(f"unexpected encoder inputs {sorted(enc_inputs)}")
        self._layout = _CacheLayout.from_session(decoder)
        self._step_outputs = [_LOGITS, *self._layout.decoder_present]
        vocab = decoder.get_outputs()[0].shape[-1]  # logits: [batch, tokens, vocabulary]
        if not isinstance(vocab, int):
            raise AsrModelError(f"decoder logits have no fixed vocabulary size: {vocab!r}")
        self._vocab = vocab
        self._prefill_inputs: list[str] = []
        self._step_inputs: list[str] = []
        if self._draft_decoders is not None:
            self._prefill_inputs = [i.name for i in self._draft_decoders[0].get_inputs()]
            self._step_inputs = [i.name for i in self._draft_decoders[1].get_inputs()]
        self._first_outputs = [_LOGITS, *self._layout.present_names]
        for token, expected in (("<s>", BOS_TOKEN_ID), ("</s>", EOS_TOKEN_ID)):
            if tokenizer.token_to_id(token) != expected:
                raise AsrModelError(f"tokenizer maps {token} to {tokenizer.token_to_id(token)}")

    @classmethod
    def load(
        cls,
        intra_threads: int = 1,
        *,
        files: ModelFiles | None = None,
        config: DecodeConfig | None = None,
        step_graph: bool = True,
        drafts: bool = False,
    ) -> MoonshineAsr:
        """Build the sessions (CPU, sequential, ``inter_op=1``) and the tokenizer.

        ``intra_threads`` is ONNX Runtime's ``intra_op_num_threads`` for every session.
        With ``step_graph`` (the default) every decoder step after the first runs the merged
        decoder's with-cache branch as a graph of its own
        (:func:`~streamscribe.processors.asr_graph.cache_step_decoder`): the same tokens,
        12-18 % less time a step; False runs the merged decoder for every step.
        With ``drafts`` (and ``step_graph``) :meth:`transcribe` can check a draft of the
        transcript in one decoder run (:func:`~streamscribe.processors.asr_graph.
        prefill_decoder`); 1-1.5 s more to load.
        """
        import onnxruntime as ort
        import tokenizers

        if intra_threads < 1:
            raise ValueError(f"intra_threads must be >= 1, got {intra_threads}")
        files = files or ModelFiles.bundled()
        for path in (files.encoder, files.decoder, files.tokenizer):
            if not path.is_file():
                raise AsrModelError(f"model file missing: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        try:
            encoder = ort.InferenceSession(str(files.encoder), options, providers=providers)
            decoder = ort.InferenceSession(str(files.decoder), options, providers=providers)
            tokenizer = tokenizers.Tokenizer.from_file(str(files.tokenizer))
        except Exception as exc:  # ORT and tokenizers raise their own (untyped) errors
            raise AsrModelError(f"cannot load model: {exc}") from exc
        step = None
        if step_graph:
            from streamscribe.processors.asr_graph import cache_step_decoder

            graph = cache_step_decoder(files.decoder).SerializeToString()
            try:
                step = ort.InferenceSession(graph, options, providers=providers)
            except Exception as exc:  # ORT raises its own (untyped) errors
                raise AsrModelError(f"cannot load the decoder's step graph: {exc}") from exc
        checkers = None
        if step_graph and drafts:
            from streamscribe.processors.asr_graph import cache_step_decoder, prefill_decoder

            graphs = (
                prefill_decoder(files.decoder),
                cache_step_decoder(files.decoder, per_row=True),
            )
            try:
                prefill, rows = (
                    ort.InferenceSession(g.SerializeToString(), options, providers=providers)
                    for g in graphs
                )
            except Exception as exc:  # ORT raises its own (untyped) errors
                raise AsrModelError(f"cannot load the decoder's draft graphs: {exc}") from exc
            checkers = (prefill, rows)
        return cls(encoder, decoder, tokenizer, config, step, checkers)

    @property
    def input_names(self) -> dict[str, list[str]]:
        """Input tensor names of the encoder and decoder sessions."""
        return {
            "encoder": [i.name for i in self._encoder.get_inputs()],
            "decoder": [i.name for i in self._decoder.get_inputs()],
        }

    @property
    def output_names(self) -> dict[str, list[str]]:
        """Output tensor names of the encoder and decoder sessions."""
        return {
            "encoder": [o.name for o in self._encoder.get_outputs()],
            "decoder": [o.name for o in self._decoder.get_outputs()],
        }

    def warm_up(self) -> float:
        """Run one short transcription so first-call allocations are paid; returns seconds."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        self.transcribe((0.01 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32))
        return time.perf_counter() - start

    @property
    def drafts(self) -> bool:
        """Whether :meth:`transcribe` checks a ``draft`` (the model was loaded with drafts)."""
        return self._draft_decoders is not None

    def transcribe(
        self, audio: npt.NDArray[np.floating[Any]], draft: Sequence[int] | None = None
    ) -> Decoded:
        """Transcribe one utterance of mono 16 kHz audio (float, nominally in [-1, 1]).

        ``draft``: token ids the transcript probably holds (an earlier decode of the same
        audio, or of most of it). The decoder checks them in one run and decodes one by one
        only where the draft is wrong, then looks for its way back into the draft
        (:meth:`_greedy_drafted`). The tokens are the greedy decode's either way (up to float
        rounding, see the method); a draft only changes the time. Ignored unless
        :attr:`drafts`.

        Empty audio, or audio shorter than ``config.min_audio_s``, returns an empty
        transcript without running the model; other audio shorter than
        :data:`MIN_AUDIO_SAMPLES` is zero-padded. Byte-fallback fragments that do not form
        valid UTF-8 (U+FFFD) are dropped from ``text``. Raises
        :class:`AsrInputError` for audio that is not 1-D, not finite or longer than
        ``config.max_audio_s``, and :class:`AsrError` if ONNX Runtime fails.
        """
        samples = self._validate(audio)
        n = samples.shape[0]
        if n == 0 or n < self.config.min_audio_s * SAMPLE_RATE:
            return Decoded("", [], 0.0, 1.0, False, 0.0, 0.0, n / SAMPLE_RATE)
        if n < MIN_AUDIO_SAMPLES:
            samples = np.pad(samples, (0, MIN_AUDIO_SAMPLES - n))
        budget = self.config.token_budget(n)
        x = samples[np.newaxis, :]
        mask = np.ones_like(x, dtype=np.int64)
        try:
            t0 = time.perf_counter()
            (hidden,) = self._encoder.run(
                ["last_hidden_state"], {"input_values": x, "attention_mask": mask}
            )
            t1 = time.perf_counter()
            if draft and self._draft_decoders is not None:
                token_ids, logprobs, truncated, runs, taken = self._greedy_drafted(
                    hidden, mask, budget, draft
                )
            else:
                token_ids, logprobs, truncated = self._greedy(hidden, mask, budget)
                runs, taken = len(logprobs), 0
            t2 = time.perf_counter()
        except AsrError:
            raise
        except Exception as exc:  # onnxruntime raises untyped RuntimeError subclasses
            raise AsrError(f"ONNX Runtime failed on {n} samples: {exc}") from exc
        mean_logprob = float(np.mean(logprobs))
        text = self._tokenizer.decode(token_ids, skip_special_tokens=True)
        text = " ".join(text.replace(_REPLACEMENT_CHAR, "").split())
        return Decoded(
            text=text,
            token_ids=token_ids,
            mean_logprob=mean_logprob,
            confidence=math.exp(mean_logprob),
            truncated=truncated,
            encode_s=t1 - t0,
            decode_s=t2 - t1,
            audio_s=n / SAMPLE_RATE,
            decoder_runs=runs,
            draft_tokens=taken,
        )

    def transcribe_batch(
        self,
        audios: Sequence[npt.NDArray[np.floating[Any]]],
        drafts: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Decoded | AsrError]:
        """Transcribe several utterances together: each is encoded alone, then all are decoded
        in one batch (one decoder run per step for every utterance still going).

        The results are those of :meth:`transcribe` on each (the decoder's cross-attention
        to the zero padding of shorter utterances is masked; a test checks token identity);
        a batch of B costs far less than B decodes, because a decoder step's fixed cost is
        paid once per batch (measured: 1.95 ms per step alone, 0.54 ms per utterance in a
        batch of 8). One utterance's bad input is its own :class:`AsrInputError` in the
        list, the others are decoded; an ONNX Runtime failure raises :class:`AsrError`.
        ``decode_s`` is the batch's decoding time, shared by its utterances.

        ``drafts`` (one per utterance, or None): in a batch of at most
        :data:`DRAFT_BATCH_MAX`, an utterance with a draft is decoded alone with it
        (:meth:`transcribe`); in a larger batch a step's share is already small and the
        drafts are not used.
        """
        out: list[Decoded | AsrError | None] = [None] * len(audios)
        todo: list[tuple[int, npt.NDArray[np.float32], int]] = []  # (index, padded, samples)
        for i, audio in enumerate(audios):
            try:
                samples = self._validate(audio)
            except AsrInputError as exc:
                out[i] = exc
                continue
            n = samples.shape[0]
            if n == 0 or n < self.config.min_audio_s * SAMPLE_RATE:
                out[i] = Decoded("", [], 0.0, 1.0, False, 0.0, 0.0, n / SAMPLE_RATE)
            else:
                if n < MIN_AUDIO_SAMPLES:
                    samples = np.pad(samples, (0, MIN_AUDIO_SAMPLES - n))
                todo.append((i, samples, n))
        if drafts is not None and self.drafts and len(todo) <= DRAFT_BATCH_MAX:
            alone = [t for t in todo if drafts[t[0]]]
            for i, _, _ in alone:
                out[i] = self.transcribe(audios[i], drafts[i])
            todo = [t for t in todo if not drafts[t[0]]]
        if len(todo) == 1:
            i, _, _ = todo[0]
            out[i] = self.transcribe(audios[i])
        elif todo:
            for (i, _, _), decoded in zip(todo, self._batch(todo), strict=True):
                out[i] = decoded
        return [d for d in out if d is not None]

    def _batch(self, todo: list[tuple[int, npt.NDArray[np.float32], int]]) -> list[Decoded]:
        width = max(s.shape[0] for _, s, _ in todo)
        mask = np.zeros((len(todo), width), dtype=np.int64)
        hidden_list: list[npt.NDArray[np.float32]] = []
        encode_s: list[float] = []
        try:
            for row, (_, samples, _) in enumerate(todo):
                x = samples[np.newaxis, :]
                t0 = time.perf_counter()
                (hidden,) = self._encoder.run(
                    ["last_hidden_state"],
                    {"input_values": x, "attention_mask": np.ones_like(x, dtype=np.int64)},
                )
                encode_s.append(time.perf_counter() - t0)
                hidden_list.append(hidden[0])
                mask[row, : samples.shape[0]] = 1
            frames = max(h.shape[0] for h in hidden_list)
            hidden_all = np.zeros((len(todo), frames, hidden_list[0].shape[1]), dtype=np.float32)
            for row, h in enumerate(hidden_list):
                hidden_all[row, : h.shape[0]] = h
            budgets = [self.config.token_budget(n) for _, _, n in todo]
            t1 = time.perf_counter()
            results = self._greedy_batch(hidden_all, mask, budgets)
            decode_s = time.perf_counter() - t1
        except AsrError:
            raise
        except Exception as exc:  # onnxruntime raises untyped RuntimeError subclasses
            raise AsrError(f"ONNX Runtime failed on a batch of {len(todo)}: {exc}") from exc
        decoded = []
        for (_, _, n), enc_s, (token_ids, logprobs, truncated) in zip(
            todo, encode_s, results, strict=True
        ):
            mean_logprob = float(np.mean(logprobs))
            text = self._tokenizer.decode(token_ids, skip_special_tokens=True)
            text = " ".join(text.replace(_REPLACEMENT_CHAR, "").split())
            decoded.append(
                Decoded(
                    text=text,
                    token_ids=token_ids,
                    mean_logprob=mean_logprob,
                    confidence=math.exp(mean_logprob),
                    truncated=truncated,
                    encode_s=enc_s,
                    decode_s=decode_s,
                    audio_s=n / SAMPLE_RATE,
                )
            )
        return decoded

    def _greedy_batch(
        self,
        hidden: npt.NDArray[np.float32],
        mask: npt.NDArray[np.int64],
        budgets: list[int],
    ) -> list[tuple[list[int], list[float], bool]]:
        """Greedy decoding of a batch; a finished row leaves the batch (all state local)."""
        layout = self._layout
        b = hidden.shape[0]
        empty = np.zeros((b, layout.num_heads, 0, layout.head_dim), dtype=np.float32)
        feed: dict[str, Any] = dict.fromkeys(layout.past_names, empty)
        feed["encoder_hidden_states"] = hidden
        feed["encoder_attention_mask"] = mask
        feed["use_cache_branch"] = np.array([False])
        feed["input_ids"] = np.full((b, 1), BOS_TOKEN_ID, dtype=np.int64)
        outputs = self._decoder.run(self._first_outputs, feed)
        names: list[str] = self._first_outputs
        tokens: list[list[int]] = [[] for _ in range(b)]
        logprobs: list[list[float]] = [[] for _ in range(b)]
        truncated = [False] * b
        rows = list(range(b))  # batch row -> utterance index
        feed["use_cache_branch"] = np.array([True])
        while True:
            keep, last = [], []
            for r, item in enumerate(rows):
                token, logprob = _argmax_logprob(outputs[0][r, -1])
                logprobs[item].append(logprob)
                if token == EOS_TOKEN_ID:
                    continue
                tokens[item].append(token)
                if len(tokens[item]) >= budgets[item]:
                    truncated[item] = True
                    continue
                if k := self.config.repeated_block(tokens[item]):
                    drop = (self.config.repeat_copies - 1) * k  # keep one copy of the block
                    del tokens[item][-drop:], logprobs[item][-drop:]
                    truncated[item] = True
                    continue
                keep.append(r)
                last.append(token)
            if not keep:
                return list(zip(tokens, logprobs, truncated, strict=True))
            _feed_back(feed, names, outputs)
            if len(keep) < len(rows):
                pick = np.asarray(keep)
                for name in (*layout.past_names, "encoder_hidden_states", "encoder_attention_mask"):
                    feed[name] = feed[name][pick]
                rows = [rows[r] for r in keep]
            feed["input_ids"] = np.asarray(last, dtype=np.int64).reshape(-1, 1)
            names = self._step_outputs
            outputs = self._step(names, feed)

    def _validate(self, audio: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        if not isinstance(audio, np.ndarray):
            raise AsrInputError(f"audio must be a numpy array, got {type(audio).__name__}")
        if audio.ndim != 1:
            raise AsrInputError(f"audio must be 1-D mono, got shape {audio.shape}")
        if not np.issubdtype(audio.dtype, np.floating):
            raise AsrInputError(f"audio must be floating point, got {audio.dtype}")
        if audio.shape[0] > self.config.max_audio_s * SAMPLE_RATE:
            raise AsrInputError(
                f"audio of {audio.shape[0] / SAMPLE_RATE:.1f} s exceeds "
                f"max_audio_s={self.config.max_audio_s}; segment it first"
            )
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        if not np.isfinite(samples).all():
            raise AsrInputError("audio contains NaN or infinite samples")
        return samples

    def _greedy(
        self,
        hidden: npt.NDArray[np.float32],
        mask: npt.NDArray[np.int64],
        budget: int,
    ) -> tuple[list[int], list[float], bool]:
        """Greedy decoding of one utterance with the KV cache; all state is local."""
        layout = self._layout
        empty = np.zeros((1, layout.num_heads, 0, layout.head_dim), dtype=np.float32)
        feed: dict[str, Any] = dict.fromkeys(layout.past_names, empty)
        feed["encoder_hidden_states"] = hidden
        feed["encoder_attention_mask"] = mask
        feed["use_cache_branch"] = np.array([False])
        feed["input_ids"] = np.array([[BOS_TOKEN_ID]], dtype=np.int64)

        outputs = self._decoder.run(self._first_outputs, feed)
        names: list[str] = self._first_outputs
        token_ids: list[int] = []
        logprobs: list[float] = []
        feed["use_cache_branch"] = np.array([True])
        while True:
            token, logprob = _argmax_logprob(outputs[0][0, -1])
            logprobs.append(logprob)
            if token == EOS_TOKEN_ID:
                return token_ids, logprobs, False
            token_ids.append(token)
            if len(token_ids) >= budget:
                return token_ids, logprobs, True
            if k := self.config.repeated_block(token_ids):
                drop = (self.config.repeat_copies - 1) * k  # keep one copy of the block
                return token_ids[:-drop], logprobs[:-drop], True
            _feed_back(feed, names, outputs)
            feed["input_ids"] = np.array([[token]], dtype=np.int64)
            names = self._step_outputs
            outputs = self._step(names, feed)

    def _greedy_drafted(
        self,
        hidden: npt.NDArray[np.float32],
        mask: npt.NDArray[np.int64],
        budget: int,
        draft: Sequence[int],
    ) -> tuple[list[int], list[float], bool, int, int]:
        """Greedy decoding that checks a draft instead of decoding token by token.

        Draft-and-check ("prompt lookup") decoding: the prefill graph takes ``<s>`` and the
        whole draft and gives, in one run, the logits at every position; the greedy token at
        position j is accepted, and the next position's logits are valid, while it equals
        the draft token fed there. At the first difference the greedy token is kept, the
        self-attention cache is cut back to the positions accepted, and the next run feeds
        that token plus a *proposal*: the draft's continuation after the place where the last
        decoded tokens occur in it (the longest of the last 3, 2 or 1 tokens found within
        :data:`DRAFT_SEARCH` positions of where the draft was last aligned): 4 tokens,
        doubled while a proposal is taken whole, up to :data:`DRAFT_PROPOSAL`; with no
        proposal the run is one plain step. The
        budget and the repetition stop are applied token by token as in :meth:`_greedy`.

        The graphs quantize each token's activations on their own
        (:func:`~streamscribe.processors.asr_graph.per_row_quantized`), so a run of many
        tokens computes what one token at a time computes, up to float rounding in the
        attention over more keys (measured: logits within 1e-5; a rounding that moves a
        quantized value by one step can move a log-probability by ~1e-2 at a later
        position). A token can differ from the one-by-one decode only where its two best
        logits are that close. Returns ``(tokens, logprobs, truncated, runs, taken)``.
        """
        assert self._draft_decoders is not None and self._step_decoder is not None
        prefill, rows = self._draft_decoders
        vocab = self._vocab
        cfg = self.config
        draft = [int(t) for t in draft if 0 <= t < vocab and t not in (BOS_TOKEN_ID, EOS_TOKEN_ID)]
        draft = draft[:budget]
        feed: dict[str, Any] = {
            "encoder_hidden_states": hidden,
            "encoder_attention_mask": mask,
            "input_ids": np.array([[BOS_TOKEN_ID, *draft]], dtype=np.int64),
        }
        names: list[str] = self._first_outputs
        outputs = prefill.run(names, {k: feed[k] for k in self._prefill_inputs})
        runs, taken = 1, 0
        fed = [BOS_TOKEN_ID, *draft]  # the inputs of the last run
        base = 0  # cache positions before the last run
        shift = 0  # draft index - token index where the draft was last aligned
        size = 4  # tokens of the next proposal
        tokens: list[int] = []
        logprobs: list[float] = []
        while True:
            logits = outputs[0][0]
            j = 0
            for j in range(len(fed)):
                token, logprob = _argmax_logprob(logits[j])
                logprobs.append(logprob)
                if j:
                    taken += 1  # fed[j] was a draft token, now confirmed
                if token == EOS_TOKEN_ID:
                    return tokens, logprobs, False, runs, taken
                tokens.append(token)
                if len(tokens) >= budget:
                    return tokens, logprobs, True, runs, taken
                if k := cfg.repeated_block(tokens):
                    drop = (cfg.repeat_copies - 1) * k  # keep one copy of the block
                    return tokens[:-drop], logprobs[:-drop], True, runs, taken
                if j + 1 >= len(fed) or fed[j + 1] != token:
                    break
            valid = base + j + 1  # cache positions that hold accepted inputs
            for name, value in zip(names[1:], outputs[1:], strict=True):
                past = "past_key_values." + name.removeprefix("present.")
                feed[past] = (
                    value[:, :, :valid] if value.shape[2] > valid and ".decoder." in name else value
                )
            base = valid
            # A proposal starts short and doubles while it is taken whole (a wrong one
            # costs a run of its length instead of one step).
            taken_whole = j + 1 == len(fed) and len(fed) > 1
            size = size * 2 if taken_whole and runs > 1 else 4  # runs > 1: not the prefill
            proposal, shift = _proposal(draft, tokens, shift, min(size, DRAFT_PROPOSAL))
            fed = [token, *proposal]
            feed["input_ids"] = np.array([fed], dtype=np.int64)
            names = self._step_outputs
            session = rows if proposal else self._step_decoder
            outputs = session.run(names, {k: feed[k] for k in self._step_inputs})
            runs += 1

    def _step(self, names: list[str], feed: dict[str, Any]) -> list[Any]:
        """One decoder step after the first (the cache is in ``feed``)."""
        if self._step_decoder is None:
            return list(self._decoder.run(names, feed))
        step_feed = {k: v for k, v in feed.items() if k != "use_cache_branch"}
        return list(self._step_decoder.run(names, step_feed))


DRAFT_BATCH_MAX: Final = 2
"""Largest batch whose utterances with a draft are decoded alone with it (measured on 3 s
pieces: a batch of 2 cost 162 ms, alone with drafts 136; of 4, 238 and 307)."""
DRAFT_SEARCH: Final = 8
"""How far (in tokens) from the draft's last alignment its way back is looked for."""
DRAFT_PROPOSAL: Final = 24
"""Most draft tokens fed in one run after a difference."""


def _proposal(
    draft: list[int], tokens: list[int], shift: int, size: int = DRAFT_PROPOSAL
) -> tuple[list[int], int]:
    """The draft tokens that probably come next, and the new alignment (see
    :meth:`MoonshineAsr._greedy_drafted`): after the last place, within
    :data:`DRAFT_SEARCH` of ``len(tokens) - 1 + shift``, where the draft holds the last
    3, 2 or 1 of ``tokens`` (the longest found, the nearest of those); at most ``size``.

    >>> _proposal([5, 6, 7, 8, 9], [5, 6, 4, 8], 0)
    ([9], 0)
    >>> _proposal([5, 6, 7, 8, 9], [5, 6, 3], 0)
    ([], 0)
    """
    n_tok = len(tokens)
    expected = n_tok - 1 + shift  # draft index of the last token if still aligned
    lo = max(0, expected - DRAFT_SEARCH)
    hi = min(len(draft) - 1, expected + DRAFT_SEARCH)
    for n in (3, 2, 1):
        if n > n_tok:
            continue
        tail = tokens[-n:]
        best = None
        for end in range(max(lo, n - 1), hi + 1):
            if draft[end - n + 1 : end + 1] == tail and (
                best is None or abs(end - expected) < abs(best - expected)
            ):
                best = end
        if best is not None:
            return draft[best + 1 : best + 1 + size], best - (n_tok - 1)
    return [], shift


def _feed_back(feed: dict[str, Any], names: list[str], outputs: list[Any]) -> None:
    """Copy ``present.X`` outputs into the ``past_key_values.X`` inputs (logits skipped)."""
    for name, value in zip(names[1:], outputs[1:], strict=True):
        feed["past_key_values." + name.removeprefix("present.")] = value


def _argmax_logprob(logits: npt.NDArray[np.float32]) -> tuple[int, float]:
    """Greedy token and its log-softmax probability.

    In float32 (numpy's pairwise sum: relative error ~1e-7 over the 32768 logits), which
    is ten times faster than float64 here (21 vs 212 µs a token, a tenth of a decoder
    step); the chosen token is the same either way.
    """
    token = int(np.argmax(logits))
    top = logits[token]
    return token, -math.log(float(np.exp(logits - top).sum()))
