#!/usr/bin/env python3
"""Stamped frames for the RTMP-ingest glass-to-glass bench
(scripts/bench-ingest-latency.sh; the hls.js side is e2e/bench/ingest-latency.mjs).

    source   raw I420 frames on stdout, paced in real time, each stamped with
             the wall-clock ms at which it is handed to the pipe (FFmpeg's stdin)
    whep     an aiortc viewer of a WHEP URL: latency = decode time - stamp
    readback raw 8-bit gray frames on stdin (a local FFmpeg decode): the
             same figure without the node, the network or WebRTC

The stamp: two rows of 40 blocks (32x32 px at 1280x720, scaled with the
frame) across the top of the picture. The upper row is `1010`, the low 32
bits of the ms timestamp (MSB first), `0101`; the lower row is its
complement. A block reads as 1 when it is brighter than the block under
it, so no threshold depends on the encoder's levels, and a frame whose
pair of blocks differs by less than MIN_CONTRAST (or whose markers are
wrong, or whose time is not within a minute before now) counts as failed.
e2e/bench/ingest-latency.mjs reads the same layout.

Every subcommand that measures prints one JSON line last:
{"what", "samples", "failed", "p50_ms", "p95_ms", "max_ms", "min_ms", ...}.
"""

import argparse
import asyncio
import json
import os
import random
import sys
import time

BLOCKS = 40
MARK_HEAD = [1, 0, 1, 0]
MARK_TAIL = [0, 1, 0, 1]
BITS = 32
WHITE, BLACK, GRAY = 235, 16, 128
MIN_CONTRAST = 48


def stamp_bits(ms):
    low = ms & 0xFFFFFFFF
    return MARK_HEAD + [(low >> (BITS - 1 - i)) & 1 for i in range(BITS)] + MARK_TAIL


def unwrap(low, now_ms):
    """The full ms time whose low 32 bits are `low`, at or before now."""
    return now_ms - ((now_ms - low) % (1 << BITS))


def read_stamp(y, stride, width, now_ms):
    """Decodes the stamp from a luma plane (`y`: bytes, `stride` per row);
    returns the stamp's ms time or None."""
    block = width / BLOCKS  # 32 px at 1280 wide
    half = block / 4  # sample the middle half of each block
    rows = (block / 2, block * 3 / 2)  # centres of the two rows
    bits = []
    for i in range(BLOCKS):
        x0 = int(i * block + block / 2 - half)
        x1 = int(i * block + block / 2 + half)
        lumas = []
        for centre in rows:
            total = n = 0
            for r in range(int(centre - half), int(centre + half), 2):
                line = y[r * stride + x0:r * stride + x1]
                total += sum(line)
                n += len(line)
            if n == 0:
                return None
            lumas.append(total / n)
        upper, lower = lumas
        if abs(upper - lower) < MIN_CONTRAST:
            return None
        bits.append(1 if upper > lower else 0)
    if bits[:4] != MARK_HEAD or bits[-4:] != MARK_TAIL:
        return None
    low = 0
    for b in bits[4:4 + BITS]:
        low = (low << 1) | b
    ms = unwrap(low, now_ms)
    return ms if now_ms - ms < 60_000 else None


def summary(what, lat, failed, **extra):
    lat = sorted(lat)

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

    out = {"what": what, "samples": len(lat), "failed": failed, "p50_ms": q(0.5), "p95_ms": q(0.95),
           "max_ms": lat[-1] if lat else None, "min_ms": lat[0] if lat else None}
    out.update(extra)
    return out


# ---- source -----------------------------------------------------------------

