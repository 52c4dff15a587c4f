//! Room thumbnails (`/hls/{room}/thumbnail.jpg` / `.png`): the latest IDR
//! of the room's top layer, decoded with openh264 and encoded as JPEG or PNG.
//!
//! [`render`] is a pure function. [`ThumbnailCache`] keeps each room's
//! latest IDR (cheap: no decoding on the media path) and renders on the
//! first request after a new IDR, once per format; decoding a 720p IDR
//! takes milliseconds, so the HTTP layer calls it from a blocking task.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::Error;
use crate::h264::{AccessUnit, AvcConfig};
use crate::transcode::video::{H264Decoder, Picture, codec_error};

/// The image formats served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

impl ImageFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
        }
    }

    /// `thumbnail.jpg` → JPEG, `thumbnail.png` → PNG.
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext {
            "jpg" | "jpeg" => Some(ImageFormat::Jpeg),
            "png" => Some(ImageFormat::Png),
            _ => None,
        }
    }
}

/// How thumbnails look.
#[derive(Debug, Clone, Copy)]
pub struct ThumbnailConfig {
    /// Pictures wider than this are scaled down, keeping the aspect ratio.
    pub max_width: u32,
    /// JPEG quality, 1–100.
    pub jpeg_quality: u8,
    /// A stored IDR of a lower layer is replaced by a lower layer's newer
    /// IDR only once the top layer sent none for this long (it stopped).
    pub top_layer_timeout: Duration,
}

impl Default for ThumbnailConfig {
    fn default() -> Self {
        Self {
            max_width: 640,
            jpeg_quality: 80,
            top_layer_timeout: Duration::from_secs(10),
        }
    }
}

/// Decodes the IDR access unit `au` of a stream with parameters `avc` and
/// encodes the picture as `format`, no wider than `config.max_width`.
pub fn render(
    avc: &AvcConfig,
    au: &AccessUnit,
    format: ImageFormat,
    config: &ThumbnailConfig,
) -> Result<Vec<u8>, Error> {
    if !au.keyframe {
        return Err(codec_error("h264", "thumbnail needs an IDR access unit"));
    }
    let mut decoder = H264Decoder::new()?;
    let picture = decoder
        .decode(&[&avc.sps, &avc.pps], au)?
        .ok_or_else(|| codec_error("openh264", "IDR decoded to no picture"))?;
    let picture = fit_width(picture, config.max_width as usize);
    encode_image(&picture, format, config.jpeg_quality)
}

/// One stored IDR and what was rendered from it: each format is rendered
/// at most once, on the first request, by whichever caller asks first
/// (others wait for that result). Shared (`Arc`) so the HTTP layer can
/// render it off the media path without holding any lock of the cache.
#[derive(Debug)]
pub struct Keyframe {
    layer: u8,
    received: Instant,
    avc: AvcConfig,
    au: AccessUnit,
    config: ThumbnailConfig,
    jpeg: OnceLock<Result<Arc<Vec<u8>>, String>>,
    png: OnceLock<Result<Arc<Vec<u8>>, String>>,
}

impl Keyframe {
    /// The IDR `au` of a stream with parameters `avc`, of simulcast `layer`.
    pub fn new(
        layer: u8,
        received: Instant,
        avc: AvcConfig,
        au: AccessUnit,
        config: ThumbnailConfig,
    ) -> Self {
        Self {
            layer,
            received,
            avc,
            au,
            config,
            jpeg: OnceLock::new(),
            png: OnceLock::new(),
        }
    }

    pub fn layer(&self) -> u8 {
        self.layer
    }

    /// RTP timestamp (90 kHz, unwrapped) of the IDR: names this picture.
    pub fn timestamp(&self) -> i64 {
        self.au.timestamp
    }

