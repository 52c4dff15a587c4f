"""A test IP camera: GStreamer's gst-rtsp-server (through python3-gi)
serving a live test pattern as H.264 (x264enc) plus AAC or PCMU at
rtsp://127.0.0.1:PORT/cam. Prints "ready" once it listens; runs until
killed.

    camera.py PORT [aac|pcmu] [WIDTHxHEIGHT] [FPS]
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port = sys.argv[1]
    audio = sys.argv[2] if len(sys.argv) > 2 else "aac"
    width, height = (sys.argv[3] if len(sys.argv) > 3 else "320x240").split("x")
    fps = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    Gst.init(None)
    # One keyframe a second, so that a viewer joining (or a pull
    # reconnecting) waits at most that long.
    video = (
        f"videotestsrc is-live=true pattern=ball ! "
        f"video/x-raw,width={width},height={height},framerate={fps}/1 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=1500 ! "
        f"rtph264pay name=pay0 pt=96 config-interval=-1"
    )
    sound = "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! "
    if audio == "pcmu":
        sound += "audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay name=pay1 pt=0"
    else:
        # 44.1 kHz: the rate LL-HLS must keep (its AAC is passed through).
        sound += "audio/x-raw,rate=44100,channels=2 ! avenc_aac ! rtpmp4gpay name=pay1 pt=97"
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {video} {sound} )")
    factory.set_shared(True)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on port {port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
