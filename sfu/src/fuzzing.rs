//! Entry points shared by the fuzz targets (`fuzz/`, nightly) and the
//! regression tests that replay `fuzz/regressions/` on stable: each takes
//! arbitrary bytes and must never panic.
//!
//! - [`rtmp_flv`]: FLV video and audio messages (AVC configuration and
//!   NAL units, AudioSpecificConfig and AAC frames) into an ingest source;
//! - [`rtmp_session`]: the bytes of an RTMP connection after its handshake
//!   through `rml_rtmp`'s server session, the node's app and stream-key
//!   checks (tokens included) and the source;
//! - [`sdp_offer`]: an offer through the node's checks and str0m's
//!   negotiation, and a trickled candidate through str0m's parser.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionResult, PublishRequestType, ServerSession,
    ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use rml_rtmp::time::RtmpTimestamp;
use signaling::auth::{Claims, TokenPolicy};

use crate::engine::sdp::Intent;
use crate::engine::{Engine, EngineConfig, IngestItem};
use crate::ingest::Source;
use crate::ingest::rtmp::{self, RtmpAuth};

/// The secret of [`rtmp_session`]'s secured node.
pub const RTMP_SECRET: &[u8] = b"fuzz-rtmp-secret";
/// The time [`rtmp_session`] checks tokens at: tokens in seeds stay valid.
const TOKEN_NOW: Duration = Duration::from_secs(1_800_000_000);

/// Input: a sequence of `[kind u8][ts u32][len u16][message]`; `kind` bit
/// 0 makes it video, else audio.
pub fn rtmp_flv(data: &[u8]) {
    let mut source = Source::new(0);
    let now = Instant::now();
    let mut rest = data;
    while let [kind, t0, t1, t2, t3, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*l0, *l1])).min(tail.len());
        let (message, after) = tail.split_at(len);
        rest = after;
        let ts = u32::from_be_bytes([*t0, *t1, *t2, *t3]);
        let _ = match kind & 1 {
            1 => source.handle_video(now, ts, message),
            _ => source.handle_audio(now, ts, message),
        };
        for p in source.take_packets() {
            match p {
                IngestItem::Rtp(p) => assert!(
                    p.packet.payload.len() <= 1200,
                    "a {} byte RTP payload",
                    p.packet.payload.len()
                ),
                IngestItem::Aac(a) => assert!(a.data.len() <= 8 << 10, "a {} byte AAC frame", a.data.len()),
            }
        }
    }
}

