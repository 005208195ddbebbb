// Audio worklets: the player (speech from the gateway, 8 kHz) and the microphone tap.
class RelayPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.offset = 0;
    this.record = false;
    this.port.onmessage = (e) => {
      if (e.data.pcm) this.queue.push(e.data.pcm);
      if (e.data.record !== undefined) this.record = e.data.record;
    };
  }
  process(inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length && this.queue.length) {
      const head = this.queue[0];
      const n = Math.min(out.length - i, head.length - this.offset);
      out.set(head.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      if (this.offset >= head.length) { this.queue.shift(); this.offset = 0; }
    }
    if (i > 0 && this.record) this.port.postMessage(out.slice(0, i));
    for (; i < out.length; i++) out[i] = 0;
    return true;
  }
}
registerProcessor("relay-player", RelayPlayer);

class RelayMic extends AudioWorkletProcessor {
  constructor() {
    super();
    this.on = false;
    this.port.onmessage = (e) => { this.on = e.data.on; };
  }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (this.on && input) this.port.postMessage(input.slice(0));
    return true;
  }
}
registerProcessor("relay-mic", RelayMic);
