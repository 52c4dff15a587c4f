//! WAVE's HTTP front door: WHIP/WHEP resources, auth, REST, the demo page.

pub mod media;

pub use media::{
    IcePatch, IceRestartAnswer, LayerPref, MediaError, MediaNode, PlayRequest, PublishRequest, RoomId,
    RoomInfo, SessionId,
};
