#!/usr/bin/env node
// libdatachannel (the WebRTC stack of OBS's WHIP output) against a WAVE
// node, through its Node bindings (npm `node-datachannel`, which bundles a
// prebuilt libdatachannel with OpenSSL DTLS).
//
//   node ldc.mjs ldc-publish --url URL --token T --seconds S
//   node ldc.mjs ldc-watch   --url URL --token T --seconds S
//
// ldc-publish does what OBS's WHIP output does: a sendonly Opus track (mid 0)
// and a sendonly H.264 track (mid 1), each with libdatachannel's RTP
// packetizer, RTCP sender-report and NACK-responder handlers; it POSTs the
// offer, applies the answer and sends real H.264 access units (libx264
// baseline from Debian's ffmpeg: a 320x240 testsrc2 picture, 30 fps, a
// keyframe each second) and Opus packets (a 440 Hz tone), timestamped at
// 90 kHz and 48 kHz and paced in real time.
//
// ldc-watch receives over WHEP: libdatachannel hands it the RTP packets of
// its recvonly H.264 track (with an RtcpReceivingSession sending receiver
// reports); it depacketizes them (RFC 6184: single NAL units, STAP-A, FU-A)
// into an Annex-B stream that Debian's ffmpeg decodes; it counts the decoded
// frames, their size and how much their luma varies.
//
// Each prints one JSON line on stdout, as tests/interop/wave_interop.py's
// clients do; the Rust interop tests assert on it. A missing package exits 3.

import { spawn, spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';

const WIDTH = 320;
const HEIGHT = 240;
const FPS = 30;
const VIDEO_PT = 96;
const AUDIO_PT = 111;
const MAX_FRAGMENT = 1200; // OBS's MAX_VIDEO_FRAGMENT_SIZE

function report(fields) {
  const base = { ice: null, dtls: null, frames: 0, width: 0, height: 0, luma_stddev: 0.0, error: null };
  process.stdout.write(JSON.stringify({ ...base, ...fields }) + '\n');
}

async function load() {
  try {
    return (await import('node-datachannel')).default;
  } catch (e) {
    report({ client: 'libdatachannel', role: '?', error: `missing package: ${e.message}` });
    process.exit(3);
  }
}

function log(...what) {
  process.stderr.write(`ldc: ${what.join(' ')}\n`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// The local description once ICE gathering is complete (no trickle, as
/// OBS's WHIP output sends a complete offer).
function gatheredOffer(pc) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('ICE gathering did not complete in 5 s')), 5000);
    pc.onGatheringStateChange((state) => {
      if (state === 'complete') {
        clearTimeout(timer);
        resolve(pc.localDescription().sdp);
      }
    });
    pc.setLocalDescription();
  });
}

/// POSTs the offer (WHIP or WHEP), applies the answer; returns the
/// session's URL (for DELETE). With WAVE_INTEROP_SDP set, both go to stderr.
async function negotiate(pc, url, token) {
  const offer = await gatheredOffer(pc);
  if (process.env.WAVE_INTEROP_SDP) log(`--- offer to ${url}\n${offer}`);
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(url, { method: 'POST', headers, body: offer });
  const answer = await resp.text();
  if (resp.status !== 201) throw new Error(`${url}: HTTP ${resp.status}: ${answer}`);
  if (process.env.WAVE_INTEROP_SDP) log(`--- answer\n${answer}`);
  pc.setRemoteDescription(answer, 'answer');
  const location = resp.headers.get('location');
  return location ? new URL(location, url).href : null;
}

async function hangUp(session, token) {
  if (!session) return;
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  try {
    await fetch(session, { method: 'DELETE', headers });
  } catch (e) {
    log(`DELETE ${session}: ${e.message}`);
  }
}

