//! The relay protocol: how one media engine feeds a room's viewers held by
//! another engine, on another worker of the node today and on another node
//! over QUIC next.
//!
//! The engine that receives a room's publishers (the room's *home*)
//! announces each publisher ([`Message::Source`]) to every engine that
//! watches the room ([`Message::Watch`]) and hands it every media packet
//! ([`Message::Media`]); a watching engine keeps a *mirror* of each source
//! and forwards to its own viewers through the same code as for a local
//! publisher. Keyframe requests go back ([`Message::Keyframe`]) and the home
//! merges them with its own.
//!
//! - [`message`]: the messages, plain data and time-free (a media packet's
//!   arrival instant is the receiver's own clock reading).
//! - [`wire`]: their byte encoding, which a network transport carries as is;
//!   decoding bounds every field and never panics.
//! - [`inproc`]: the in-process transport between a node's workers: one
//!   bounded inbox per worker, media dropped (and counted) when full, control
//!   messages never.
//! - [`gateway`]: a node's gateway to the other nodes, Sans-IO: to its
//!   workers one more engine; it merges their watches into one per room and
//!   link, and sends each packet once per link.
//! - [`net`]: the gateway's driver, QUIC links (quinn) with control on a
//!   stream and media as datagrams; [`tls`]: their mutual authentication
//!   by registry fingerprints.

#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod gop;
pub mod inproc;
pub mod message;
pub mod net;
pub mod tls;
pub mod wire;

pub use gateway::{Gateway, GatewayOutput, LinkId, RoomLinks, Topic};
pub use inproc::{Handed, Inbox};
pub use message::{Ext, MediaPacket, Message, SourceId, TrackDesc, WorkerId, starts_keyframe};
pub use net::{Relay, RelayError, RelayStats};
pub use tls::{Fingerprint, Trust};
pub use wire::{DecodeError, decode, encode};
