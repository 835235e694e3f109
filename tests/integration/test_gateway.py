"""The WebSocket gateway on the real broker (and, where transcripts matter, a real worker).

- refusals: no token, wrong token, wrong Origin, oversized frame, sessions per token,
  sessions per gateway → their documented close codes, counted in ``/metrics``, and
  nothing on the audio topic; bad frames and messages get an ``error`` and the session
  goes on;
- ``streamscribe stream beckett.wav`` through the gateway: the finals match the reference,
  the audio topic holds exactly the frames sent (contiguous ``seq``, one session key);
- 20 concurrent clients each get only their own session's events, numbered and in order;
- a worker killed and restarted mid-session: the client keeps its socket and gets every final;
- a reconnect within the grace period continues the session; after it, a new session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamscribe.producers.gateway.client import PACE_ASAP, StreamJob, StreamReport, stream
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.control import is_tick
from streamscribe.schemas.topics import Topics
from tests.integration.gateway_procs import TOKENS, DroppingProxy, GatewayProc, gateway, start_doc
from tests.integration.kafka_read import read_topic
from tests.integration.pipeline import start_worker, worker
from tests.procs import streamscribe_cmd
from tests.wer import word_errors

pytestmark = pytest.mark.integration

TOKEN = TOKENS[0]


def audio_chunks(bootstrap: str, topics: Topics) -> list[AudioChunk]:
    records = read_topic(bootstrap, topics.audio)
    return [AudioChunk.decode(r.value) for r in records if not is_tick(r.value)]


def final_text(report: StreamReport) -> str:
    return " ".join(f["text"] for f in report.finals)


async def closed_with(url: str, *, first: str | bytes | None = None, **kw: Any) -> tuple[int, str]:
    """Connect, optionally send one message, and return the close code and reason."""
    async with connect(url, **kw) as ws:
        if first is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(first)
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


async def opened(url: str, token: str, **start: Any) -> tuple[Any, dict[str, Any]]:
    ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"})
    await ws.send(start_doc(**start))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return ws, ready


async def reopened(url: str, token: str, **start: Any) -> tuple[Any, dict[str, Any]]:
    """``opened`` once the gateway has seen the old socket drop (4409 until then)."""
    while True:
        try:
            return await opened(url, token, **start)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 4409, exc
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------- refusals
async def _refusals(gw: GatewayProc) -> dict[str, Any]:
    url = gw.ws_url
    auth = {"additional_headers": {"Authorization": f"Bearer {TOKEN}"}}
    out: dict[str, Any] = {
        "no_token": await closed_with(url, first=start_doc()),
        "wrong_token": await closed_with(
            url, first=start_doc(), additional_headers={"Authorization": "Bearer nope"}
        ),
        "wrong_token_query": await closed_with(url + "?token=nope", first=start_doc()),
        "wrong_origin": await closed_with(
            url, first=start_doc(), origin="http://evil.example", **auth
        ),
        "audio_before_start": await closed_with(url, first=b"\x00\x00", **auth),
    }
    # an oversized first frame: refused before anything of the session is published
    ws, _ = await opened(url, TOKEN)
    await ws.send(b"\x00" * 3202)
    with pytest.raises(ConnectionClosed):
        while True:
            await ws.recv()
    out["oversized"] = (ws.close_code, ws.close_reason)
    # bad frames and messages: an error each, and the session goes on
    ws, _ = await opened(url, TOKEN, session_id="held-a")
    errors = []
    for bad in (b"\x00\x00\x00", "hello", start_doc(), '{"type":"start"}'):
        await ws.send(bad)
        errors.append(json.loads(await ws.recv())["code"])
    out["errors"] = errors
    # limits: sessions per token (1), then sessions per gateway (2)
    out["token_limit"] = await closed_with(url, first=start_doc(), **auth)
    ws_b, _ = await opened(url, TOKENS[1])
    out["busy"] = await closed_with(url, first=start_doc(session_id="held-a", resume_from=0),
                                    **auth)  # fmt: skip
    out["gateway_full"] = await closed_with(
        url, first=start_doc(), additional_headers={"Authorization": f"Bearer {TOKENS[2]}"}
    )
    # the held session still works: end → session_end (no audio, no finals) → 1000
    await ws.send('{"type": "end"}')
    end = json.loads(await ws.recv())
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    out["end"] = (end, ws.close_code)
    await ws_b.close()
    return out


def test_refusals_have_their_documented_codes_and_publish_nothing(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    settings = {"gateway_max_frame_bytes": "3200", "gateway_max_sessions": "2",
                "gateway_max_sessions_per_token": "1"}  # fmt: skip
    with gateway(kafka_bootstrap, topics, tmp_path, **settings) as gw:
        out = asyncio.run(_refusals(gw))
        metrics = {
            r: gw.metric("refused_total", reason=r)
            for r in ("unauthorized", "forbidden_origin", "bad_request", "frame_too_large",
                      "too_many_sessions_for_token", "session_busy", "gateway_full")
        }  # fmt: skip
        assert gw.health()["sessions"] == 1  # ws_b's socket closed before end: in grace
    assert out["no_token"] == (4401, "unauthorized: no token")
    assert out["wrong_token"] == (4401, "unauthorized: wrong token")
    assert out["wrong_token_query"] == (4401, "unauthorized: wrong token")
    assert out["wrong_origin"] == (4403, "forbidden_origin: origin http://evil.example not allowed")
    assert out["audio_before_start"] == (4400, "bad_request: audio before start")
    assert out["oversized"] == (4413, "frame_too_large: 3202 > 3200 bytes")
    assert out["errors"] == ["bad_frame", "bad_message", "duplicate_start", "bad_message"]
    assert out["token_limit"] == (4429, "too_many_sessions_for_token: 1 sessions for this token")
    assert out["busy"] == (4409, "session_busy: session is open on another connection")
    assert out["gateway_full"] == (4503, "gateway_full: 2 sessions open")
    end, code = out["end"]
    assert (end["type"], end["session_id"], end["finals"], end["complete"], code) == (
        "session_end", "held-a", 0, True, 1000,
    )  # fmt: skip
    assert metrics == {"unauthorized": 3, "forbidden_origin": 1, "bad_request": 1,
                       "frame_too_large": 1, "too_many_sessions_for_token": 1,
                       "session_busy": 1, "gateway_full": 1}  # fmt: skip
    assert audio_chunks(kafka_bootstrap, topics) == []


def test_stream_cli_refused_exits_2_with_one_line(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path
) -> None:
    with gateway(kafka_bootstrap, topics, tmp_path) as gw:
        done = subprocess.run(
            streamscribe_cmd("stream", str(assets / "beckett.wav"), "--url", gw.ws_url,
                             "--token", "wrong"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "streamscribe stream: error: the gateway closed the session: 4401 unauthorized: wrong token"
    )
    assert audio_chunks(kafka_bootstrap, topics) == []


# ------------------------------------------------------------- with a real worker
def test_stream_beckett_through_the_gateway_matches_the_reference(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path, references: dict[str, str]
) -> None:
    wav = assets / "beckett.wav"
    with (
        worker(kafka_bootstrap, topics, tmp_path, group=f"g-{uuid.uuid4().hex[:6]}"),
        gateway(kafka_bootstrap, topics, tmp_path) as gw,
    ):
        done = subprocess.run(
            streamscribe_cmd("stream", str(wav), "--url", gw.ws_url, "--token", TOKEN),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        events_out = gw.metric("events_out_total", type="transcript")
        audio_s = gw.metric("audio_seconds_total")
    assert done.returncode == 0, done.stderr
    finals = [line.split(": ", 1)[1] for line in done.stdout.splitlines() if "] mic: " in line]
    text = " ".join(finals)
    print(f"\nstream finals: {text!r}\n{done.stderr.strip()}")
    assert word_errors(references["beckett.wav"], text) <= 1, text
    assert done.stdout.splitlines()[0].startswith("[00:00] mic: ")
    # the audio topic holds exactly the file, in frames with contiguous seq, then the end
    chunks = audio_chunks(kafka_bootstrap, topics)
    sid = chunks[0].session_id
    assert {c.session_id for c in chunks} == {sid}
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.end_of_stream for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert sum(c.n_samples for c in chunks) == sf.info(str(wav)).frames
    assert [c.position for c in chunks[1:]] == list(np.cumsum([c.n_samples for c in chunks[:-1]]))
    assert f"session {sid}: {len(finals)} finals" in done.stderr
    assert audio_s == pytest.approx(sf.info(str(wav)).duration, abs=1e-6)
    assert events_out >= len(finals)


async def _many(urls: list[str], wav: Path, n: int) -> list[StreamReport]:
    jobs = [
        StreamJob(str(wav), urls[i % len(urls)], token=TOKENS[i % 3], pace=PACE_ASAP)
        for i in range(n)
    ]
    return await asyncio.gather(*(stream(j) for j in jobs))


def test_twenty_concurrent_clients_on_two_gateways_each_get_only_their_own_events_in_order(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path, references: dict[str, str]
) -> None:
    with (
        worker(kafka_bootstrap, topics, tmp_path, group=f"g-{uuid.uuid4().hex[:6]}"),
        gateway(kafka_bootstrap, topics, tmp_path, log_name="gw1.log",
                gateway_final_wait_s="300") as gw1,
        gateway(kafka_bootstrap, topics, tmp_path, log_name="gw2.log",
                gateway_final_wait_s="300") as gw2,
    ):  # fmt: skip
        reports = asyncio.run(_many([gw1.ws_url, gw2.ws_url], assets / "beckett.wav", 20))
        assert (gw1.health()["sessions"], gw2.health()["sessions"]) == (0, 0)
        paused = gw1.metric("paused_seconds_total") + gw2.metric("paused_seconds_total")
        per_gateway = (gw1.metric("audio_seconds_total"), gw2.metric("audio_seconds_total"))
    print(f"\n20 clients at asap: reads paused {paused:.1f} s in all (backpressure)")
    assert paused > 0  # 20 x 10 s sent as fast as possible, 5 s of burst each
    assert per_gateway == pytest.approx((10 * 9.963375, 10 * 9.963375))
    sids = [r.session_id for r in reports]
    assert len(set(sids)) == 20
    errors = []
    for r in reports:
        logged = [m for m in r.messages if "n" in m]
        assert [m["n"] for m in logged] == list(range(1, len(logged) + 1))
        assert {m["event"]["session_id"] for m in logged if m["type"] == "transcript"} == {
            r.session_id
        }
        assert logged[-1]["type"] == "session_end" and logged[-1]["complete"] is True
        utts = [f["utterance"] for f in r.finals]
        assert utts == sorted(set(utts)), utts  # each final once, in order
        finalized: set[int] = set()
        for m in logged:  # no partial of a line after its final
            if m["type"] == "transcript":
                assert m["event"]["utterance"] not in finalized, m
                if m["event"]["kind"] == "final":
                    finalized.add(m["event"]["utterance"])
        errors.append(word_errors(references["beckett.wav"], final_text(r)))
        assert r.close_code == 1000
    print(f"\n20 clients: word errors per session {errors}")
    assert max(errors) <= 1, errors
    chunks = audio_chunks(kafka_bootstrap, topics)
    assert {c.session_id for c in chunks} == set(sids)
    for sid, r in zip(sids, reports, strict=True):
        seqs = [c.seq for c in chunks if c.session_id == sid]
        assert seqs == list(range(r.frames_sent + 1))


def test_worker_killed_mid_session_the_client_keeps_its_socket_and_gets_every_final(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path, references: dict[str, str]
) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"
    first = start_worker(kafka_bootstrap, topics, tmp_path, group=group, log_name="w1.log")
    procs = [first]
    try:
        with gateway(kafka_bootstrap, topics, tmp_path, gateway_final_wait_s="300") as gw:
            triggered, restarted = threading.Event(), threading.Event()

            def restart() -> None:
                first.kill9()
                procs.append(
                    start_worker(kafka_bootstrap, topics, tmp_path, group=group,
                                 log_name="w2.log")
                )  # fmt: skip
                restarted.set()

            def on_message(msg: dict[str, Any]) -> None:
                final = msg["type"] == "transcript" and msg["event"]["kind"] == "final"
                if final and not triggered.is_set():  # the first final: kill the worker
                    triggered.set()
                    threading.Thread(target=restart, daemon=True).start()

            job = StreamJob(str(assets / "beckett.wav"), gw.ws_url, token=TOKEN)
            report = asyncio.run(stream(job, on_message))
            assert restarted.is_set()
    finally:
        for p in procs:
            p.stop()
    text = final_text(report)
    print(f"\nworker restart: finals {text!r}, latencies {[round(x) for x in report.latencies_ms]}")
    assert report.close_code == 1000 and report.complete
    assert word_errors(references["beckett.wav"], text) <= 1, text
    utts = [f["utterance"] for f in report.finals]
    assert utts == list(range(len(utts)))


# ---------------------------------------------------------------------- reconnect
async def _reconnect(gw: GatewayProc, pcm: np.ndarray[Any, Any], sid: str) -> dict[str, Any]:
    frame = 1600  # 100 ms
    frames = [pcm[i : i + frame].tobytes() for i in range(0, len(pcm), frame)]
    half = len(frames) // 2
    got: list[dict[str, Any]] = []
    ws, ready1 = await opened(gw.ws_url, TOKEN, session_id=sid)
    for f in frames[:half]:
        await ws.send(f)
    while not any(m.get("type") == "transcript" and m["event"]["kind"] == "final" for m in got):
        got.append(json.loads(await ws.recv()))
    ws.transport.abort()  # the network drops: no close frame, no end
    last_n = got[-1]["n"]
    await asyncio.sleep(0.5)
    ws, ready2 = await reopened(gw.ws_url, TOKEN, session_id=sid, resume_from=last_n)
    for f in frames[half:]:
        await ws.send(f)
    await ws.send('{"type": "end"}')
    try:
        while True:
            got.append(json.loads(await ws.recv()))
    except ConnectionClosed:
        pass
    half_samples = sum(len(f) // 2 for f in frames[:half])
    return {"ready1": ready1, "ready2": ready2, "got": got, "half": half, "code": ws.close_code,
            "frames": len(frames), "half_samples": half_samples}  # fmt: skip


async def _after_grace(gw: GatewayProc, sid: str) -> dict[str, Any]:
    ws, ready1 = await opened(gw.ws_url, TOKEN, session_id=sid)
    await ws.send(b"\x00\x00" * 1600)
    ws.transport.abort()
    while gw.health()["sessions"]:  # the grace period runs out
        await asyncio.sleep(0.2)
    ws, ready2 = await opened(gw.ws_url, TOKEN, session_id=sid, resume_from=0)
    await ws.close()
    return {"ready1": ready1, "ready2": ready2}


def test_reconnect_within_grace_continues_the_session_after_it_a_new_one(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path, references: dict[str, str]
) -> None:
    pcm, _ = sf.read(str(assets / "beckett.wav"), dtype="int16")
    sid, late = f"rc-{uuid.uuid4().hex[:6]}", f"rg-{uuid.uuid4().hex[:6]}"
    with (
        worker(kafka_bootstrap, topics, tmp_path, group=f"g-{uuid.uuid4().hex[:6]}"),
        gateway(
            kafka_bootstrap, topics, tmp_path, gateway_grace_s="3", gateway_final_wait_s="300"
        ) as gw,  # fmt: skip
    ):
        out = asyncio.run(_reconnect(gw, pcm, sid))
        grace = asyncio.run(_after_grace(gw, late))
    r1, r2 = out["ready1"], out["ready2"]
    assert (r1["session_id"], r1["resumed"], r1["next_seq"]) == (sid, False, 0)
    assert (r2["session_id"], r2["resumed"], r2["next_seq"], r2["received_samples"]) == (
        sid, True, out["half"], out["half_samples"],
    )  # fmt: skip
    got = out["got"]
    assert [m["n"] for m in got if "n" in m] == list(
        range(1, len([m for m in got if "n" in m]) + 1)
    )
    finals = [m["event"] for m in got if m.get("type") == "transcript" and
              m["event"]["kind"] == "final"]  # fmt: skip
    assert [f["utterance"] for f in finals] == list(range(len(finals)))
    text = " ".join(f["text"] for f in finals)
    print(f"\nreconnect: finals {text!r}")
    assert word_errors(references["beckett.wav"], text) <= 1, text
    assert got[-1]["type"] == "session_end" and got[-1]["complete"] and out["code"] == 1000
    chunks = [c for c in audio_chunks(kafka_bootstrap, topics) if c.session_id == sid]
    assert [c.seq for c in chunks] == list(range(out["frames"] + 1))  # one stream, no gap
    # after the grace period: the id is not reused, a new session starts
    g1, g2 = grace["ready1"], grace["ready2"]
    assert (g1["session_id"], g1["resumed"]) == (late, False)
    assert g2["resumed"] is False and g2["session_id"].startswith(f"{late}-")
    late_chunks = [c for c in audio_chunks(kafka_bootstrap, topics) if c.session_id == late]
    assert [(c.seq, c.end_of_stream) for c in late_chunks] == [(0, False), (1, True)]


def test_flow_hints_step_the_chunk_duration_and_the_client_follows(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path
) -> None:
    # every final counts as slow (latency > 1 ms): two finals per step, 100 → 200 → 400 ms
    with (
        worker(kafka_bootstrap, topics, tmp_path, group=f"g-{uuid.uuid4().hex[:6]}"),
        gateway(
            kafka_bootstrap, topics, tmp_path, gateway_flow_high_ms="1", gateway_flow_low_ms="0"
        ) as gw,  # fmt: skip
    ):
        report = asyncio.run(stream(StreamJob(str(assets / "beckett.wav"), gw.ws_url,
                                              token=TOKEN)))  # fmt: skip
    flows = [(m["chunk_ms"], m["reason"]) for m in report.messages if m["type"] == "flow"]
    print(f"\nflow hints: {flows}; client chunk sizes {report.chunk_ms_seen}")
    assert len(report.finals) >= 4
    assert flows == [(200, "latency_high"), (400, "latency_high")]
    assert report.chunk_ms_seen[0] == 100 and set(report.chunk_ms_seen) <= {100, 200, 400}
    chunks = audio_chunks(kafka_bootstrap, topics)
    sizes = [c.n_samples for c in chunks[:-2]]  # not the file's short tail nor the end
    assert sizes == sorted(sizes) and set(sizes) <= {1600, 3200, 6400}


async def _through_proxy(gw: GatewayProc, wav: Path) -> tuple[StreamReport, int]:
    proxy = DroppingProxy(gw.port)
    port = await proxy.start()
    loop = asyncio.get_running_loop()
    drops = 0

    def on_message(msg: dict[str, Any]) -> None:
        nonlocal drops
        final = msg["type"] == "transcript" and msg["event"]["kind"] == "final"
        if final and drops == 0:  # the network fails after the first final
            drops += 1
            loop.call_soon(proxy.drop_all)

    report = await stream(StreamJob(str(wav), f"ws://127.0.0.1:{port}/ws", token=TOKEN), on_message)
    return report, drops


def test_the_client_reconnects_after_a_network_drop_and_the_session_goes_on(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path, references: dict[str, str]
) -> None:
    wav = assets / "beckett.wav"
    with (
        worker(kafka_bootstrap, topics, tmp_path, group=f"g-{uuid.uuid4().hex[:6]}"),
        gateway(kafka_bootstrap, topics, tmp_path) as gw,
    ):
        report, drops = asyncio.run(_through_proxy(gw, wav))
    text = final_text(report)
    print(f"\nclient reconnect: {report.reconnects} reconnect(s), finals {text!r}")
    assert (drops, report.reconnects, report.complete, report.close_code) == (1, 1, True, 1000)
    readies = [m for m in report.messages if m["type"] == "ready"]
    assert [r["resumed"] for r in readies] == [False, True]
    assert [f["utterance"] for f in report.finals] == list(range(len(report.finals)))
    assert word_errors(references["beckett.wav"], text) <= 1, text
    chunks = [c for c in audio_chunks(kafka_bootstrap, topics) if c.session_id == report.session_id]
    assert [c.seq for c in chunks] == list(range(len(chunks)))  # one stream: no gap, no repeat
    assert sum(c.n_samples for c in chunks) == sf.info(str(wav)).frames
    numbered = [m["n"] for m in report.messages if "n" in m]
    assert numbered == list(range(1, len(numbered) + 1))  # every event once, none missed


def test_a_stopped_gateway_closes_with_1001_and_ends_its_sessions_on_the_audio_topic(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    async def run(gw: GatewayProc) -> tuple[int | None, str]:
        ws, ready = await opened(gw.ws_url, TOKEN)
        for _ in range(2):
            await ws.send(b"\x00\x00" * 1600)
        await ws.send("not json")  # a round trip: both frames have been read
        assert json.loads(await ws.recv())["code"] == "bad_message"
        await asyncio.to_thread(gw.proc.stop)  # SIGTERM
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return ws.close_code, ready["session_id"]

    with gateway(kafka_bootstrap, topics, tmp_path) as gw:
        code, sid = asyncio.run(run(gw))
    assert code == 1001
    chunks = audio_chunks(kafka_bootstrap, topics)
    assert [(c.session_id, c.seq, c.n_samples, c.end_of_stream) for c in chunks] == [
        (sid, 0, 1600, False), (sid, 1, 1600, False), (sid, 2, 0, True),
    ]  # fmt: skip


def test_session_duration_and_start_limits_close_with_their_codes(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    async def run(gw: GatewayProc) -> dict[str, Any]:
        silent = await closed_with(
            gw.ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
        )  # connects and sends nothing
        ws, ready = await opened(gw.ws_url, TOKEN)
        for _ in range(3):
            await ws.send(b"\x00\x00" * 1600)  # 100 ms each; the limit is 200 ms
        got = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                got.append(json.loads(await ws.recv()))
        return {"silent": silent, "sid": ready["session_id"], "got": got,
                "closed": (ws.close_code, ws.close_reason)}  # fmt: skip

    settings = {"gateway_max_session_s": "0.2", "gateway_final_wait_s": "1",
                "gateway_start_timeout_s": "1"}  # fmt: skip
    with gateway(kafka_bootstrap, topics, tmp_path, **settings) as gw:
        out = asyncio.run(run(gw))
    assert out["silent"] == (4408, "start_timeout: no start message")
    assert [(m["type"], m.get("code")) for m in out["got"]] == [
        ("error", "session_too_long"), ("error", "audio_after_end"), ("session_end", None),
    ]  # fmt: skip
    assert out["got"][-1]["complete"] is False  # no worker: the final wait ran out
    assert out["closed"] == (4410, "session_too_long")
    chunks = audio_chunks(kafka_bootstrap, topics)
    assert [(c.seq, c.n_samples, c.end_of_stream) for c in chunks] == [
        (0, 1600, False), (1, 1600, False), (2, 0, True),
    ]  # fmt: skip
    assert {c.session_id for c in chunks} == {out["sid"]}


def test_a_stereo_mulaw_call_gets_each_roles_finals_and_its_bytes_pass_as_they_are(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path, references: dict[str, str]
) -> None:
    from streamscribe.schemas.pcm import mulaw_encode
    from tests.audio_files import write_mulaw_wav

    pcm, _ = sf.read(str(assets / "beckett.wav"), dtype="int16")
    shift = 8000  # the customer says it half a second later
    agent = np.concatenate([pcm, np.zeros(shift, np.int16)])
    customer = np.concatenate([np.zeros(shift, np.int16), pcm])
    codes = np.stack([np.frombuffer(mulaw_encode(ch), np.uint8) for ch in (agent, customer)], 1)
    call = tmp_path / "call.wav"
    write_mulaw_wav(call, codes, 16000)
    with (
        worker(kafka_bootstrap, topics, tmp_path, group=f"g-{uuid.uuid4().hex[:6]}"),
        gateway(kafka_bootstrap, topics, tmp_path) as gw,
    ):
        report = asyncio.run(stream(StreamJob(str(call), gw.ws_url, token=TOKEN, pace=PACE_ASAP)))
    by_role = {
        role: " ".join(f["text"] for f in report.finals if f["role"] == role)
        for role in ("agent", "customer")
    }
    print(f"\nstereo µ-law call: {by_role}")
    for role, text in by_role.items():
        assert word_errors(references["beckett.wav"], text) <= 2, (role, text)
    chunks = audio_chunks(kafka_bootstrap, topics)
    assert {(c.channel, c.role, c.encoding, c.sample_rate) for c in chunks} == {
        (0, "agent", "pcm_mulaw", 16000), (1, "customer", "pcm_mulaw", 16000),
    }  # fmt: skip
    for ch in (0, 1):
        payload = b"".join(c.payload for c in chunks if c.channel == ch)
        assert payload == codes[:, ch].tobytes()  # the call's bytes, as they were