def source(args):
    w, h = args.width, args.height
    block = w // BLOCKS
    assert block * BLOCKS == w, f"width must be a multiple of {BLOCKS}"
    # Background: vertical grey bars that scroll 4 px a frame over the upper
    # half; noise over the lower half, cut from a new place every frame so
    # motion search finds nothing and the encoder spends its whole bitrate
    # (bars alone cost x264 ~0.1 Mbit/s: no camera is that kind).
    bar = 64
    shades = [40, 80, 120, 160, 200, 160, 120, 80]
    pattern = bytes(shades[(x // bar) % len(shades)] for x in range(w + bar * len(shades)))
    chroma = bytes([128]) * (w * h // 2)
    noise_rows = h // 2
    noise = os.urandom(w * noise_rows * 2)
    rng = random.Random(1)
    white, black, quiet = bytes([WHITE]) * block, bytes([BLACK]) * block, bytes([GRAY]) * w
    out = sys.stdout.buffer
    period = 1 / args.fps
    t0 = time.monotonic()
    i = 0
    try:
        while args.seconds <= 0 or i < args.seconds * args.fps:
            due = t0 + i * period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            off = (i * 4) % (bar * len(shades))
            frame = bytearray(pattern[off:off + w] * (h - noise_rows))
            cut = rng.randrange(w * noise_rows)
            frame += noise[cut:cut + w * noise_rows]
            for r in range(2 * block, 2 * block + block // 2):
                frame[r * w:(r + 1) * w] = quiet
            # The stamp is the time the frame is handed over: taken after
            # the background is drawn, just before the write.
            ms = time.time_ns() // 1_000_000
            bits = stamp_bits(ms)
            upper = b"".join((white if b else black) for b in bits)
            lower = b"".join((black if b else white) for b in bits)
            for r in range(block):
                frame[r * w:(r + 1) * w] = upper
                frame[(block + r) * w:(block + r + 1) * w] = lower
            out.write(frame)
            out.write(chroma)
            out.flush()
            i += 1
    except BrokenPipeError:
        pass


# ---- readback (local decode) ------------------------------------------------

def readback(args):
    w, h = args.width, args.height
    size = w * h
    inp = sys.stdin.buffer
    lat, failed, frames = [], 0, 0
    t0 = time.monotonic()
    while True:
        buf = inp.read(size)
        if len(buf) < size:
            break
        now = time.time_ns() // 1_000_000
        frames += 1
        if time.monotonic() - t0 < args.warmup:
            continue
        ms = read_stamp(buf, w, w, now)
        if ms is None:
            failed += 1
        else:
            lat.append(now - ms)
    print(json.dumps(summary("local x264 encode + decode", lat, failed, frames=frames)), flush=True)


# ---- whep (aiortc) ------------------------------------------------------------

def whep(args):
    import urllib.request

    import aioice.ice
    from aiortc import RTCPeerConnection, RTCSessionDescription

    # aiortc gathers no loopback candidates and an open node's media is on
    # 127.0.0.1: offer loopback only.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

    async def main():
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        seen = {"frames": 0, "audio": 0, "failed": 0, "size": None, "first_ms": None}
        lat = []
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
                now = time.time_ns() // 1_000_000
                seen["frames"] += 1
                if seen["first_ms"] is None:
                    seen["first_ms"] = round((time.monotonic() - started) * 1000)
                if time.monotonic() - started < args.warmup:
                    continue
                plane = frame.planes[0]
                seen["size"] = f"{frame.width}x{frame.height}"
                ms = read_stamp(bytes(plane), plane.line_size, frame.width, now)
                if ms is None:
                    seen["failed"] += 1
                else:
                    lat.append(now - ms)

        @pc.on("track")
        def on_track(track):
            asyncio.ensure_future(consume(track))

        await pc.setLocalDescription(await pc.createOffer())
        req = urllib.request.Request(args.url, data=pc.localDescription.sdp.encode(), method="POST")
        req.add_header("Content-Type", "application/sdp")
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer = resp.read().decode()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.sleep(args.warmup + args.seconds)
        await pc.close()
        print(json.dumps(summary("WHEP (aiortc)", lat, seen["failed"], frames=seen["frames"],
                                 audio_frames=seen["audio"], size=seen["size"],
                                 first_frame_ms=seen["first_ms"])), flush=True)

    asyncio.run(main())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["source", "whep", "readback"])
    parser.add_argument("--url", help="whep: the WHEP endpoint")
    parser.add_argument("--seconds", type=float, default=30, help="measured seconds (source: 0 = forever)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds not measured first")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args()
    {"source": source, "whep": whep, "readback": readback}[args.command](args)


if __name__ == "__main__":
    main()