/// Input: `[flags][chunk stream bytes]`; `flags` bit 0 secures the node
/// with [`RTMP_SECRET`] (tokens from [`rtmp_token`]).
pub fn rtmp_session(data: &[u8]) {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let access = RtmpAuth {
        secret: (flags & 1 != 0).then(|| RTMP_SECRET.to_vec()),
        policy: TokenPolicy::default(),
    };
    let Ok((mut session, results)) = ServerSession::new(ServerSessionConfig::new()) else {
        return;
    };
    let mut source: Option<Source> = None;
    let mut pending = VecDeque::from(results);
    let now = Instant::now();
    let token_now = UNIX_EPOCH + TOKEN_NOW;
    let Ok(results) = rtmp::feed(&mut session, bytes) else {
        return;
    };
    pending.extend(results);
    // As the connection does: answer requests, feed media to the source.
    while let Some(result) = pending.pop_front() {
        let ServerSessionResult::RaisedEvent(event) = result else {
            continue;
        };
        let more = match event {
            ServerSessionEvent::ConnectionRequested { request_id, app_name } if app_name == rtmp::APP => {
                session.accept_request(request_id)
            }
            ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                session.reject_request(request_id, "NetConnection.Connect.Rejected", "unknown app")
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => match rtmp::authorize(&access, &stream_key, token_now) {
                Ok(_) if source.is_none() => {
                    source = Some(Source::new(0));
                    session.accept_request(request_id)
                }
                Ok(_) => return,
                Err((_, code, why)) => session.reject_request(request_id, code, &why),
            },
            ServerSessionEvent::VideoDataReceived { data, timestamp, .. } => {
                if let Some(s) = &mut source {
                    let _ = s.handle_video(now, timestamp.value, &data);
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived { data, timestamp, .. } => {
                if let Some(s) = &mut source {
                    let _ = s.handle_audio(now, timestamp.value, &data);
                }
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        };
        let Ok(more) = more else { return };
        pending.extend(more);
        if let Some(s) = &mut source {
            s.take_packets();
        }
    }
}

/// A publish token for `room` that [`rtmp_session`]'s secured node takes.
pub fn rtmp_token(room: &str) -> String {
    let iat = TOKEN_NOW.as_secs() - 60;
    let claims = Claims {
        room: room.to_owned(),
        sub: "encoder".to_owned(),
        publish: true,
        subscribe: false,
        exp: iat + 3600,
        iat,
        role: None,
        nbf: None,
        aud: None,
    };
    signaling::auth::issue_claims(RTMP_SECRET, &claims)
}

/// What an encoder sends after the handshake to publish stream key `key`
/// on app `live`, then each `(video, ts, message)` of `media`: the chunk
/// stream [`rtmp_session`] reads (with its flags byte in front).
pub fn sample_publish(flags: u8, key: &str, media: &[(bool, u32, Vec<u8>)]) -> Vec<u8> {
    let (client, results) = ClientSession::new(ClientSessionConfig::new()).expect("a client session");
    let (server, to_client) = ServerSession::new(ServerSessionConfig::new()).expect("a server session");
    let mut talk = Conversation {
        client,
        server,
        out: vec![flags],
    };
    talk.handle_server_output(to_client);
    talk.handle_client_output(results);
    let request = talk.client.request_connection(rtmp::APP.to_owned());
    talk.handle_client_output(request.into_iter().collect());
    let request = talk
        .client
        .request_publishing(key.to_owned(), PublishRequestType::Live);
    talk.handle_client_output(request.into_iter().collect());
    for (video, ts, message) in media {
        let (data, ts) = (Bytes::from(message.clone()), RtmpTimestamp::new(*ts));
        let sent = match video {
            true => talk.client.publish_video_data(data, ts, false),
            false => talk.client.publish_audio_data(data, ts, false),
        };
        talk.handle_client_output(sent.into_iter().collect());
    }
    talk.out
}

/// A client and a server session in memory; `out` collects what the
/// client sent.
struct Conversation {
    client: ClientSession,
    server: ServerSession,
    out: Vec<u8>,
}

impl Conversation {
    fn handle_client_output(&mut self, results: Vec<ClientSessionResult>) {
        for r in results {
            let ClientSessionResult::OutboundResponse(packet) = r else {
                continue;
            };
            self.out.extend_from_slice(&packet.bytes);
            let answers = self.server.handle_input(&packet.bytes).unwrap_or_default();
            self.handle_server_output(answers);
        }
    }

    /// The server's results: requests accepted, responses to the client.
    fn handle_server_output(&mut self, results: Vec<ServerSessionResult>) {
        let mut queue = VecDeque::from(results);
        while let Some(r) = queue.pop_front() {
            match r {
                ServerSessionResult::OutboundResponse(packet) => {
                    let answers = self.client.handle_input(&packet.bytes).unwrap_or_default();
                    self.handle_client_output(answers);
                }
                ServerSessionResult::RaisedEvent(
                    ServerSessionEvent::ConnectionRequested { request_id, .. }
                    | ServerSessionEvent::PublishStreamRequested { request_id, .. },
                ) => queue.extend(self.server.accept_request(request_id).unwrap_or_default()),
                _ => {}
            }
        }
    }
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

/// Input: `[intent][body]`: `intent` bit 0 makes the body a WHEP offer
/// (else WHIP), bit 1 a trickled candidate line.
pub fn sdp_offer(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let Ok(body) = std::str::from_utf8(body) else {
        return;
    };
    if flags & 2 != 0 {
        let _ = str0m::Candidate::from_sdp_string(body);
        return;
    }
    let intent = if flags & 1 != 0 {
        Intent::Play
    } else {
        Intent::Publish
    };
    ENGINE.with(|engine| {
        let mut engine = engine.borrow_mut();
        let engine = engine.get_or_insert_with(|| {
            Engine::new(EngineConfig::default(), Instant::now()).expect("an engine with a DTLS certificate")
        });
        let _ = engine.negotiate(Instant::now(), body, intent, None);
    });
}