function waitOpen(track, what) {
  return new Promise((resolve, reject) => {
    if (track.isOpen()) return resolve();
    const timer = setTimeout(() => reject(new Error(`${what} track did not open in 10 s`)), 10000);
    track.onOpen(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function ffmpeg(args, input) {
  const out = spawnSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', ...args], {
    input,
    maxBuffer: 256 << 20,
  });
  if (out.error) throw new Error(`ffmpeg: ${out.error.message}`);
  if (out.status !== 0) throw new Error(`ffmpeg exited ${out.status}: ${out.stderr}`);
  return out.stdout;
}

/// NAL units of an Annex-B stream (without their start codes).
function nalUnits(stream) {
  const starts = [];
  for (let i = 0; i + 2 < stream.length; i++) {
    if (stream[i] === 0 && stream[i + 1] === 0 && stream[i + 2] === 1) {
      starts.push(i + 3);
      i += 2;
    }
  }
  return starts.map((s, k) => {
    let end = k + 1 < starts.length ? starts[k + 1] - 3 : stream.length;
    while (end > s && stream[end - 1] === 0) end--; // a 4-byte start code's leading zero
    return stream.subarray(s, end);
  });
}

/// `frames` access units of libx264 baseline (no B-frames, a keyframe
/// each second), each an Annex-B buffer of its NAL units. x264 writes an
/// access unit delimiter before each picture: that is where one ends.
function h264AccessUnits(frames) {
  const stream = ffmpeg([
    '-f', 'lavfi', '-i', `testsrc2=size=${WIDTH}x${HEIGHT}:rate=${FPS}`,
    '-frames:v', String(frames), '-pix_fmt', 'yuv420p',
    '-c:v', 'libx264', '-profile:v', 'baseline', '-preset', 'ultrafast', '-tune', 'zerolatency',
    '-bf', '0', '-g', String(FPS), '-b:v', '600k', '-x264-params', 'aud=1:sliced-threads=0',
    '-f', 'h264', '-',
  ]);
  const units = [];
  let current = [];
  for (const nal of nalUnits(stream)) {
    if ((nal[0] & 0x1f) === 9) { // AUD: the previous access unit is complete
      if (current.length) units.push(current);
      current = [];
      continue;
    }
    current.push(nal);
  }
  if (current.length) units.push(current);
  const start = Buffer.from([0, 0, 0, 1]);
  return units.map((nals) => Buffer.concat(nals.flatMap((n) => [start, n])));
}

/// Opus packets (20 ms each) of a 440 Hz tone: libopus in Ogg from ffmpeg,
/// the Ogg pages taken apart here (the first two packets are OpusHead and
/// OpusTags).
function opusPackets(seconds) {
  const ogg = ffmpeg([
    '-f', 'lavfi', '-i', `sine=frequency=440:sample_rate=48000:duration=${seconds}`,
    '-ac', '2', '-c:a', 'libopus', '-b:a', '64k', '-frame_duration', '20', '-f', 'ogg', '-',
  ]);
  const packets = [];
  let pending = [];
  let pos = 0;
  while (pos + 27 <= ogg.length) {
    if (ogg.toString('latin1', pos, pos + 4) !== 'OggS') throw new Error(`bad Ogg page at ${pos}`);
    const segments = ogg[pos + 26];
    const table = ogg.subarray(pos + 27, pos + 27 + segments);
    let body = pos + 27 + segments;
    for (const len of table) {
      pending.push(ogg.subarray(body, body + len));
      body += len;
      if (len < 255) {
        packets.push(Buffer.concat(pending));
        pending = [];
      }
    }
    pos = body;
  }
  return packets.slice(2);
}

async function publish(ndc, args) {
  const seconds = Number(args.seconds);
  const frames = Math.ceil(seconds * FPS) + FPS;
  let sent = 0;
  let audioSent = 0;
  let error = null;
  let pc = null;
  let session = null;
  try {
    const video = h264AccessUnits(frames);
    const audio = opusPackets(Math.ceil(seconds) + 1);
    pc = new ndc.PeerConnection('wave-ldc-publish', { iceServers: [] });
    const cname = 'wave-ldc';
    const msid = 'wave-ldc-stream';

    // As OBS's WHIP output sets its tracks up (obs-webrtc whip-output.cpp).
    const audioSsrc = 0x1a2b3c01;
    const audioDesc = new ndc.Audio('0', 'SendOnly');
    audioDesc.addOpusCodec(AUDIO_PT);
    audioDesc.addSSRC(audioSsrc, cname, msid, 'wave-ldc-audio');
    const audioTrack = pc.addTrack(audioDesc);
    const audioConfig = new ndc.RtpPacketizationConfig(audioSsrc, cname, AUDIO_PT, 48000);
    const audioPacketizer = new ndc.RtpPacketizer(audioConfig);
    audioPacketizer.addToChain(new ndc.RtcpSrReporter(audioConfig));
    audioPacketizer.addToChain(new ndc.RtcpNackResponder());
    audioTrack.setMediaHandler(audioPacketizer);

    const videoSsrc = 0x1a2b3c02;
    const videoDesc = new ndc.Video('1', 'SendOnly');
    videoDesc.addH264Codec(VIDEO_PT);
    videoDesc.addSSRC(videoSsrc, cname, msid, 'wave-ldc-video');
    const videoTrack = pc.addTrack(videoDesc);
    const videoConfig = new ndc.RtpPacketizationConfig(videoSsrc, cname, VIDEO_PT, 90000);
    const packetizer = new ndc.H264RtpPacketizer('StartSequence', videoConfig, MAX_FRAGMENT);
    packetizer.addToChain(new ndc.RtcpSrReporter(videoConfig));
    packetizer.addToChain(new ndc.RtcpNackResponder());
    videoTrack.setMediaHandler(packetizer);

    session = await negotiate(pc, args.url, args.token);
    await Promise.all([waitOpen(videoTrack, 'video'), waitOpen(audioTrack, 'audio')]);
    log(`connected (${pc.state()}), sending ${video.length} access units`);

    // Real time: access unit i is due at t0 + i/30 s with RTP time
    // base + 3000 i; Opus packet j at t0 + 20 j ms with base + 960 j. The
    // packetizer stamps what it sends with its config's timestamp, which is
    // how OBS feeds it (rtcSetTrackRtpTimestamp, then rtcSendMessage).
    const videoBase = videoConfig.timestamp;
    const audioBase = audioConfig.timestamp;
    const t0 = performance.now();
    const end = t0 + seconds * 1000;
    while (performance.now() < end && pc.state() === 'connected') {
      const now = performance.now() - t0;
      while (audioSent < audio.length && audioSent * 20 <= now) {
        audioConfig.timestamp = (audioBase + audioSent * 960) >>> 0;
        audioTrack.sendMessageBinary(audio[audioSent]);
        audioSent++;
      }
      if (sent < video.length && (sent * 1000) / FPS <= now) {
        videoConfig.timestamp = (videoBase + sent * (90000 / FPS)) >>> 0;
        if (!videoTrack.sendMessageBinary(video[sent])) throw new Error(`video send ${sent} failed`);
        sent++;
      }
      const nextVideo = (sent * 1000) / FPS;
      const nextAudio = audioSent * 20;
      await sleep(Math.max(0, Math.min(nextVideo, nextAudio) - (performance.now() - t0)));
    }
    if (performance.now() < end) throw new Error(`peer connection ${pc.state()} after ${sent} frames`);
  } catch (e) {
    error = e.message;
  }
  const ice = pc ? pc.iceState() : null;
  const dtls = pc ? pc.state() : null;
  log(`sent ${sent} video access units, ${audioSent} Opus packets`);
  await hangUp(session, args.token);
  report({ client: 'libdatachannel', role: 'publish', ice, dtls, frames: sent, width: WIDTH, height: HEIGHT, error, audio_frames: audioSent });
  if (pc) pc.close();
}

/// Reassembles H.264 NAL units from RTP payloads (RFC 6184, packetization
/// mode 1). A gap in sequence numbers drops the fragmented unit in progress.
class H264Depacketizer {
  constructor(onNal) {
    this.onNal = onNal;
    this.fu = null;
    this.lastSeq = null;
  }

  push(packet) {
    const cc = packet[0] & 0x0f;
    const hasExtension = (packet[0] & 0x10) !== 0;
    const padded = (packet[0] & 0x20) !== 0;
    const seq = packet.readUInt16BE(2);
    let offset = 12 + 4 * cc;
    if (hasExtension) offset += 4 + 4 * packet.readUInt16BE(offset + 2);
    let end = packet.length;
    if (padded) end -= packet[end - 1];
    if (offset >= end) return;
    if (this.lastSeq !== null && seq !== ((this.lastSeq + 1) & 0xffff)) this.fu = null;
    this.lastSeq = seq;
    const payload = packet.subarray(offset, end);
    const type = payload[0] & 0x1f;
    if (type >= 1 && type <= 23) {
      this.onNal(payload);
    } else if (type === 24) { // STAP-A
      for (let p = 1; p + 2 <= payload.length;) {
        const size = payload.readUInt16BE(p);
        this.onNal(payload.subarray(p + 2, p + 2 + size));
        p += 2 + size;
      }
    } else if (type === 28) { // FU-A
      const start = (payload[1] & 0x80) !== 0;
      const last = (payload[1] & 0x40) !== 0;
      if (start) this.fu = [Buffer.from([(payload[0] & 0xe0) | (payload[1] & 0x1f)])];
      if (!this.fu) return;
      this.fu.push(payload.subarray(2));
      if (last) {
        this.onNal(Buffer.concat(this.fu));
        this.fu = null;
      }
    }
  }
}

/// Debian's ffmpeg decoding an Annex-B stream from stdin into PGM (luma)
/// frames on stdout.
class Decoder {
  constructor() {
    this.frames = 0;
    this.width = 0;
    this.height = 0;
    this.stddev = 0;
    this.buf = Buffer.alloc(0);
    this.proc = spawn('ffmpeg', [
      '-hide_banner', '-loglevel', 'error', '-f', 'h264', '-i', '-',
      '-fps_mode', 'passthrough', '-pix_fmt', 'gray', '-c:v', 'pgm', '-f', 'image2pipe', '-',
    ], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.proc.stdin.on('error', () => {});
    this.proc.stdout.on('data', (chunk) => this.take(chunk));
    this.done = new Promise((resolve) => this.proc.on('close', resolve));
  }

  write(nal) {
    this.proc.stdin.write(Buffer.concat([Buffer.from([0, 0, 0, 1]), nal]));
  }

  take(chunk) {
    this.buf = Buffer.concat([this.buf, chunk]);
    for (;;) {
      // "P5\n<w> <h>\n255\n" then w*h bytes.
      const header = this.buf.toString('latin1', 0, Math.min(this.buf.length, 32));
      const m = /^P5\s+(\d+)\s+(\d+)\s+(\d+)\s/.exec(header);
      if (!m) return;
      const w = Number(m[1]);
      const h = Number(m[2]);
      const size = m[0].length + w * h;
      if (this.buf.length < size) return;
      const luma = this.buf.subarray(m[0].length, size);
      this.frames++;
      this.width = w;
      this.height = h;
      if (this.frames % 10 === 1) this.stddev = lumaStddev(luma);
      this.buf = this.buf.subarray(size);
    }
  }

  async finish() {
    this.proc.stdin.end();
    await this.done;
  }
}

function lumaStddev(y) {
  const step = Math.max(1, Math.floor(y.length / 4096));
  let n = 0;
  let sum = 0;
  let sq = 0;
  for (let i = 0; i < y.length; i += step) {
    sum += y[i];
    sq += y[i] * y[i];
    n++;
  }
  const mean = sum / n;
  return Math.sqrt(Math.max(0, sq / n - mean * mean));
}

async function watch(ndc, args) {
  const seconds = Number(args.seconds);
  let error = null;
  let pc = null;
  let session = null;
  let packets = 0;
  const decoder = new Decoder();
  const depacketizer = new H264Depacketizer((nal) => decoder.write(nal));
  try {
    pc = new ndc.PeerConnection('wave-ldc-watch', { iceServers: [] });
    const videoDesc = new ndc.Video('0', 'RecvOnly');
    videoDesc.addH264Codec(VIDEO_PT);
    const videoTrack = pc.addTrack(videoDesc);
    videoTrack.setMediaHandler(new ndc.RtcpReceivingSession());
    videoTrack.onMessage((msg) => {
      // RTP only: RTCP (payload types 200-206 with the marker bit) is not video.
      if (msg.length < 12 || (msg[1] >= 192 && msg[1] <= 223)) return;
      packets++;
      depacketizer.push(msg);
    });
    session = await negotiate(pc, args.url, args.token);
    await waitOpen(videoTrack, 'video');
    log(`connected (${pc.state()})`);
    await sleep(seconds * 1000);
  } catch (e) {
    error = e.message;
  }
  const ice = pc ? pc.iceState() : null;
  const dtls = pc ? pc.state() : null;
  await hangUp(session, args.token);
  if (pc) pc.close();
  await decoder.finish();
  log(`received ${packets} RTP packets, decoded ${decoder.frames} frames`);
  report({
    client: 'libdatachannel', role: 'watch', ice, dtls, frames: decoder.frames,
    width: decoder.width, height: decoder.height, luma_stddev: decoder.stddev, error,
  });
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      url: { type: 'string' },
      token: { type: 'string' },
      seconds: { type: 'string', default: '8' },
    },
  });
  const command = positionals[0];
  if (!values.url || !['ldc-publish', 'ldc-watch'].includes(command)) {
    process.stderr.write('usage: ldc.mjs ldc-publish|ldc-watch --url URL [--token T] [--seconds S]\n');
    process.exit(2);
  }
  const ndc = await load();
  if (process.env.WAVE_INTEROP_LDC_LOG) ndc.initLogger(process.env.WAVE_INTEROP_LDC_LOG);
  if (command === 'ldc-publish') await publish(ndc, values);
  else await watch(ndc, values);
  ndc.cleanup();
  process.exit(0);
}

main();
