// Microphone capture in the best format this browser can produce for /transcription:
// MediaRecorder WebM/Opus with the original frontend's 1 s timeslice, else MediaRecorder MP4
// (Safari), else raw PCM16 from an AudioWorklet declared with a `start` message.

const TIMESLICE_MS = 1000;

/** Which capture path this browser supports, or null when it can record nothing. */
export function captureFormat() {
  if (typeof MediaRecorder !== 'undefined') {
    for (const mime of ['audio/webm;codecs=opus', 'audio/mp4']) {
      if (MediaRecorder.isTypeSupported(mime)) return { kind: 'recorder', mime };
    }
  }
  if (typeof AudioWorkletNode !== 'undefined') return { kind: 'pcm', mime: 'audio/pcm' };
  return null;
}

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(',', 2)[1] || '');
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/**
 * One recording. `sendJson(obj)` and `sendBinary(buffer)` write to the audio socket; chunks are
 * sent strictly in order, and `stop()` resolves after the last one and the `finalize`.
 */
export class Recorder {
  constructor(sendJson, sendBinary) {
    this.sendJson = sendJson;
    this.sendBinary = sendBinary;
    this.queue = Promise.resolve();
    this.stream = null;
  }

  async start() {
    const format = captureFormat();
    if (!format) throw new Error('This browser cannot record audio.');
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    if (format.kind === 'recorder') await this.startRecorder(format.mime);
    else await this.startPcm();
    return format;
  }

  startRecorder(mime) {
    const rec = new MediaRecorder(this.stream, { mimeType: mime });
    this.sendJson({ type: 'start', mimeType: rec.mimeType || mime });
    rec.ondataavailable = (e) => {
      if (!e.data || e.data.size === 0) return;
      this.queue = this.queue.then(async () => {
        const audio = await blobToBase64(e.data);
        this.sendJson({ type: 'input_audio_buffer.append', audio });
      });
    };
    this.done = new Promise((resolve) => {
      rec.onstop = () => resolve();
    });
    this.stopCapture = () => rec.stop();
    rec.start(TIMESLICE_MS);
  }

  async startPcm() {
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule('/app/pcm-worklet.js');
    const source = ctx.createMediaStreamSource(this.stream);
    const node = new AudioWorkletNode(ctx, 'pcm16-capture');
    this.sendJson({ type: 'start', mimeType: `audio/pcm;rate=${ctx.sampleRate}`, sampleRate: ctx.sampleRate });
    let finished;
    this.done = new Promise((resolve) => {
      finished = resolve;
    });
    node.port.onmessage = (e) => {
      if (e.data.pcm.byteLength > 0) this.sendBinary(e.data.pcm);
      if (e.data.final) {
        source.disconnect();
        node.disconnect();
        ctx.close();
        finished();
      }
    };
    source.connect(node);
    this.stopCapture = () => node.port.postMessage('flush');
  }

  async stop() {
    this.stopCapture?.();
    await this.done;
    await this.queue;
    this.stream?.getTracks().forEach((t) => t.stop());
    this.sendJson({ type: 'input_audio_buffer.finalize' });
  }
}
