//! Ingest: encoders that do not speak WebRTC publishing into rooms.
//!
//! - `rtmp`: the `--rtmp-listen` driver: TCP, `rml_rtmp`'s Sans-IO
//!   handshake and server session, authorization of the stream key, one
//!   task per connection feeding the room's home worker;
//! - `rtsp`: `POST /v1/ingest/{room}` pulls: one task per camera around
//!   `retina`'s client, reconnecting with backoff (`Retry`, Sans-IO);
//!   each pull is a record in the cluster's `pulls` bucket that any node
//!   answers from and a live node adopts when the pull's node leaves
//!   (`records`, Sans-IO: the record, its sealed credentials, `Orphans`);
//! - `source` (Sans-IO): H.264 access units and audio frames (from FLV
//!   messages or `retina`'s frames) to RTP packets of an H.264 and an Opus
//!   track, with sender reports from the source's clock;
//! - `flv`, `h264`, `audio`: FLV tag bodies, RFC 6184 packetization, AAC
//!   and G.711 to Opus.
//!
//! In the engine an ingest is a source without an `Rtc`
//! (`engine::ingest`): viewers, other workers and LL-HLS take its packets
//! as a WHIP publisher's.

mod audio;
mod flv;
mod h264;
pub mod records;
pub mod rtmp;
pub mod rtsp;
mod source;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use wave_metrics::{Kind, family, sample, single};

pub use source::Source;

use signaling::{MediaError, SessionId};

use crate::engine::{IngestItem, IngestOpen};

/// What an ingest (an RTMP push, an RTSP pull) needs of the node: a source
/// opened as the room's publisher on its home worker, its packets in order,
/// its end. The node implements it; the ingests name only this, so the node
/// can own the pull table without a circle between them.
pub trait IngestNode: Send + Sync + 'static {
    /// Opens a source without an `Rtc`; it counts as a session of the room.
    fn open_ingest(&self, open: IngestOpen) -> impl Future<Output = Result<(), MediaError>> + Send;
    /// Hands the source's packets to its worker, in order.
    fn ingest(
        &self,
        session: &SessionId,
        packets: Vec<IngestItem>,
    ) -> impl Future<Output = Result<(), MediaError>> + Send;
    /// Ends the source (its viewers wait for the room's next one).
    fn end_ingest(&self, session: &SessionId) -> impl Future<Output = Result<(), MediaError>> + Send;
}

/// Why a stream is refused or cut off; each is a label of
/// `wave_rtmp_rejected_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A codec other than H.264 and AAC (Enhanced RTMP included).
    Codec(String),
    /// Media of a codec whose configuration never came.
    NotAnnounced(&'static str),
    /// A message that does not parse.
    Malformed(&'static str),
    /// A message or setting over a bound.
    Oversized(&'static str),
}

impl Refusal {
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::Codec(_) => Reason::Codec,
            Refusal::NotAnnounced(_) => Reason::NotAnnounced,
            Refusal::Malformed(_) => Reason::Malformed,
            Refusal::Oversized(_) => Reason::Oversized,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Codec(c) => write!(f, "unsupported codec: {c} (H.264 and AAC only)"),
            Refusal::NotAnnounced(what) => write!(f, "codec not announced: {what}"),
            Refusal::Malformed(what) => write!(f, "malformed: {what}"),
            Refusal::Oversized(what) => write!(f, "over the limit: {what}"),
        }
    }
}

/// The labels of `wave_rtmp_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A token missing, invalid, expired or without the publish grant.
    Auth,
    /// An app other than `live`, or a stream key naming no valid room.
    BadName,
    /// The room already has a publisher.
    RoomHeld,
    /// The node refused the source (at capacity, shutting down).
    Node,
    Codec,
    NotAnnounced,
    Malformed,
    Oversized,
    /// Bytes that are not RTMP (handshake or chunk stream).
    Protocol,
    /// No handshake, publish or media in time.
    Timeout,
    /// Over the concurrent connection limit.
    Connections,
}

const REASONS: [(Reason, &str); 11] = [
    (Reason::Auth, "auth"),
    (Reason::BadName, "bad_name"),
    (Reason::RoomHeld, "room_held"),
    (Reason::Node, "node"),
    (Reason::Codec, "codec"),
    (Reason::NotAnnounced, "not_announced"),
    (Reason::Malformed, "malformed"),
    (Reason::Oversized, "oversized"),
    (Reason::Protocol, "protocol"),
    (Reason::Timeout, "timeout"),
    (Reason::Connections, "connections"),
];

/// Process-wide counters (one RTMP listener per node).
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
static PUBLISHING: AtomicU64 = AtomicU64::new(0);
static REJECTED: [AtomicU64; REASONS.len()] = [const { AtomicU64::new(0) }; REASONS.len()];

fn count_rejected(reason: Reason) {
    if let Some(i) = REASONS.iter().position(|(r, _)| *r == reason) {
        REJECTED[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The `wave_rtmp_*` families for `/metrics`.
pub fn render_metrics(out: &mut String) {
    single(
        out,
        "wave_rtmp_connections_total",
        Kind::Counter,
        "RTMP connections accepted.",
        CONNECTIONS.load(Ordering::Relaxed),
    );
    single(
        out,
        "wave_rtmp_publishing",
        Kind::Gauge,
        "RTMP streams publishing into a room.",
        PUBLISHING.load(Ordering::Relaxed),
    );
    let names = REASONS.map(|(_, name)| name);
    by_reason(
        out,
        "wave_rtmp_rejected_total",
        "RTMP connections refused or cut off, by reason.",
        &names,
        &REJECTED,
    );
}

/// A counter family with one sample per `reason` label.
fn by_reason(out: &mut String, name: &str, help: &str, reasons: &[&str], counts: &[AtomicU64]) {
    family(out, name, Kind::Counter, help);
    let mut labels = String::new();
    for (reason, count) in reasons.iter().zip(counts) {
        labels.clear();
        let _ = write!(labels, "reason=\"{reason}\"");
        sample(out, name, &labels, count.load(Ordering::Relaxed));
    }
}

/// RFC 5905: NTP era 0 starts 2,208,988,800 s before the UNIX epoch.
const NTP_UNIX: u64 = 2_208_988_800;

/// The wall clock as NTP 32.32 (RFC 5905): a driver's one clock read
/// for a source's sender reports.
fn ntp_now() -> u64 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    ((unix.as_secs() + NTP_UNIX) << 32) | ((u64::from(unix.subsec_nanos()) << 32) / 1_000_000_000)
}

/// A deterministic xorshift64 stream: the garbage the parsers' tests feed.
#[cfg(test)]
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
