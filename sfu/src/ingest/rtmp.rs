//! The RTMP listener (`--rtmp-listen`): one tokio task per connection
//! around `rml_rtmp`'s Sans-IO handshake and `ServerSession`. A client
//! connects to app `live` and publishes stream key `{room}?token=JWT` (or
//! the token alone, the room taken from its claim; no token on an open
//! node). The publish becomes the room's ingest source on its home worker;
//! each batch of messages read is handed there as RTP packets.
//!
//! Bounds: 64 connections; 5 s for the handshake, 10 s from connect to
//! publish, 10 s without a byte either way; 1 MiB before the publish is accepted,
//! then `source::MAX_VIDEO_MESSAGE` (8 MiB) and one read without a whole
//! media message. Anything over one, or bytes that are not RTMP, end that
//! connection and are counted; no other connection or room is touched.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};
use signaling::Drain;
use signaling::auth::{self, AuthError, Grant, TokenPolicy};
use signaling::cluster::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tracing::{debug, info, warn};
use wave_vocab::{MediaError, RoomId, SessionId};

use super::{CONNECTIONS, PUBLISHING, Reason, Source, count_rejected, ntp_now};
use crate::engine::IngestOpen;
use crate::ingest::IngestNode;
use crate::node::Node;

/// The one RTMP application: `rtmp://host:port/live/{stream key}`.
pub const APP: &str = "live";
const MAX_CONNECTIONS: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a client may send before its publish is accepted: a handful of
/// small commands.
const BEFORE_PUBLISH: usize = 1 << 20;
/// Bytes a publishing client may send without completing a media message:
/// the largest message taken plus one read. `rml_rtmp` buffers an
/// incomplete chunk and message whatever their size (up to RTMP's 16 MiB
/// message and a chunk size the client sets, which it does not report),
/// so this is what bounds its buffers.
const UNPARSED: usize = super::source::MAX_VIDEO_MESSAGE + READ_BUFFER;
const READ_BUFFER: usize = 64 << 10;

/// Who may publish: with a secret, a token with the publish grant.
#[derive(Clone)]
pub struct RtmpAuth {
    pub secret: Option<Vec<u8>>,
    pub policy: TokenPolicy,
}

/// What an RTMP publish needs of the node beside its engine: who may
/// publish, the room registry (a publish claims its room there as a WHIP
/// publisher does, so viewers at other nodes are fed over the relay) and
/// whether the node drains (then publishes are refused, as WHIP is 503).
#[derive(Clone)]
pub struct RtmpContext {
    pub auth: RtmpAuth,
    pub cluster: Cluster,
    pub drain: Drain,
}

/// Accepts RTMP connections until the task is dropped.
pub async fn serve(listener: TcpListener, node: Arc<Node>, context: RtmpContext) {
    let context = Arc::new(context);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                debug!(error = %e, "RTMP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            count_rejected(Reason::Connections);
            warn!(
                limit = MAX_CONNECTIONS,
                "RTMP connection refused: too many connections"
            );
            continue;
        };
        debug!(%peer, "RTMP connection");
        let _ = stream.set_nodelay(true);
        let (node, context) = (node.clone(), context.clone());
        tokio::spawn(async move {
            let _slot = slot;
            Connection {
                node,
                context,
                publishing: None,
                refused: None,
                unparsed: 0,
            }
            .run(stream)
            .await;
        });
    }
}

/// Why a connection ended early: its counter label and a log message.
struct Cut {
    reason: Reason,
    why: String,
}

impl Cut {
    fn new(reason: Reason, why: impl Into<String>) -> Cut {
        Cut {
            reason,
            why: why.into(),
        }
    }
}

struct Connection {
    node: Arc<Node>,
    context: Arc<RtmpContext>,
    publishing: Option<Publishing>,
    /// Set with an error status sent: why the connection then ends.
    refused: Option<Cut>,
    /// Bytes read since the last whole media message (since the
    /// connection opened, before that).
    unparsed: usize,
}

/// A publish the node accepted: its session in the room and its source.
struct Publishing {
    room: RoomId,
    session: SessionId,
    source: Source,
}

impl Connection {
    async fn run(mut self, mut stream: TcpStream) {
        // A refusal's error status went out before `serve` returned.
        let cut = match self.serve(&mut stream).await {
            Ok(()) => self.refused.take(),
            Err(cut) => Some(cut),
        };
        if let Some(cut) = cut {
            count_rejected(cut.reason);
            let room = self.publishing.as_ref().map(|p| p.room.to_string());
            warn!(
                room = room.as_deref().unwrap_or("-"),
                reason = ?cut.reason,
                why = %cut.why,
                "RTMP connection refused or cut off"
            );
        }
        let _ = stream.shutdown().await;
        if let Some(p) = self.publishing.take() {
            PUBLISHING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            info!(room = %p.room, session = %p.session, "RTMP publish ended");
            let _ = self.node.end_ingest(&p.session).await;
        }
    }

