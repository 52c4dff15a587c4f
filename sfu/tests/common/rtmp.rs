//! RTMP clients for the ingest tests: Debian's `ffmpeg` pushing a test
//! pattern and a tone, and a scripted client (`rml_rtmp`'s client session)
//! that sends exactly the messages a test wants.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;

/// `ffmpeg -re` pushing 320x240 `testsrc2` at 30 fps (libx264, a keyframe
/// every `gop` frames, no B-frames) and a 440 Hz tone (AAC, 44.1 kHz) to
/// `url` for `seconds`; killed on drop.
pub struct FfmpegPush {
    child: Child,
}

impl FfmpegPush {
    pub fn start(command: Command, url: &str, gop: u32, seconds: u32) -> FfmpegPush {
        let mut command = command;
        let gop = gop.to_string();
        let child = command
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
            .args(["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency"])
            .args(["-pix_fmt", "yuv420p", "-g", &gop, "-keyint_min", &gop, "-bf", "0"])
            .args(["-c:a", "aac", "-b:a", "96k", "-t", &seconds.to_string()])
            .args(["-f", "flv", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ffmpeg runs (Debian's ffmpeg package, scripts/setup.sh)");
        FfmpegPush { child }
    }

    /// Waits up to `limit` for ffmpeg to exit: its success and stderr, or
    /// `None` while it still runs.
    pub fn wait(&mut self, limit: Duration) -> Option<(bool, String)> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Some((status.success(), err));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for FfmpegPush {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scripted RTMP publisher over a blocking socket.
pub struct RtmpClient {
    pub stream: TcpStream,
    session: ClientSession,
    events: Vec<ClientSessionEvent>,
}

impl RtmpClient {
    /// Connects, shakes hands and connects to app `app`; `Err` with what
    /// the server answered when it refuses.
    pub fn connect(addr: SocketAddr, app: &str) -> Result<RtmpClient, String> {
        RtmpClient::connect_with_chunk_size(addr, app, ClientSessionConfig::new().chunk_size)
    }

    /// [`RtmpClient::connect`], announcing `chunk_size` (RTMP SetChunkSize).
    pub fn connect_with_chunk_size(
        addr: SocketAddr,
        app: &str,
        chunk_size: u32,
    ) -> Result<RtmpClient, String> {
        let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut hs = Handshake::new(PeerType::Client);
        let c0c1 = hs.generate_outbound_p0_and_p1().map_err(|e| e.to_string())?;
        stream.write_all(&c0c1).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64 << 10];
        let rest = loop {
            let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed during the handshake".into());
            }
            match hs.process_bytes(&buf[..n]).map_err(|e| e.to_string())? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    stream.write_all(&response_bytes).map_err(|e| e.to_string())?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    stream.write_all(&response_bytes).map_err(|e| e.to_string())?;
                    break remaining_bytes;
                }
            }
        };
        let mut config = ClientSessionConfig::new();
        config.chunk_size = chunk_size;
        let (session, results) = ClientSession::new(config).map_err(|e| e.to_string())?;
        let mut c = RtmpClient {
            stream,
            session,
            events: Vec::new(),
        };
        c.apply(results)?;
        let results = c.session.handle_input(&rest).map_err(|e| e.to_string())?;
        c.apply(results)?;
        let request = c
            .session
            .request_connection(app.to_owned())
            .map_err(|e| e.to_string())?;
        c.apply(vec![request])?;
        c.until(|e| match e {
            ClientSessionEvent::ConnectionRequestAccepted => Some(Ok(())),
            ClientSessionEvent::ConnectionRequestRejected { description } => Some(Err(description.clone())),
            _ => None,
        })?
        .map(|()| c)
    }

    /// Asks to publish `key`: `Ok` once accepted, else the status code the
    /// server answered (or why the connection ended).
    pub fn publish(&mut self, key: &str) -> Result<(), String> {
        let request = self
            .session
            .request_publishing(key.to_owned(), PublishRequestType::Live)
            .map_err(|e| e.to_string())?;
        self.apply(vec![request])?;
        self.until(|e| match e {
            ClientSessionEvent::PublishRequestAccepted => Some(Ok(())),
            ClientSessionEvent::UnhandleableOnStatusCode { code } => Some(Err(code.clone())),
            // `rml_rtmp`'s server refuses a publish with an `_error`
            // command carrying the status object (its code says why).
            ClientSessionEvent::UnknownTransactionResultReceived {
                additional_values, ..
            } => additional_values.iter().find_map(|v| match v {
                Amf0Value::Object(o) => match o.get("code") {
                    Some(Amf0Value::Utf8String(code)) => Some(Err(code.clone())),
                    _ => None,
                },
                _ => None,
            }),
            _ => None,
        })?
    }

    /// Sends one video message (an FLV video tag body) at `ts_ms`.
    pub fn video(&mut self, tag: &[u8], ts_ms: u32) -> std::io::Result<()> {
        let result = self
            .session
            .publish_video_data(Bytes::copy_from_slice(tag), RtmpTimestamp::new(ts_ms), false)
            .map_err(std::io::Error::other)?;
        self.apply(vec![result]).map_err(std::io::Error::other)
    }

    /// Sends one audio message (an FLV audio tag body) at `ts_ms`.
    pub fn audio(&mut self, tag: &[u8], ts_ms: u32) -> std::io::Result<()> {
        let result = self
            .session
            .publish_audio_data(Bytes::copy_from_slice(tag), RtmpTimestamp::new(ts_ms), false)
            .map_err(std::io::Error::other)?;
        self.apply(vec![result]).map_err(std::io::Error::other)
    }

    /// Whether the server closed the connection within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < limit {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }

    fn apply(&mut self, results: Vec<ClientSessionResult>) -> Result<(), String> {
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => {
                    self.stream.write_all(&p.bytes).map_err(|e| e.to_string())?
                }
                ClientSessionResult::RaisedEvent(e) => self.events.push(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    /// Reads until `pick` chooses an event (5 s at most).
    fn until<T>(&mut self, pick: impl Fn(&ClientSessionEvent) -> Option<T>) -> Result<T, String> {
        let t0 = Instant::now();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if let Some(found) = self.events.drain(..).find_map(|e| pick(&e)) {
                return Ok(found);
            }
            if t0.elapsed() > Duration::from_secs(5) {
                return Err("no answer in 5 s".into());
            }
            let n = self.stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            let results = self.session.handle_input(&buf[..n]).map_err(|e| e.to_string())?;
            self.apply(results)?;
        }
    }
}
