// Microphone capture for the streamscribe page: resamples the AudioContext's rate to
// 16 kHz (windowed-sinc low-pass, 8 zero crossings each side) and posts Int16 PCM frames
// of the hinted duration to the page ({chunkMs} sets it; {flush} posts what is left).
const OUT_RATE = 16000;

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / OUT_RATE;                  // input samples per output sample
    this.fc = 0.46 / Math.max(1, this.ratio);            // cut-off, cycles per input sample
    this.half = Math.ceil(8 / (2 * this.fc));            // kernel half-width, input samples
    this.buf = new Float32Array(0);
    this.base = 0;                                       // absolute index of buf[0]
    this.t = 0;                                          // next output, in input samples
    this.setChunk(100);
    this.port.onmessage = (e) => {
      if (e.data.chunkMs) this.setChunk(e.data.chunkMs);
      if (e.data.flush) this.post(this.len);
    };
  }

  setChunk(ms) {
    const old = this.out ? this.out.subarray(0, this.len) : new Int16Array(0);
    this.chunk = Math.max(16, Math.round(OUT_RATE * ms / 1000));
    this.out = new Int16Array(Math.max(this.chunk, old.length));
    this.out.set(old);
    this.len = old.length;
    while (this.len >= this.chunk) this.post(this.chunk);
  }

  post(n) {
    if (n <= 0) return;
    const frame = this.out.slice(0, n);
    this.out.copyWithin(0, n, this.len);
    this.len -= n;
    this.port.postMessage(frame, [frame.buffer]);
  }

  kernel(d) {
    if (d === 0) return 2 * this.fc;
    const x = 2 * Math.PI * this.fc * d;
    const w = 0.5 + 0.5 * Math.cos(Math.PI * d / this.half);  // Hann window
    return (Math.sin(x) / (Math.PI * d)) * w;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    const grown = new Float32Array(this.buf.length + input.length);
    grown.set(this.buf);
    grown.set(input, this.buf.length);
    this.buf = grown;
    const end = this.base + this.buf.length;
    while (this.t + this.half < end) {
      const lo = Math.max(this.base, Math.ceil(this.t - this.half));
      const hi = Math.floor(this.t + this.half);
      let acc = 0, norm = 0;
      for (let j = lo; j <= hi; j++) {
        const k = this.kernel(this.t - j);
        acc += this.buf[j - this.base] * k;
        norm += k;
      }
      const v = Math.max(-1, Math.min(1, norm ? acc / norm : 0));
      this.out[this.len++] = v < 0 ? v * 0x8000 : v * 0x7fff;
      if (this.len >= this.chunk) this.post(this.chunk);
      this.t += this.ratio;
    }
    const keep = Math.max(this.base, Math.floor(this.t - this.half));
    this.buf = this.buf.slice(keep - this.base);
    this.base = keep;
    return true;
  }
}

registerProcessor("streamscribe-capture", Capture);
