//! H.264 pictures with openh264: decoding the bridge's access units to
//! I420, scaling, encoding back to access units, and the NAL framing
//! conversions between openh264 (Annex B) and `avc1` samples (4-byte
//! lengths, ISO/IEC 14496-15).

use openh264::formats::{YUVBuffer, YUVSource};

use crate::Error;
use crate::h264::{AccessUnit, NAL_IDR, NAL_PPS, NAL_SPS};

/// A decoded picture, I420 with tight planes (chroma rounded up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl Picture {
    /// Chroma plane size for a `width`x`height` picture.
    pub fn chroma_size(width: usize, height: usize) -> (usize, usize) {
        (width.div_ceil(2), height.div_ceil(2))
    }

    /// A test pattern that moves: a diagonal luma ramp shifted by `n`
    /// (the picture's number) and a chroma that drifts with it, so every
    /// picture costs an encoder a real P frame (publishers in tests).
    pub fn test_ramp(width: usize, height: usize, n: u64) -> Picture {
        let (cw, ch) = Self::chroma_size(width, height);
        Picture {
            width,
            height,
            y: (0..width * height)
                .map(|i| ((i % width + i / width + (n % 220) as usize * 4) % 220 + 16) as u8)
                .collect(),
            u: vec![(90 + n % 60) as u8; cw * ch],
            v: vec![160; cw * ch],
        }
    }

    /// Box-filter downscale (every output pixel averages the source pixels
    /// it covers); sizes above the source are clamped to it.
    pub fn scaled(&self, width: usize, height: usize) -> Picture {
        let (width, height) = (width.clamp(1, self.width), height.clamp(1, self.height));
        let (cw, ch) = Self::chroma_size(self.width, self.height);
        let (dcw, dch) = Self::chroma_size(width, height);
        Picture {
            width,
            height,
            y: scale_plane(&self.y, self.width, self.height, width, height),
            u: scale_plane(&self.u, cw, ch, dcw, dch),
            v: scale_plane(&self.v, cw, ch, dcw, dch),
        }
    }

    /// BT.601 limited-range YUV → interleaved RGB8 (what H.264 cameras and
    /// browsers send unless the VUI says otherwise).
    pub fn to_rgb8(&self) -> Vec<u8> {
        let (cw, _) = Self::chroma_size(self.width, self.height);
        let mut out = Vec::with_capacity(self.width * self.height * 3);
        for row in 0..self.height {
            for col in 0..self.width {
                let y = i32::from(self.y[row * self.width + col]) - 16;
                let c = (row / 2) * cw + col / 2;
                let u = i32::from(self.u[c]) - 128;
                let v = i32::from(self.v[c]) - 128;
                // Fixed point (×256) of the BT.601 matrix.
                let (y, clamp) = (298 * y + 128, |x: i32| (x >> 8).clamp(0, 255) as u8);
                out.push(clamp(y + 409 * v));
                out.push(clamp(y - 100 * u - 208 * v));
                out.push(clamp(y + 516 * u));
            }
        }
        out
    }

    fn to_yuv_buffer(&self) -> Result<YUVBuffer, Error> {
        if !self.width.is_multiple_of(2) || !self.height.is_multiple_of(2) {
            return Err(codec_error("openh264", "encoder needs even picture sizes"));
        }
        let mut data = Vec::with_capacity(self.y.len() + self.u.len() + self.v.len());
        data.extend_from_slice(&self.y);
        data.extend_from_slice(&self.u);
        data.extend_from_slice(&self.v);
        Ok(YUVBuffer::from_vec(data, self.width, self.height))
    }
}

/// Area average of a `sw`x`sh` plane into `dw`x`dh` (`dw <= sw`, `dh <= sh`).
fn scale_plane(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(dw * dh);
    for dy in 0..dh {
        let (y0, y1) = (dy * sh / dh, ((dy + 1) * sh / dh).max(dy * sh / dh + 1));
        for dx in 0..dw {
            let (x0, x1) = (dx * sw / dw, ((dx + 1) * sw / dw).max(dx * sw / dw + 1));
            let mut sum = 0u32;
            for row in y0..y1 {
                let line = &src[row * sw..(row + 1) * sw];
                sum += line[x0..x1].iter().map(|&p| u32::from(p)).sum::<u32>();
            }
            let n = ((y1 - y0) * (x1 - x0)) as u32;
            out.push(((sum + n / 2) / n) as u8);
        }
    }
    out
}

