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

pub mod inproc;
pub mod message;
pub mod wire;

pub use inproc::{Handed, Inbox};
pub use message::{Ext, MediaPacket, Message, SourceId, TrackDesc, WorkerId};
pub use wire::{DecodeError, decode, encode};