    async fn serve(&mut self, stream: &mut TcpStream) -> Result<(), Cut> {
        let mut buf = vec![0u8; READ_BUFFER];
        let rest = timeout(HANDSHAKE_TIMEOUT, handshake(stream, &mut buf))
            .await
            .map_err(|_| Cut::new(Reason::Timeout, "no RTMP handshake in time"))??;
        let config = ServerSessionConfig::new();
        let (mut session, results) =
            ServerSession::new(config).map_err(|e| Cut::new(Reason::Protocol, e.to_string()))?;
        self.handle_results(stream, &mut session, results).await?;
        let results = feed(&mut session, &rest).map_err(|why| Cut::new(Reason::Protocol, why))?;
        if self.handle_results(stream, &mut session, results).await? {
            return Ok(());
        }
        let connected = Instant::now();
        loop {
            let wait = match &self.publishing {
                Some(_) => IDLE_TIMEOUT,
                None => PUBLISH_TIMEOUT.saturating_sub(connected.elapsed()),
            };
            let n = match timeout(wait, stream.read(&mut buf)).await {
                Err(_) if self.publishing.is_some() => {
                    return Err(Cut::new(Reason::Timeout, "no data for 10 s"));
                }
                Err(_) => return Err(Cut::new(Reason::Timeout, "no publish in time")),
                Ok(Err(e)) => {
                    debug!(error = %e, "RTMP read failed");
                    return Ok(());
                }
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
            };
            self.unparsed += n;
            let budget = if self.publishing.is_some() {
                UNPARSED
            } else {
                BEFORE_PUBLISH
            };
            if self.unparsed > budget {
                return Err(Cut::new(
                    Reason::Oversized,
                    format!("{} bytes without a whole media message", self.unparsed),
                ));
            }
            let results = feed(&mut session, &buf[..n]).map_err(|why| Cut::new(Reason::Protocol, why))?;
            if self.handle_results(stream, &mut session, results).await? {
                return Ok(());
            }
            self.flush_media().await?;
        }
    }

