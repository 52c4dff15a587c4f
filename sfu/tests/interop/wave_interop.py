#!/usr/bin/env python3
"""Third-party WebRTC clients publishing to and watching a WAVE node.

Each subcommand runs one real client (GStreamer webrtcbin, aiortc, FFmpeg's
`whip` muxer through PyAV) against `--url` (a WHIP or WHEP endpoint) for
`--seconds`, then prints one JSON line on stdout describing what it saw:

    {"client": "...", "role": "publish"|"watch", "ice": "...", "dtls": "...",
     "frames": N, "width": W, "height": H, "luma_stddev": S, "error": null}

The aiortc and GStreamer viewers add "audio_frames" (decoded audio
frames); the aiortc viewer adds "first_frame_ms" (from its offer to its
first decoded video frame).

Publishers send a 320x240 test pattern (colour bars) at 30 fps plus a tone;
viewers decode what arrives and report how many frames they decoded, their
size and how much the picture varies (a real picture, not a blank one).
The caller (the Rust interop tests) asserts on that line. Missing packages
are an error (exit 3), never a silent skip.
"""

import argparse
import asyncio
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request

WIDTH, HEIGHT, FPS = 320, 240, 30


def report(**fields):
    base = {"ice": None, "dtls": None, "frames": 0, "width": 0, "height": 0,
            "luma_stddev": 0.0, "error": None}
    base.update(fields)
    print(json.dumps(base), flush=True)


def need(what, exc):
    report(client=what, role="?", error=f"missing package: {exc}")
    sys.exit(3)


def whip_post(url, token, offer_sdp):
    """POSTs an SDP offer (WHIP/WHEP), returns (answer, location). With
    WAVE_INTEROP_SDP set, both go to stderr."""
    if os.environ.get("WAVE_INTEROP_SDP"):
        print(f"--- offer to {url}\n{offer_sdp}", file=sys.stderr)
    req = urllib.request.Request(url, data=offer_sdp.encode(), method="POST")
    req.add_header("Content-Type", "application/sdp")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer = resp.read().decode()
            if os.environ.get("WAVE_INTEROP_SDP"):
                print(f"--- answer\n{answer}", file=sys.stderr)
            return answer, resp.headers.get("Location")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')}")