    /// The picture as `format`; decoded and encoded on the first call only
    /// (a failure is remembered too: the same IDR never decodes later).
    pub fn render(&self, format: ImageFormat) -> Result<Arc<Vec<u8>>, Error> {
        let cell = match format {
            ImageFormat::Jpeg => &self.jpeg,
            ImageFormat::Png => &self.png,
        };
        cell.get_or_init(|| {
            render(&self.avc, &self.au, format, &self.config)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Error::Image)
    }

    /// Whether `format` was rendered already (cheap to serve).
    pub fn is_rendered(&self, format: ImageFormat) -> bool {
        match format {
            ImageFormat::Jpeg => self.jpeg.get().is_some(),
            ImageFormat::Png => self.png.get().is_some(),
        }
    }
}

/// The latest top-layer IDR per room, rendered on demand. `K` is the
/// room's key (the node's room id).
#[derive(Debug)]
pub struct ThumbnailCache<K> {
    config: ThumbnailConfig,
    rooms: BTreeMap<K, Arc<Keyframe>>,
}

impl<K: Ord> ThumbnailCache<K> {
    pub fn new(config: ThumbnailConfig) -> Self {
        Self {
            config,
            rooms: BTreeMap::new(),
        }
    }

    /// An access unit of `layer` (0 = lowest) of `room`, received at `now`.
    /// Only IDRs are kept: one of the highest layer seen, unless that layer
    /// went quiet for [`ThumbnailConfig::top_layer_timeout`].
    pub fn handle_access_unit(&mut self, now: Instant, room: K, layer: u8, avc: &AvcConfig, au: &AccessUnit) {
        if !au.keyframe {
            return;
        }
        if let Some(entry) = self.rooms.get(&room) {
            let stale = now.saturating_duration_since(entry.received) >= self.config.top_layer_timeout;
            if layer < entry.layer && !stale {
                return;
            }
        }
        self.rooms.insert(
            room,
            Arc::new(Keyframe::new(layer, now, avc.clone(), au.clone(), self.config)),
        );
    }

    /// The room's stored IDR, to render (possibly on another thread).
    pub fn latest(&self, room: &K) -> Option<Arc<Keyframe>> {
        self.rooms.get(room).cloned()
    }

    /// The room's thumbnail as `format`; `Ok(None)` when the room has sent
    /// no IDR yet (a 404 for the HTTP layer). Rendered once per IDR.
    pub fn thumbnail(&self, room: &K, format: ImageFormat) -> Result<Option<Arc<Vec<u8>>>, Error> {
        match self.rooms.get(room) {
            Some(keyframe) => keyframe.render(format).map(Some),
            None => Ok(None),
        }
    }

    /// The room closed.
    pub fn remove(&mut self, room: &K) {
        self.rooms.remove(room);
    }
}

fn fit_width(picture: Picture, max_width: usize) -> Picture {
    if max_width == 0 || picture.width <= max_width {
        return picture;
    }
    let height = (picture.height * max_width / picture.width).max(1);
    picture.scaled(max_width, height)
}

fn encode_image(picture: &Picture, format: ImageFormat, quality: u8) -> Result<Vec<u8>, Error> {
    let rgb = picture.to_rgb8();
    let mut out = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            // Baseline JPEG sizes are 16-bit (ITU-T T.81 §B.2.2); SPS sizes are ≤ 16384.
            let (Ok(w), Ok(h)) = (u16::try_from(picture.width), u16::try_from(picture.height)) else {
                return Err(Error::Image("picture too large for JPEG".into()));
            };
            jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
                .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| Error::Image(e.to_string()))?;
        }
        ImageFormat::Png => {
            let (Ok(w), Ok(h)) = (u32::try_from(picture.width), u32::try_from(picture.height)) else {
                return Err(Error::Image("picture too large for PNG".into()));
            };
            let mut encoder = png::Encoder::new(&mut out, w, h);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder
                .write_header()
                .and_then(|mut writer| writer.write_image_data(&rgb))
                .map_err(|e| Error::Image(e.to_string()))?;
        }
    }
    Ok(out)
}