    /// Sends the session's responses and acts on its events; `true` when
    /// the publisher finished.
    async fn handle_results(
        &mut self,
        stream: &mut TcpStream,
        session: &mut ServerSession,
        results: Vec<ServerSessionResult>,
    ) -> Result<bool, Cut> {
        let mut pending = std::collections::VecDeque::from(results);
        let mut finished = false;
        while let Some(r) = pending.pop_front() {
            match r {
                ServerSessionResult::OutboundResponse(packet) => {
                    // A client that stops reading must not hold its slot.
                    match timeout(IDLE_TIMEOUT, stream.write_all(&packet.bytes)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Ok(true),
                        Err(_) => return Err(Cut::new(Reason::Timeout, "the client stopped reading")),
                    }
                }
                ServerSessionResult::RaisedEvent(event) => {
                    let (more, done) = self.handle_event(session, event).await?;
                    pending.extend(more);
                    finished |= done;
                }
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(finished)
    }

    async fn handle_event(
        &mut self,
        session: &mut ServerSession,
        event: ServerSessionEvent,
    ) -> Result<(Vec<ServerSessionResult>, bool), Cut> {
        let protocol = |e: rml_rtmp::sessions::ServerSessionError| Cut::new(Reason::Protocol, e.to_string());
        match event {
            ServerSessionEvent::ConnectionRequested { request_id, app_name } => {
                if app_name != APP {
                    let refused = session
                        .reject_request(request_id, "NetConnection.Connect.Rejected", "unknown app")
                        .map_err(protocol)?;
                    self.refused = Some(Cut::new(
                        Reason::BadName,
                        format!("app {app_name:?} is not {APP:?}"),
                    ));
                    return Ok((refused, true));
                }
                Ok((session.accept_request(request_id).map_err(protocol)?, false))
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                if self.publishing.is_some() {
                    return Err(Cut::new(Reason::BadName, "a second publish on one connection"));
                }
                match authorize(&self.context.auth, &stream_key, SystemTime::now()) {
                    Ok((room, identity)) => self.publish(session, request_id, room, identity).await,
                    Err((reason, code, why)) => {
                        let refused = session.reject_request(request_id, code, &why).map_err(protocol)?;
                        self.refused = Some(Cut::new(reason, why));
                        Ok((refused, true))
                    }
                }
            }
            ServerSessionEvent::VideoDataReceived { data, timestamp, .. } => self
                .media(true, timestamp.value, &data)
                .map(|()| (Vec::new(), false)),
            ServerSessionEvent::AudioDataReceived { data, timestamp, .. } => self
                .media(false, timestamp.value, &data)
                .map(|()| (Vec::new(), false)),
            ServerSessionEvent::PublishStreamFinished { .. } => Ok((Vec::new(), true)),
            other => {
                debug!(event = ?std::mem::discriminant(&other), "RTMP event ignored");
                Ok((Vec::new(), false))
            }
        }
    }

    /// One whole video or audio message: the session's buffers are empty
    /// again; a publishing source makes RTP of it.
    fn media(&mut self, video: bool, ts_ms: u32, data: &[u8]) -> Result<(), Cut> {
        self.unparsed = 0;
        let Some(p) = &mut self.publishing else {
            return Ok(());
        };
        let made = if video {
            p.source.handle_video(Instant::now(), ts_ms, data)
        } else {
            p.source.handle_audio(Instant::now(), ts_ms, data)
        };
        made.map_err(|r| Cut::new(r.reason(), r.to_string()))
    }

    /// Opens the room's ingest source and accepts the publish, or refuses
    /// it with an error status.
    async fn publish(
        &mut self,
        session: &mut ServerSession,
        request_id: u32,
        room: RoomId,
        identity: Option<String>,
    ) -> Result<(Vec<ServerSessionResult>, bool), Cut> {
        let protocol = |e: rml_rtmp::sessions::ServerSessionError| Cut::new(Reason::Protocol, e.to_string());
        if self.context.drain.is_draining() {
            let why = "the node is draining".to_owned();
            let refused = session
                .reject_request(request_id, "NetStream.Publish.Failed", &why)
                .map_err(protocol)?;
            self.refused = Some(Cut::new(Reason::Node, why));
            return Ok((refused, true));
        }
        let held = match self.context.cluster.claim_to_publish(&room).await {
            Ok(None) => None,
            Ok(Some(owner)) => Some((
                Reason::RoomHeld,
                "NetStream.Publish.BadName",
                format!("room {room} is published on node {}", owner.node),
            )),
            Err(e) => Some((
                Reason::Node,
                "NetStream.Publish.Failed",
                format!("room {room}: the room registry is unreachable: {e}"),
            )),
        };
        if let Some((reason, code, why)) = held {
            let refused = session.reject_request(request_id, code, &why).map_err(protocol)?;
            self.refused = Some(Cut::new(reason, why));
            return Ok((refused, true));
        }
        let id = SessionId::random();
        let open = IngestOpen {
            room: room.clone(),
            session: id.clone(),
            identity,
        };
        if let Err(e) = self.node.open_ingest(open).await {
            let (reason, code) = match &e {
                MediaError::Unprocessable(_) => (Reason::RoomHeld, "NetStream.Publish.BadName"),
                _ => (Reason::Node, "NetStream.Publish.Failed"),
            };
            let why = e.to_string();
            let refused = session.reject_request(request_id, code, &why).map_err(protocol)?;
            self.refused = Some(Cut::new(reason, format!("room {room}: {why}")));
            return Ok((refused, true));
        }
        PUBLISHING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        info!(%room, session = %id, "RTMP publish started");
        self.publishing = Some(Publishing {
            room,
            session: id,
            source: Source::new(ntp_now()),
        });
        Ok((session.accept_request(request_id).map_err(protocol)?, false))
    }

    /// Hands the packets made from what was read to the room's worker.
    async fn flush_media(&mut self) -> Result<(), Cut> {
        let Some(p) = &mut self.publishing else {
            return Ok(());
        };
        let packets = p.source.take_packets();
        if packets.is_empty() {
            return Ok(());
        }
        self.node
            .ingest(&p.session, packets)
            .await
            .map_err(|e| Cut::new(Reason::Node, format!("the room's worker refused media: {e}")))
    }
}

/// The room and identity a stream key may publish to at `now`, or the refusal:
/// (counter label, RTMP status code, description).
pub(crate) fn authorize(
    access: &RtmpAuth,
    key: &str,
    now: SystemTime,
) -> Result<(RoomId, Option<String>), (Reason, &'static str, String)> {
    const BAD_NAME: &str = "NetStream.Publish.BadName";
    const UNAUTHORIZED: &str = "NetStream.Publish.Unauthorized";
    let (name, query) = key.split_once('?').unwrap_or((key, ""));
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .filter(|t| !t.is_empty());
    // A key that is a token alone (three base64url parts) names its room by claim.
    let (name, token) = match token {
        None if name.split('.').count() == 3 => ("", Some(name)),
        _ => (name, token),
    };
    let Some(secret) = &access.secret else {
        let room = RoomId::parse(name)
            .ok_or_else(|| (Reason::BadName, BAD_NAME, format!("{name:?} is not a room name")))?;
        return Ok((room, None));
    };
    let Some(token) = token else {
        return Err((
            Reason::Auth,
            UNAUTHORIZED,
            "a publish token is needed: {room}?token=…".into(),
        ));
    };
    let claims = auth::verify_with(secret, &access.policy, token, now).map_err(|e| {
        let why = match e {
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not valid yet",
            AuthError::WrongAudience => "token is for another audience",
            AuthError::TooLong { .. } => "token lifetime is longer than this node allows",
            _ => "invalid token",
        };
        (Reason::Auth, UNAUTHORIZED, why.to_owned())
    })?;
    let name = if name.is_empty() {
        claims.room.as_str()
    } else {
        name
    };
    let room = RoomId::parse(name)
        .ok_or_else(|| (Reason::BadName, BAD_NAME, format!("{name:?} is not a room name")))?;
    if !claims.allows(&room, Grant::Publish) {
        return Err((
            Reason::Auth,
            UNAUTHORIZED,
            format!("token does not grant publish in room {room}"),
        ));
    }
    Ok((room, Some(claims.sub)))
}

/// `rml_rtmp`'s session fed `bytes` from the client. It panics on some
/// hostile input, found by the `rtmp_session` fuzz target: an AMF0 command
/// message with fewer than three values (12 bytes after the handshake), and
/// a chunk that cuts a message's length below the bytes already held for it
/// (`capacity overflow`). The panic is contained here and the connection
/// ends as one that is not RTMP (counted), instead of its task dying
/// uncounted, with a publish it had still open.
pub(crate) fn feed(session: &mut ServerSession, bytes: &[u8]) -> Result<Vec<ServerSessionResult>, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.handle_input(bytes))) {
        Ok(results) => results.map_err(|e| e.to_string()),
        Err(_) => Err("a chunk stream rml_rtmp cannot parse".to_owned()),
    }
}

