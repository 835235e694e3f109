// The streamscribe live page: microphone → AudioWorklet (16 kHz PCM16) → WebSocket →
// the gateway; partials greyed and updated in place, finals in black with [MM:SS] and role,
// and a plot of end of speech → final latency. Protocol: docs/websocket.md.
"use strict";

const RATE = 16000;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  ws: null, ctx: null, stream: null, node: null, ready: false, queue: [],
  sentEnds: [], sentTimes: [], samples: 0, latencies: [], lastN: 0, sessionId: null,
  history: [], graceS: 0, retryUntil: 0, reconnects: 0,
};
const RETRY_MS = 300;

function setState(name, text) {
  document.body.dataset.state = name;
  if (text) $("status").textContent = text;
}

function mmss(ms) {
  const s = Math.floor(ms / 1000);
  return String(Math.floor(s / 60)).padStart(2, "0") + ":" + String(s % 60).padStart(2, "0");
}

function sendFrame(frame) {
  // kept for a grace period: after a reconnect, what the gateway missed is sent again
  state.history.push({ start: state.samples, frame });
  const keepFrom = state.samples - 2 * state.graceS * RATE;
  while (state.history.length && state.history[0].start < keepFrom) state.history.shift();
  state.ws.send(frame.slice().buffer);
  state.samples += frame.length;
  state.sentEnds.push(state.samples);
  state.sentTimes.push(performance.now());
  document.body.dataset.sentSeconds = (state.samples / RATE).toFixed(2);
}

function sentAt(ms) {  // when the frame holding stream time `ms` was sent
  const sample = Math.floor(ms * RATE / 1000);
  let lo = 0, hi = state.sentEnds.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (state.sentEnds[mid] < sample) lo = mid + 1; else hi = mid;
  }
  return lo < state.sentTimes.length ? state.sentTimes[lo] : null;
}

function lineKey(ev) { return ev.channel + "/" + ev.utterance; }

function showPartial(ev) {
  let el = document.querySelector(`.partial[data-line="${lineKey(ev)}"]`);
  if (!el) {
    el = document.createElement("p");
    el.className = "partial";
    el.dataset.line = lineKey(ev);
    $("partials").appendChild(el);
  }
  el.textContent = `[${mmss(ev.start_ms)}] ${ev.role}: ${ev.text}`;
}

function showFinal(ev) {
  const partial = document.querySelector(`.partial[data-line="${lineKey(ev)}"]`);
  if (partial) partial.remove();
  const p = document.createElement("p");
  p.className = "final";
  p.dataset.line = lineKey(ev);
  p.dataset.text = ev.text;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `[${mmss(ev.start_ms)}]`;
  const role = document.createElement("span");
  role.className = "role";
  role.textContent = ev.role + ":";
  p.append(time, " ", role, " ", document.createTextNode(ev.text));
  $("finals").appendChild(p);
  const at = sentAt(ev.end_ms);
  if (at !== null) {
    state.latencies.push(performance.now() - at);
    drawPlot();
  }
}