/// An openh264 decoder for one stream of access units.
pub struct H264Decoder {
    inner: openh264::decoder::Decoder,
    annexb: Vec<u8>,
}

impl std::fmt::Debug for H264Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Decoder").finish_non_exhaustive()
    }
}

impl H264Decoder {
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            inner: openh264::decoder::Decoder::new().map_err(openh264_error)?,
            annexb: Vec::new(),
        })
    }

    /// Decodes one access unit (`avc1` framing). `parameter_sets` (SPS,
    /// PPS) go in front, for access units that do not repeat them in-band.
    /// `Ok(None)`: the decoder produced no picture for this unit.
    pub fn decode(&mut self, parameter_sets: &[&[u8]], au: &AccessUnit) -> Result<Option<Picture>, Error> {
        self.annexb.clear();
        for nalu in parameter_sets {
            self.annexb.extend_from_slice(&[0, 0, 0, 1]);
            self.annexb.extend_from_slice(nalu);
        }
        for nalu in avcc_nal_units(&au.data)? {
            self.annexb.extend_from_slice(&[0, 0, 0, 1]);
            self.annexb.extend_from_slice(nalu);
        }
        let Some(yuv) = self.inner.decode(&self.annexb).map_err(openh264_error)? else {
            return Ok(None);
        };
        let (width, height) = yuv.dimensions();
        let (ys, us, vs) = yuv.strides();
        let (cw, ch) = Picture::chroma_size(width, height);
        let copy = |plane: &[u8], stride: usize, w: usize, h: usize| -> Option<Vec<u8>> {
            let mut out = Vec::with_capacity(w * h);
            for row in 0..h {
                out.extend_from_slice(plane.get(row * stride..row * stride + w)?);
            }
            Some(out)
        };
        let planes = (
            copy(yuv.y(), ys, width, height),
            copy(yuv.u(), us, cw, ch),
            copy(yuv.v(), vs, cw, ch),
        );
        let (Some(y), Some(u), Some(v)) = planes else {
            return Err(codec_error("openh264", "decoded planes smaller than their size"));
        };
        Ok(Some(Picture {
            width,
            height,
            y,
            u,
            v,
        }))
    }
}

/// The NAL units of an `avc1` sample (4-byte big-endian lengths).
pub fn avcc_nal_units(mut data: &[u8]) -> Result<Vec<&[u8]>, Error> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let [a, b, c, d, rest @ ..] = data else {
            return Err(codec_error("h264", "truncated NAL length"));
        };
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        if len == 0 || len > rest.len() {
            return Err(codec_error("h264", "NAL length out of range"));
        }
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    Ok(out)
}

/// Builds an [`AccessUnit`] from Annex B NAL units (with or without start
/// codes) as openh264 writes them.
pub fn access_unit_from_annexb<'a>(timestamp: i64, nalus: impl IntoIterator<Item = &'a [u8]>) -> AccessUnit {
    let mut au = AccessUnit {
        timestamp,
        keyframe: false,
        data: Vec::new(),
        sps: None,
        pps: None,
    };
    for nalu in nalus {
        let nalu = strip_start_code(nalu);
        let Some(&header) = nalu.first() else { continue };
        match header & 0x1f {
            NAL_SPS => au.sps = Some(nalu.to_vec()),
            NAL_PPS => au.pps = Some(nalu.to_vec()),
            NAL_IDR => au.keyframe = true,
            _ => {}
        }
        // openh264 NAL units are far below 4 GiB.
        au.data.extend_from_slice(&(nalu.len() as u32).to_be_bytes());
        au.data.extend_from_slice(nalu);
    }
    au
}

fn strip_start_code(nalu: &[u8]) -> &[u8] {
    nalu.strip_prefix(&[0, 0, 0, 1])
        .or_else(|| nalu.strip_prefix(&[0, 0, 1]))
        .unwrap_or(nalu)
}

/// An openh264 encoder with the settings the bridge's renditions need:
/// constrained baseline output, SPS/PPS with every IDR, IDRs only when
/// asked (so rungs follow the source's aligned keyframes), bitrate rate
/// control (which may skip a picture to hold the rate).
pub struct H264Encoder {
    inner: openh264::encoder::Encoder,
}