/// Runs the handshake; returns the bytes read past it.
async fn handshake(stream: &mut TcpStream, buf: &mut [u8]) -> Result<Vec<u8>, Cut> {
    let mut hs = Handshake::new(PeerType::Server);
    loop {
        let n = stream
            .read(buf)
            .await
            .map_err(|e| Cut::new(Reason::Protocol, format!("read during handshake: {e}")))?;
        if n == 0 {
            return Err(Cut::new(Reason::Protocol, "closed during the handshake"));
        }
        let (response, rest) = match hs.process_bytes(&buf[..n]) {
            Ok(HandshakeProcessResult::InProgress { response_bytes }) => (response_bytes, None),
            Ok(HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            }) => (response_bytes, Some(remaining_bytes)),
            Err(e) => return Err(Cut::new(Reason::Protocol, format!("handshake: {e}"))),
        };
        stream
            .write_all(&response)
            .await
            .map_err(|e| Cut::new(Reason::Protocol, format!("write during handshake: {e}")))?;
        if let Some(rest) = rest {
            return Ok(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use rml_rtmp::sessions::{ServerSession, ServerSessionConfig};

    /// `rml_rtmp`'s session fed deterministic garbage after the handshake
    /// (whole random chunks, and valid chunk headers with random bodies):
    /// an `Err` or nothing, never a panic.
    #[test]
    fn garbage_chunks_give_errors_not_panics() {
        let mut next = crate::ingest::xorshift(0x9e37_79b9_7f4a_7c15);
        for round in 0..3000 {
            let (mut session, _) = ServerSession::new(ServerSessionConfig::new()).unwrap();
            let len = (next() % 600) as usize + 1;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // Format 0 on chunk stream 3, a random message type and length:
                // Basic header, timestamp (3), length (3), type, stream id (4, LE).
                let mut h = vec![3u8, 0, 0, 0];
                h.extend([(next() % 4) as u8, 0, (next() % 64) as u8]);
                h.extend([(next() % 24) as u8, 1, 0, 0, 0]);
                if round % 4 == 0 {
                    // A length that the body completes.
                    let n = (bytes.len() as u32).to_be_bytes();
                    h[4..7].copy_from_slice(&n[1..]);
                }
                h.append(&mut bytes);
                bytes = h;
            }
            for piece in bytes.chunks((next() % 64) as usize + 1) {
                if session.handle_input(piece).is_err() {
                    break;
                }
            }
        }
    }
}