def luma_stats(y_bytes):
    n = len(y_bytes)
    if n == 0:
        return 0.0
    step = max(1, n // 4096)
    sample = y_bytes[::step]
    mean = sum(sample) / len(sample)
    return math.sqrt(sum((v - mean) ** 2 for v in sample) / len(sample))


def test_pattern_planes(i):
    """YUV 4:2:0 colour bars that scroll one pixel a frame (so every
    frame differs and an encoder keeps sending)."""
    bars = [(180, 128, 128), (162, 44, 142), (131, 156, 44), (112, 72, 58),
            (84, 184, 198), (65, 100, 212), (35, 212, 114), (16, 128, 128)]
    bw = WIDTH // len(bars)
    y_row = bytearray(WIDTH)
    u_row = bytearray(WIDTH // 2)
    v_row = bytearray(WIDTH // 2)
    for x in range(WIDTH):
        y, u, v = bars[((x + i) // bw) % len(bars)]
        y_row[x] = y
        if x % 2 == 0:
            u_row[x // 2] = u
            v_row[x // 2] = v
    return bytes(y_row) * HEIGHT, bytes(u_row) * (HEIGHT // 2), bytes(v_row) * (HEIGHT // 2)


# ---- GStreamer webrtcbin ----------------------------------------------------

def gst_imports():
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstWebRTC", "1.0")
        gi.require_version("GstSdp", "1.0")
        from gi.repository import GLib, Gst, GstSdp, GstWebRTC
    except (ImportError, ValueError) as exc:
        need("gstreamer", exc)
    Gst.init(None)
    for element in ("webrtcbin", "nicesrc", "dtlssrtpenc", "openh264enc", "avdec_h264",
                    "rtph264pay", "opusenc", "videotestsrc"):
        if Gst.ElementFactory.find(element) is None:
            need("gstreamer", f"GStreamer element {element}")
    return GLib, Gst, GstSdp, GstWebRTC


class GstClient:
    def __init__(self, args, pipeline_desc, role):
        GLib, Gst, GstSdp, GstWebRTC = gst_imports()
        self.GLib, self.Gst, self.GstSdp, self.GstWebRTC = GLib, Gst, GstSdp, GstWebRTC
        self.args = args
        self.role = role
        parsed = Gst.parse_launch(pipeline_desc)
        if isinstance(parsed, Gst.Pipeline):
            self.pipe = parsed
        else:  # a lone element
            self.pipe = Gst.Pipeline.new("pipeline")
            self.pipe.add(parsed)
        self.webrtc = self.pipe.get_by_name("w")
        self.loop = GLib.MainLoop()
        self.error = None
        self.frames = 0
        self.audio_frames = 0
        self.width = self.height = 0
        self.stddev = 0.0
        self.sent_offer = False
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_bus_error)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)

    def on_bus_error(self, _bus, msg):
        err, dbg = msg.parse_error()
        self.fail(f"GStreamer: {err.message} ({dbg})")

    def fail(self, message):
        if self.error is None:
            self.error = message
        self.loop.quit()

    def start(self):
        self.pipe.set_state(self.Gst.State.PLAYING)
        self.GLib.timeout_add(50, self.offer_when_caps_known)

    def offer_when_caps_known(self):
        """Offers once every sending pad has negotiated caps: the offer's
        a=ssrc and a=fmtp lines come from them (a receiver needs a=ssrc to
        map a stream without the mid header extension)."""
        pads = [p for p in self.webrtc.sinkpads]
        if any(p.get_current_caps() is None for p in pads):
            return True  # poll again
        promise = self.Gst.Promise.new_with_change_func(self.on_offer, None)
        self.webrtc.emit("create-offer", None, promise)
        return False

    def on_offer(self, promise, _data):
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        if offer is None:
            self.GLib.idle_add(self.fail, "webrtcbin created no offer")
            return
        self.webrtc.emit("set-local-description", offer, self.Gst.Promise.new())

    def on_gathering(self, webrtc, _pspec):
        state = webrtc.get_property("ice-gathering-state")
        if state != self.GstWebRTC.WebRTCICEGatheringState.COMPLETE or self.sent_offer:
            return
        self.sent_offer = True
        sdp = webrtc.get_property("local-description").sdp.as_text()
        self.GLib.idle_add(self.post_offer, sdp)

    def post_offer(self, sdp):
        try:
            answer, _ = whip_post(self.args.url, self.args.token, sdp)
        except Exception as exc:  # reported, not raised: the caller reads the JSON
            self.fail(str(exc))
            return False
        _, msg = self.GstSdp.SDPMessage.new_from_text(answer)
        desc = self.GstWebRTC.WebRTCSessionDescription.new(self.GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.webrtc.emit("set-remote-description", desc, self.Gst.Promise.new())
        return False

    def dtls_state(self):
        """The DTLS state of the first transceiver's transport (bundled)."""
        t = self.webrtc.emit("get-transceiver", 0)
        if t is None:
            return None
        for end in ("sender", "receiver"):
            obj = t.get_property(end)
            transport = obj.get_property("transport") if obj is not None else None
            if transport is not None:
                return transport.get_property("state").value_nick
        return None

    def run(self):
        self.start()
        self.GLib.timeout_add(int(self.args.seconds * 1000), self.loop.quit)
        self.loop.run()
        ice = self.webrtc.get_property("ice-connection-state").value_nick
        dtls = self.dtls_state()
        self.pipe.set_state(self.Gst.State.NULL)
        report(client="gstreamer", role=self.role, ice=ice, dtls=dtls, frames=self.frames,
               width=self.width, height=self.height, luma_stddev=self.stddev,
               audio_frames=self.audio_frames, error=self.error)


def gst_publish(args):
    desc = (
        "webrtcbin name=w bundle-policy=max-bundle "
        f"videotestsrc is-live=true pattern=smpte ! video/x-raw,width={WIDTH},height={HEIGHT},framerate={FPS}/1 "
        "! videoconvert ! openh264enc bitrate=500000 gop-size=30 ! h264parse name=parse "
        "! video/x-h264,profile=constrained-baseline "
        "! rtph264pay config-interval=-1 aggregate-mode=zero-latency "
        "! application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
        "packetization-mode=(string)1 ! w. "
        "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc ! rtpopuspay "
        "! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! w. "
    )
    client = GstClient(args, desc, "publish")
    _, Gst, _, _ = gst_imports()

    def count_frame(_pad, _info):
        client.frames += 1
        return Gst.PadProbeReturn.OK

    client.pipe.get_by_name("parse").get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, count_frame)
    client.width, client.height = WIDTH, HEIGHT
    client.run()


def gst_watch(args):
    _, Gst, _, GstWebRTC = gst_imports()
    client = GstClient(args, "webrtcbin name=w bundle-policy=max-bundle", "watch")
    recv = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
    client.webrtc.emit("add-transceiver", recv, Gst.Caps.from_string(
        "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
        "packetization-mode=(string)1,profile-level-id=(string)42e01f"))
    client.webrtc.emit("add-transceiver", recv, Gst.Caps.from_string(
        "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000"))

    def on_sample(sink):
        sample = sink.emit("pull-sample")
        caps = sample.get_caps().get_structure(0)
        client.width, client.height = caps.get_value("width"), caps.get_value("height")
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            client.stddev = luma_stats(info.data[: client.width * client.height])
            buf.unmap(info)
        client.frames += 1
        return Gst.FlowReturn.OK

    def on_decoded_pad(_decodebin, pad):
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name()
        if name.startswith("video/"):
            chain = Gst.parse_bin_from_description(
                "videoconvert ! video/x-raw,format=I420 ! appsink name=sink emit-signals=true sync=false", True)
            chain.get_by_name("sink").connect("new-sample", on_sample)
        elif name.startswith("audio/"):
            chain = Gst.parse_bin_from_description("fakesink name=audio sync=false", True)

            def count_audio(_pad, _info):
                client.audio_frames += 1
                return Gst.PadProbeReturn.OK

            chain.get_by_name("audio").get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, count_audio)
        else:
            chain = Gst.parse_bin_from_description("fakesink sync=false", True)
        client.pipe.add(chain)
        chain.sync_state_with_parent()
        pad.link(chain.get_static_pad("sink"))

    def on_pad_added(_webrtc, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        decodebin = Gst.ElementFactory.make("decodebin")
        decodebin.connect("pad-added", on_decoded_pad)
        client.pipe.add(decodebin)
        decodebin.sync_state_with_parent()
        pad.link(decodebin.get_static_pad("sink"))

    client.webrtc.connect("pad-added", on_pad_added)
    client.run()


# ---- aiortc -----------------------------------------------------------------

def aiortc_imports():
    try:
        import aiortc
        import av
        from aiortc.contrib.media import MediaBlackhole  # noqa: F401
    except ImportError as exc:
        need("aiortc", exc)
    return aiortc, av


def wrong_fingerprint(sdp):
    """The offer with every a=fingerprint changed (its last byte flipped):
    what a man in the middle's certificate would look like."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=fingerprint:"):
            head, last = line.rsplit(":", 1)
            line = f"{head}:{int(last, 16) ^ 0xFF:02X}"
        out.append(line)
    return "\r\n".join(out) + "\r\n"


async def aiortc_session(args, pc):
    from aiortc import RTCSessionDescription
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    if getattr(args, "bad_fingerprint", False):
        offer = wrong_fingerprint(offer)
    answer, location = whip_post(args.url, args.token, offer)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return location


def aiortc_publish(args):
    aiortc, av = aiortc_imports()
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender
    from fractions import Fraction

    class Bars(MediaStreamTrack):
        kind = "video"

        def __init__(self):
            super().__init__()
            self.i = 0
            self.t0 = None

        async def recv(self):
            if self.t0 is None:
                self.t0 = time.monotonic()
            due = self.t0 + self.i / FPS
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
            for plane, data in zip(frame.planes, test_pattern_planes(self.i)):
                plane.update(data)
            frame.pts = self.i * (90000 // FPS)
            frame.time_base = Fraction(1, 90000)
            self.i += 1
            return frame

    async def main():
        pc = RTCPeerConnection()
        track = Bars()
        transceiver = pc.addTransceiver(track, direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        codec = args.codec.upper()
        transceiver.setCodecPreferences([c for c in caps if c.mimeType.upper() == f"VIDEO/{codec}"])
        error = None
        try:
            await aiortc_session(args, pc)
            await asyncio.sleep(args.seconds)
        except Exception as exc:
            error = str(exc)
        dtls = pc.getTransceivers()[0].sender.transport.state if pc.getTransceivers() else None
        ice = pc.iceConnectionState
        report(client="aiortc", role="publish", ice=ice, dtls=dtls, frames=track.i,
               width=WIDTH, height=HEIGHT, error=error)
        await pc.close()

    asyncio.run(main())


def aiortc_watch(args):
    aiortc_imports()
    from aiortc import RTCPeerConnection

    async def main():
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        seen = {"frames": 0, "width": 0, "height": 0, "stddev": 0.0, "audio": 0, "first": None}
        started = time.monotonic()

        async def consume(track):
            while True:
                try:
                    frame = await track.recv()
                except Exception:
                    return
                if track.kind != "video":
                    seen["audio"] += 1
                    continue
                if seen["first"] is None:
                    seen["first"] = round((time.monotonic() - started) * 1000)
                seen["frames"] += 1
                seen["width"], seen["height"] = frame.width, frame.height
                if seen["frames"] % 10 == 1:
                    seen["stddev"] = luma_stats(bytes(frame.planes[0]))

        @pc.on("track")
        def on_track(track):
            asyncio.ensure_future(consume(track))

        error = None
        try:
            await aiortc_session(args, pc)
            await asyncio.sleep(args.seconds)
        except Exception as exc:
            error = str(exc)
        t = pc.getTransceivers()
        dtls = t[0].receiver.transport.state if t else None
        report(client="aiortc", role="watch", ice=pc.iceConnectionState, dtls=dtls,
               frames=seen["frames"], width=seen["width"], height=seen["height"],
               luma_stddev=seen["stddev"], audio_frames=seen["audio"],
               first_frame_ms=seen["first"], error=error)
        await pc.close()

    asyncio.run(main())


# ---- FFmpeg's whip muxer (PyAV) ----------------------------------------------

def ffmpeg_publish(args):
    try:
        import av
    except ImportError as exc:
        need("ffmpeg", exc)
    if "whip" not in av.formats_available:
        need("ffmpeg", f"PyAV {av.__version__} has no whip muxer")
    from fractions import Fraction
    import av.logging
    # FFmpeg's own log (ICE, DTLS, WHIP) on stderr, for the test's output.
    av.logging.set_level(av.logging.VERBOSE)
    av.logging.restore_default_callback()
    options = {"handshake_timeout": "8000"}
    if args.token:
        options["authorization"] = args.token
    frames = 0
    error = None
    try:
        out = av.open(args.url, mode="w", format="whip", options=options)
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.options = {"profile": "baseline", "tune": "zerolatency", "preset": "ultrafast",
                         "g": str(FPS), "bf": "0"}
        video.time_base = Fraction(1, FPS)
        audio = out.add_stream("libopus", rate=48000, layout="stereo")
        t0 = time.monotonic()
        samples = 0
        while time.monotonic() - t0 < args.seconds:
            frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
            for plane, data in zip(frame.planes, test_pattern_planes(frames)):
                plane.update(data)
            frame.pts = frames
            for packet in video.encode(frame):
                out.mux(packet)
            # 20 ms of silence per video frame keeps the audio track alive.
            while samples < (frames + 1) * 48000 // FPS:
                af = av.AudioFrame(format="s16", layout="stereo", samples=960)
                for p in af.planes:
                    p.update(bytes(p.buffer_size))
                af.sample_rate = 48000
                af.pts = samples
                samples += 960
                for packet in audio.encode(af):
                    out.mux(packet)
            frames += 1
            time.sleep(max(0.0, t0 + frames / FPS - time.monotonic()))
        out.close()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    report(client="ffmpeg", role="publish", ice=None, dtls=None, frames=frames,
           width=WIDTH, height=HEIGHT, error=error)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["gst-publish", "gst-watch", "aiortc-publish",
                                            "aiortc-watch", "ffmpeg-publish"])
    parser.add_argument("--url", required=True, help="WHIP or WHEP endpoint")
    parser.add_argument("--token", default=None, help="bearer token")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--codec", default="H264", help="aiortc publisher's video codec")
    parser.add_argument("--bad-fingerprint", action="store_true",
                        help="aiortc publisher: send an offer whose a=fingerprint is wrong")
    args = parser.parse_args()
    {"gst-publish": gst_publish, "gst-watch": gst_watch, "aiortc-publish": aiortc_publish,
     "aiortc-watch": aiortc_watch, "ffmpeg-publish": ffmpeg_publish}[args.command](args)


if __name__ == "__main__":
    main()
