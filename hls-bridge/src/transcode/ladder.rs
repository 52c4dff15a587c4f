//! An ABR ladder for publishers that send one H.264 layer: decode with
//! openh264, scale down, re-encode each rung (off by default: a per-node
//! flag, since it costs a core per few rooms).
//!
//! Sans-IO: push the source's access units (90 kHz timestamps), drain the
//! rungs' frames as [`Frame::Video`], the same shape as a simulcast layer's,
//! so the segmenter treats a rung like any other rendition. Every rung
//! encodes an IDR whenever the source has one, so segments of all
//! renditions start at the same instant (ref §6.1); keyframes can also be
//! requested.

use std::collections::VecDeque;

use tracing::debug;

use crate::h264::{AccessUnit, AvcConfig};
use crate::transcode::video::{H264Decoder, H264Encoder, Picture};
use crate::{Error, Frame};

/// One rendition below the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    /// Width and height are the source's divided by this (like WebRTC's
    /// `scaleResolutionDownBy`), rounded down to even.
    pub scale_down_by: u32,
    /// Target bits per second.
    pub bitrate: u32,
}

/// What the ladder encodes.
#[derive(Debug, Clone, PartialEq)]
pub struct LadderConfig {
    /// From the highest rung to the lowest.
    pub rungs: Vec<Rung>,
    /// The encoder's rate control frame rate ceiling.
    pub max_frame_rate: f32,
}

impl Default for LadderConfig {
    /// The two layers a browser's simulcast would add under the source:
    /// half size at 500 kbit/s, quarter size at 150 kbit/s.
    fn default() -> Self {
        Self {
            rungs: vec![
                Rung {
                    scale_down_by: 2,
                    bitrate: 500_000,
                },
                Rung {
                    scale_down_by: 4,
                    bitrate: 150_000,
                },
            ],
            max_frame_rate: 30.0,
        }
    }
}

/// Index of a rung in [`LadderConfig::rungs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RungId(pub usize);

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LadderStats {
    pub decoded: u64,
    /// Source access units dropped: undecodable, or waiting for an IDR.
    pub dropped: u64,
    pub encoded: u64,
}

/// Rungs smaller than this (either side) are not encoded.
const MIN_SIDE: usize = 16;

/// Decodes one source layer and encodes the rungs.
#[derive(Debug)]
pub struct Ladder {
    config: LadderConfig,
    decoder: H264Decoder,
    rungs: Vec<RungState>,
    source: Option<(usize, usize)>,
    need_idr: bool,
    out: VecDeque<(RungId, Frame)>,
    stats: LadderStats,
}

#[derive(Debug)]
struct RungState {
    rung: Rung,
    encoder: Option<H264Encoder>,
    avc: Option<AvcConfig>,
    keyframe_requested: bool,
}

impl Ladder {
    pub fn new(config: LadderConfig) -> Result<Self, Error> {
        let rungs = config
            .rungs
            .iter()
            .map(|&rung| RungState {
                rung,
                encoder: None,
                avc: None,
                keyframe_requested: true,
            })
            .collect();
        Ok(Self {
            decoder: H264Decoder::new()?,
            config,
            rungs,
            source: None,
            need_idr: true,
            out: VecDeque::new(),
            stats: LadderStats::default(),
        })
    }

    pub fn stats(&self) -> LadderStats {
        self.stats
    }

    /// The next rung picture is an IDR (all rungs when `rung` is `None`).
    pub fn request_keyframe(&mut self, rung: Option<RungId>) {
        for (i, state) in self.rungs.iter_mut().enumerate() {
            if rung.is_none_or(|r| r.0 == i) {
                state.keyframe_requested = true;
            }
        }
    }

    /// One access unit of the source layer, whose parameters are `avc`
    /// (the bridge's current [`AvcConfig`] for the track). An error leaves
    /// the ladder waiting for the source's next IDR.
    pub fn handle_access_unit(&mut self, avc: &AvcConfig, au: &AccessUnit) -> Result<(), Error> {
        if self.need_idr && !au.keyframe {
            self.stats.dropped += 1;
            return Ok(());
        }
        let picture = match self.decoder.decode(&[&avc.sps, &avc.pps], au) {
            Ok(Some(picture)) => picture,
            Ok(None) => {
                self.stats.dropped += 1;
                return Ok(());
            }
            Err(error) => {
                self.stats.dropped += 1;
                self.need_idr = true;
                debug!(%error, timestamp = au.timestamp, "ladder: undecodable source access unit");
                return Err(error);
            }
        };
        self.need_idr = false;
        self.stats.decoded += 1;
        let size = (picture.width, picture.height);
        if self.source != Some(size) {
            // New source size: new encoders (new SPS, new init segments).
            debug!(width = size.0, height = size.1, "ladder: source size");
            self.source = Some(size);
            for state in &mut self.rungs {
                state.encoder = None;
                state.keyframe_requested = true;
            }
        }
        let mut first_error = None;
        for (i, state) in self.rungs.iter_mut().enumerate() {
            match encode_rung(state, &picture, au, self.config.max_frame_rate) {
                Ok(Some(frame)) => {
                    self.stats.encoded += 1;
                    self.out.push_back((RungId(i), frame));
                }
                Ok(None) => {}
                Err(error) => {
                    debug!(rung = i, %error, "ladder: encoding failed");
                    state.encoder = None;
                    state.keyframe_requested = true;
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The next encoded rung picture, in source order.
    pub fn poll_frame(&mut self) -> Option<(RungId, Frame)> {
        self.out.pop_front()
    }
}

fn encode_rung(
    state: &mut RungState,
    picture: &Picture,
    source: &AccessUnit,
    fps: f32,
) -> Result<Option<Frame>, Error> {
    let scale = state.rung.scale_down_by.max(1) as usize;
    let (w, h) = ((picture.width / scale) & !1, (picture.height / scale) & !1);
    if w < MIN_SIDE || h < MIN_SIDE {
        return Ok(None);
    }
    let encoder = match &mut state.encoder {
        Some(encoder) => encoder,
        None => state.encoder.insert(H264Encoder::new(state.rung.bitrate, fps)?),
    };
    let keyframe = source.keyframe || state.keyframe_requested;
    let Some(au) = encoder.encode(&picture.scaled(w, h), source.timestamp, keyframe)? else {
        return Ok(None);
    };
    if au.keyframe {
        state.keyframe_requested = false;
    }
    let mut new_config = None;
    if let (Some(sps), Some(pps)) = (&au.sps, &au.pps) {
        let changed = state.avc.as_ref().is_none_or(|c| &c.sps != sps || &c.pps != pps);
        if changed {
            let config = AvcConfig::new(sps.clone(), pps.clone())?;
            state.avc = Some(config.clone());
            new_config = Some(config);
        }
    }
    if state.avc.is_none() {
        // The encoder's first output always carries SPS/PPS; without them
        // the rung cannot start.
        state.keyframe_requested = true;
        return Ok(None);
    }
    Ok(Some(Frame::Video { au, new_config }))
}