impl std::fmt::Debug for H264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Encoder").finish_non_exhaustive()
    }
}

impl H264Encoder {
    pub fn new(bitrate: u32, max_frame_rate: f32) -> Result<Self, Error> {
        use openh264::encoder::{
            BitRate, EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode, SpsPpsStrategy, UsageType,
        };
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(bitrate))
            .max_frame_rate(FrameRate::from_hz(max_frame_rate))
            .rate_control_mode(RateControlMode::Bitrate)
            .usage_type(UsageType::CameraVideoRealTime)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .skip_frames(true)
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .scene_change_detect(false);
        let inner = openh264::encoder::Encoder::with_api_config(openh264::OpenH264API::from_source(), config)
            .map_err(openh264_error)?;
        Ok(Self { inner })
    }

    /// Encodes `picture` shown at `timestamp` (90 kHz); `keyframe` forces
    /// an IDR. `Ok(None)` when the encoder skipped the picture.
    pub fn encode(
        &mut self,
        picture: &Picture,
        timestamp: i64,
        keyframe: bool,
    ) -> Result<Option<AccessUnit>, Error> {
        if keyframe {
            self.inner.force_intra_frame();
        }
        let yuv = picture.to_yuv_buffer()?;
        let millis = u64::try_from(timestamp.max(0) / 90).unwrap_or(0);
        let stream = self
            .inner
            .encode_at(&yuv, openh264::Timestamp::from_millis(millis))
            .map_err(openh264_error)?;
        // A NAL unit borrows its layer, which borrows the stream: copy out.
        let mut nalus = Vec::new();
        for layer in (0..stream.num_layers()).filter_map(|i| stream.layer(i)) {
            nalus.extend((0..layer.nal_count()).filter_map(|n| layer.nal_unit(n).map(<[u8]>::to_vec)));
        }
        let au = access_unit_from_annexb(timestamp, nalus.iter().map(Vec::as_slice));
        Ok((!au.data.is_empty()).then_some(au))
    }
}

pub(crate) fn codec_error(codec: &'static str, reason: &str) -> Error {
    Error::Codec {
        codec,
        reason: reason.to_string(),
    }
}

fn openh264_error(e: openh264::Error) -> Error {
    Error::Codec {
        codec: "openh264",
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_scaler_averages() {
        let src = [10u8, 20, 30, 40, 50, 60, 70, 80];
        // 4x2 → 2x1: averages of 2x2 blocks.
        assert_eq!(
            scale_plane(&src, 4, 2, 2, 1),
            [(10 + 20 + 50 + 60) / 4, (30 + 40 + 70 + 80) / 4]
        );
        assert_eq!(scale_plane(&src, 4, 2, 4, 2), src);
        // 3 → 2 columns: uneven covers, never empty.
        assert_eq!(scale_plane(&[0, 90, 200], 3, 1, 2, 1), [0, 145]);
    }

    #[test]
    fn avcc_framing_round_trips_and_refuses_garbage() {
        let au = access_unit_from_annexb(
            5,
            [&[0, 0, 0, 1, 0x67, 1][..], &[0, 0, 1, 0x68, 2], &[0x65, 3, 4]],
        );
        assert!(au.keyframe);
        assert_eq!(au.sps.as_deref(), Some(&[0x67, 1][..]));
        assert_eq!(au.pps.as_deref(), Some(&[0x68, 2][..]));
        assert_eq!(
            avcc_nal_units(&au.data).unwrap(),
            [&[0x67, 1][..], &[0x68, 2], &[0x65, 3, 4]]
        );
        assert!(avcc_nal_units(&[0, 0, 0, 9, 1]).is_err());
        assert!(avcc_nal_units(&[0, 0]).is_err());
        assert!(avcc_nal_units(&[0, 0, 0, 0]).is_err());
    }

    #[test]
    fn grey_is_grey_in_rgb() {
        let p = Picture {
            width: 2,
            height: 2,
            y: vec![126; 4],
            u: vec![128],
            v: vec![128],
        };
        for c in p.to_rgb8() {
            assert!((127..=129).contains(&c), "{c}");
        }
    }
}