function drawPlot() {
  const c = $("plot"), g = c.getContext("2d"), v = state.latencies.slice(-40);
  g.clearRect(0, 0, c.width, c.height);
  const top = Math.max(1000, ...v) * 1.1;
  g.strokeStyle = "#ddd";
  g.fillStyle = "#888";
  g.font = "10px system-ui";
  for (let ms = 0; ms <= top; ms += top > 4000 ? 2000 : 500) {
    const y = c.height - (ms / top) * c.height;
    g.beginPath(); g.moveTo(0, y); g.lineTo(c.width, y); g.stroke();
    g.fillText(ms + " ms", 2, y - 2);
  }
  g.strokeStyle = "#c0392b";
  g.fillStyle = "#c0392b";
  g.beginPath();
  v.forEach((ms, i) => {
    const x = 30 + (i * (c.width - 40)) / Math.max(1, v.length - 1);
    const y = c.height - (ms / top) * c.height;
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  v.forEach((ms, i) => {
    const x = 30 + (i * (c.width - 40)) / Math.max(1, v.length - 1);
    g.fillRect(x - 2, c.height - (ms / top) * c.height - 2, 4, 4);
  });
  const last = v[v.length - 1];
  const sorted = [...state.latencies].sort((a, b) => a - b);
  $("latency").textContent =
    `last ${Math.round(last)} ms · median ${Math.round(sorted[sorted.length >> 1])} ms · ` +
    `${state.latencies.length} finals`;
}

function onMessage(e) {
  const msg = JSON.parse(e.data);
  if (msg.n) state.lastN = msg.n;
  if (msg.type === "ready") {
    state.sessionId = msg.session_id;
    state.graceS = msg.grace_s;
    state.node.port.postMessage({ chunkMs: msg.chunk_ms });
    if (msg.resumed) {  // go on from what the gateway received
      const got = msg.received_samples;
      const again = state.history.filter((h) => h.start >= got);
      state.history = state.history.filter((h) => h.start < got);
      state.samples = got;
      while (state.sentEnds.length && state.sentEnds[state.sentEnds.length - 1] > got) {
        state.sentEnds.pop();
        state.sentTimes.pop();
      }
      again.forEach((h) => sendFrame(h.frame));
    }
    state.ready = true;
    state.retryUntil = 0;
    document.body.dataset.reconnects = String(state.reconnects);
    state.queue.splice(0).forEach(sendFrame);
    if (state.ending) sendEnd();
    setState("streaming", `Listening — session ${msg.session_id}` +
      (state.reconnects ? ` (reconnected ${state.reconnects}×)` : ""));
  } else if (msg.type === "flow") {
    state.node.port.postMessage({ chunkMs: msg.chunk_ms });
  } else if (msg.type === "transcript") {
    if (msg.event.kind === "final") showFinal(msg.event); else showPartial(msg.event);
  } else if (msg.type === "reply") {
    // the assistant's spoken answer (assistant --speak): a WAV, played as it comes
    new Audio(`data:${msg.content_type};base64,${msg.audio}`).play().catch(() => {});
    $("status").textContent = `Assistant: ${msg.text}`;
  } else if (msg.type === "error") {
    $("status").textContent = `Gateway: ${msg.code}: ${msg.message}`;
  } else if (msg.type === "session_end") {
    setState("ended", `Session ${msg.session_id} complete: ${msg.finals} finals.`);
  }
}

async function start() {
  $("start").disabled = true;
  setState("starting", "Starting the microphone…");
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false,
               channelCount: 1 },
    });
    state.ctx = new AudioContext();
    await state.ctx.audioWorklet.addModule("/static/worklet.js");
    state.node = new AudioWorkletNode(state.ctx, "streamscribe-capture");
    state.node.port.onmessage = (e) => (state.ready ? sendFrame(e.data) : state.queue.push(e.data));
    const mute = state.ctx.createGain();
    mute.gain.value = 0;
    state.ctx.createMediaStreamSource(state.stream).connect(state.node).connect(mute)
      .connect(state.ctx.destination);
  } catch (err) {
    setState("error", `Microphone unavailable: ${err.message}`);
    $("start").disabled = false;
    return;
  }
  connect();
  $("stop").disabled = false;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const token = params.get("token") || "";
  const ws = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(token)}`);
  state.ws = ws;
  state.ready = false;
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    const start = {
      type: "start", sample_rate: RATE, encoding: "pcm_s16le", channels: 1, roles: ["mic"],
      metadata: { source: "browser" },
    };
    if (state.sessionId) Object.assign(start, { session_id: state.sessionId, resume_from: state.lastN });
    ws.send(JSON.stringify(start));
  };
  ws.onmessage = onMessage;
  ws.onclose = (e) => {
    document.body.dataset.closeCode = String(e.code);
    const lost = e.code === 1006 && state.sessionId && document.body.dataset.state !== "ended";
    const busy = e.code === 4409 && state.retryUntil;  // the gateway has not seen the drop yet
    if ((lost || busy) && (!state.retryUntil || Date.now() < state.retryUntil)) {
      if (lost && !state.retryUntil) state.reconnects += 1;
      if (!state.retryUntil) state.retryUntil = Date.now() + state.graceS * 1000;
      setState("reconnecting", "Connection lost: reconnecting…");
      setTimeout(connect, RETRY_MS);
      return;
    }
    if (document.body.dataset.state !== "ended") {
      setState("closed", `Closed by the gateway: ${e.code} ${e.reason || ""}`);
    }
    stopCapture();
    $("start").disabled = false;
    $("stop").disabled = true;
  };
}

function stopCapture() {
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  if (state.ctx && state.ctx.state !== "closed") state.ctx.close();
  state.stream = null;
}

function sendEnd() {
  state.ws.send(JSON.stringify({ type: "end" }));
  setState("finishing", "Finishing: waiting for the last finals…");
}

function stop() {
  $("stop").disabled = true;
  if (state.node) state.node.port.postMessage({ flush: true });
  // let the flushed frame arrive before the end message
  setTimeout(() => {
    stopCapture();
    state.ending = true;
    if (state.ready && state.ws.readyState === WebSocket.OPEN) sendEnd();
  }, 100);
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
