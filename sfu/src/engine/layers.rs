//! Which simulcast layer each viewer gets, and the keyframe requests that
//! switch it: merged and throttled per layer, whoever asks.

use std::time::Instant;

use relay::Message;
use str0m::bwe::Bitrate;
use str0m::media::{KeyframeRequestKind, MediaKind};
use tracing::{debug, trace};
use wave_vocab::LayerPref;

use super::state::{Role, SourceTrack};
use super::{BWE_USABLE, Engine, PeerId, UPSWITCH_HOLD};

impl Engine {
    /// Re-evaluates which layer a viewer should get, and starts a switch if it changed.
    pub(super) fn select_layer(&mut self, now: Instant, vid: PeerId) {
        let Some(fit) = self.layer_fit(now, vid) else {
            return;
        };
        let Some(Role::Viewer(v)) = self.peers.get_mut(&vid).map(|p| &mut p.role) else {
            return;
        };
        // Hysteresis: down at once, up only after the estimate held for UPSWITCH_HOLD.
        let choose = match fit.current {
            Some((rank, layer))
                if fit.best.0 > rank && v.bwe_bps.is_some() && v.target == v.current && !v.forced =>
            {
                let since = *v.up_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= UPSWITCH_HOLD {
                    fit.best.1
                } else {
                    layer
                }
            }
            _ => {
                v.up_since = None;
                fit.best.1
            }
        };
        // Re-arm the estimator only on a real change (> 10%), not on every tick's noise.
        let rearm = fit.desired_bps.abs_diff(v.desired_bps) * 10 > v.desired_bps;
        if rearm {
            v.desired_bps = fit.desired_bps;
        }
        v.forced = false;
        let unchanged = v.target == Some(choose);
        let old_target = v.target;
        let current = v.current;
        if !unchanged {
            v.target = Some(choose);
            v.up_since = None;
        }
        if rearm && let Some(peer) = self.peers.get_mut(&vid) {
            peer.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(150_000), Bitrate::bps(fit.desired_bps));
        }
        if unchanged {
            return;
        }
        debug!(viewer = vid.0, from = ?current, to = choose, "layer target");
        if let Some(p) = self.source_mut(fit.source)
            && let Some(track) = p.tracks.iter_mut().find(|t| t.kind == MediaKind::Video)
        {
            if let Some(old) = old_target
                && Some(old) != current
            {
                track.layers[old].subscribers.retain(|x| *x != vid);
            }
            if !track.layers[choose].subscribers.contains(&vid) {
                track.layers[choose].subscribers.push(vid);
            }
        }
        if current != Some(choose) && !self.start_from_gop(now, vid, fit.source, choose) {
            self.want_keyframe(now, fit.source, choose);
        }
    }

    /// The layers that fit a viewer now: its source's active layers ranked
    /// by bitrate, capped by the viewer's choice and its bandwidth estimate.
    fn layer_fit(&self, now: Instant, vid: PeerId) -> Option<LayerFit> {
        let Some(Role::Viewer(v)) = self.peers.get(&vid).map(|p| &p.role) else {
            return None;
        };
        let source = v.source?;
        v.video.as_ref()?;
        let track = self
            .source(source)?
            .tracks
            .iter()
            .find(|t| t.kind == MediaKind::Video)?;
        let ranked = ranked_layers(track, now);
        let top = ranked.len().checked_sub(1)?;
        let cap = match &v.max_layer {
            None | Some(LayerPref::High) => top,
            Some(LayerPref::Mid) => 1.min(top),
            Some(LayerPref::Low) => 0,
            Some(LayerPref::Rid(rid)) => ranked
                .iter()
                .position(|&i| track.layers[i].rid.as_ref().is_some_and(|r| &**r == rid.as_str()))
                .unwrap_or(top),
        };
        let bps = |rank: usize| track.layers[ranked[rank]].bitrate_bps;
        // Two thresholds (hysteresis): a layer is chosen when it fits BWE_USABLE
        // of the estimate, and kept while the whole estimate still covers it.
        let mut best = cap;
        if let Some(bwe) = v.bwe_bps {
            let budget = (bwe as f64 * BWE_USABLE) as u64;
            best = (0..=cap).rev().find(|&r| bps(r) <= budget).unwrap_or(0);
            let current = v.current.and_then(|l| ranked.iter().position(|&i| i == l));
            if let Some(cur) = current
                && cur <= cap
                && cur > best
                && bps(cur) <= bwe
            {
                best = cur;
            }
        }
        // Ask the estimator to probe well above the cap layer's rate, or the
        // estimate settles just under what the cap layer needs.
        let cap_bps = bps(cap).max(300_000);
        let current = v
            .target
            .or(v.current)
            .and_then(|l| ranked.iter().position(|&i| i == l).map(|rank| (rank, l)));
        Some(LayerFit {
            source,
            best: (best, ranked[best]),
            current,
            desired_bps: (cap_bps as f64 / BWE_USABLE * 1.25) as u64 + 64_000,
        })
    }

    /// Asks a publisher's layer for a keyframe, merged and throttled per layer.
    /// Sends the keyframe requests the HLS tap made (all layers at once).
    pub(super) fn hls_keyframe_requests(&mut self, now: Instant) {
        while let Some((pid, layer)) = self.hls.as_mut().and_then(|h| h.poll_keyframe_request()) {
            self.want_keyframe(now, pid, layer);
        }
    }

    pub(super) fn want_keyframe(&mut self, now: Instant, publisher: PeerId, layer: usize) {
        if let Some(m) = self.mirrors.get_mut(&publisher) {
            // Asked of the home, which merges it with its own requests.
            let Some(l) = m
                .publisher
                .tracks
                .iter_mut()
                .find(|t| t.kind == MediaKind::Video)
                .and_then(|t| t.layers.get_mut(layer))
            else {
                return;
            };
            l.keyframe_wanted = true;
            if let Some(until) = l.throttled_until(now) {
                self.retry_keyframe_at(until);
            } else {
                l.last_keyframe_request = Some(now);
                let relay = Message::Keyframe {
                    source: m.remote,
                    layer: layer as u8,
                };
                self.relays.push_back((m.home, relay));
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let Role::Publisher(p) = &mut peer.role else {
            return;
        };
        let Some(track) = p.tracks.iter_mut().find(|t| t.kind == MediaKind::Video) else {
            return;
        };
        let Some(l) = track.layers.get_mut(layer) else {
            return;
        };
        l.keyframe_wanted = true;
        if let Some(until) = l.throttled_until(now) {
            self.retry_keyframe_at(until);
            return;
        }
        let Some(ssrc) = l.ssrc else { return };
        let mut api = peer.rtc.direct_api();
        let Some(stream) = api.stream_rx(&ssrc) else {
            return;
        };
        stream.request_keyframe(KeyframeRequestKind::Pli);
        l.last_keyframe_request = Some(now);
        self.stats.keyframe_requests += 1;
        trace!(publisher = publisher.0, layer, "PLI sent upstream");
        self.drive(now, publisher);
    }

    /// Wakes the engine when a throttled keyframe request may be sent.
    fn retry_keyframe_at(&mut self, at: Instant) {
        self.keyframe_retry = Some(self.keyframe_retry.map_or(at, |r| r.min(at)));
    }

    /// Sends the keyframe requests that waited for their layer's throttle:
    /// every layer someone still waits a keyframe of.
    pub(super) fn retry_keyframes(&mut self, now: Instant) {
        let mut wanted = Vec::new();
        for room in self.rooms.values() {
            for &pid in &room.publishers {
                let source = match self.peers.get(&pid).map(|p| &p.role) {
                    Some(Role::Publisher(p)) => p,
                    _ => match self.mirrors.get(&pid) {
                        Some(m) => &m.publisher,
                        None => continue,
                    },
                };
                source.wanted_keyframes(pid, &mut wanted);
            }
        }
        for (pid, layer) in wanted {
            self.want_keyframe(now, pid, layer);
        }
    }
}

/// What [`Engine::layer_fit`] found for one viewer: layers are indices
/// into the source's video track, ranks their place from the lowest bitrate.
struct LayerFit {
    source: PeerId,
    /// (rank, layer) of the layer that fits best now.
    best: (usize, usize),
    /// (rank, layer) of the layer the viewer gets or is switching to, if
    /// still active.
    current: Option<(usize, usize)>,
    desired_bps: u64,
}

/// Active layers from lowest to highest: by measured bitrate once every
/// active layer has one, else in SDP order (browsers list rids low to high).
fn ranked_layers(track: &SourceTrack, now: Instant) -> Vec<usize> {
    let mut active: Vec<usize> = (0..track.layers.len())
        .filter(|&i| track.layers[i].active(now))
        .collect();
    if active.is_empty() {
        // Nothing received yet: aim at what the SDP promises.
        active = (0..track.layers.len()).collect();
        return active;
    }
    if active.iter().all(|&i| track.layers[i].bitrate_bps > 0) {
        active.sort_by_key(|&i| (track.layers[i].bitrate_bps, i));
    }
    active
}
