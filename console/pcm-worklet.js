// Runs on the audio thread: converts the microphone's float samples to PCM16 and posts them to
// the page in 250 ms blocks (for browsers that cannot record WebM/Opus or MP4). A 'flush'
// message posts the partial block so the end of speech is not lost when recording stops.
class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 4);
    this.block = new Int16Array(this.size);
    this.filled = 0;
    this.port.onmessage = (e) => {
      if (e.data === 'flush') this.post(true);
    };
  }

  post(final) {
    const out = this.block.slice(0, this.filled);
    this.port.postMessage({ pcm: out.buffer, final }, [out.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        const s = Math.max(-1, Math.min(1, channel[i]));
        this.block[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
        if (this.filled === this.size) this.post(false);
      }
    }
    return true;
  }
}

registerProcessor('pcm16-capture', Pcm16Capture);
