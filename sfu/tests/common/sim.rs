//! A simulated network: the engine and real str0m client peers exchange
//! datagrams in memory on a simulated clock. No sockets, deterministic.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay::Message;
use sfu::engine::{Command, Engine, EngineConfig, Output as EngineOutput, Reply, Transmit, WorkerId};
use signaling::{LayerPref, RoomId, SessionId};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

pub const ENGINE_ADDR: &str = "127.0.0.1:5000";
/// The second engine's address (another worker of the same node).
pub const SECOND_ADDR: &str = "127.0.0.1:5001";
pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// Payload bytes per video packet and packets per frame, per layer (low to high).
const LAYER_SHAPE: [(usize, usize); 3] = [(300, 1), (900, 2), (1100, 4)];
const FRAME: Duration = Duration::from_millis(33);
const AUDIO_FRAME: Duration = Duration::from_millis(20);

/// A packet as a viewer received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub kind: MediaKind,
    pub ssrc: u32,
    pub seq: u64,
    pub ts: u32,
    /// The codec of the payload type, as the receiving client negotiated it.
    pub codec: Option<Codec>,
    pub payload: Vec<u8>,
    /// The transport-wide sequence number, when the session negotiated one.
    pub transport_cc: Option<u16>,
}

impl Received {
    /// For video: (publisher tag, layer index, frame number, keyframe start).
    pub fn video_tag(&self) -> Option<(u8, usize, u32, bool)> {
        video_tag(self.codec, &self.payload)
    }

    /// The VP8 PictureID and TL0PICIDX of a video packet.
    pub fn vp8_ids(&self) -> Option<(u16, u8)> {
        let d = str0m::rtp::Vp8Descriptor::parse(&self.payload).ok()?;
        Some((d.picture_id()?, d.tl0_pic_idx()?))
    }
}

/// Bytes at the end of every non-VP8 video payload: tag, layer, frame (3),
/// index of the packet in its frame, keyframe flag.
const TAIL: usize = 7;

fn video_tag(codec: Option<Codec>, p: &[u8]) -> Option<(u8, usize, u32, bool)> {
    if codec != Some(Codec::Vp8) {
        let t = p.get(p.len().checked_sub(TAIL)?..)?;
        if t[5] != 0 {
            return None; // not the first packet of a frame
        }
        let frame = u32::from_be_bytes([0, t[2], t[3], t[4]]);
        return Some((t[0], t[1] as usize, frame, t[6] == 1));
    }
    if p.len() < DESC + 15 || p[0] & 0x10 == 0 {
        return None; // not the first packet of a frame
    }
    let key = p[DESC] & 0x01 == 0;
    Some((
        p[DESC + 10],
        p[DESC + 11] as usize,
        u32::from_be_bytes([0, p[DESC + 12], p[DESC + 13], p[DESC + 14]]),
        key,
    ))
}

/// What a client does with the RTP the engine sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Decrypt and keep every packet in `received` (the scenario tests).
    Record,
    /// Decrypt through str0m (so it sends real RTCP feedback) but only count.
    Count,
    /// Count RTP datagrams without decrypting them; STUN, DTLS and RTCP still
    /// go to the client's `Rtc` so ICE consent and the session stay alive.
    Discard,
}

/// Length of the VP8 payload descriptor the simulated publisher writes:
/// X, S, then I (15-bit PictureID), L (TL0PICIDX) and T (TID) (RFC 7741 §4.2).
pub const DESC: usize = 6;

pub struct Client {
    pub rtc: Rtc,
    pub sink: Sink,
    /// RTP packets (and their datagram bytes) that reached this client.
    pub rtp_packets: u64,
    pub rtp_bytes: u64,
    /// Video keyframe starts decrypted (`Sink::Record` and `Sink::Count`).
    pub keyframes: u64,
    pub addr: SocketAddr,
    pub session: SessionId,
    pub received: Vec<Received>,
    pub keyframe_requests: Vec<(Instant, Option<Rid>, KeyframeRequestKind)>,
    publisher: Option<PublisherMedia>,
    pub connected: bool,
    /// Loss on this client's links: every n-th RTP datagram (RTX included)
    /// towards it / from it is dropped. Deterministic, so NACK recovery
    /// is tested the same way every run.
    pub drop_every_to: Option<u64>,
    pub drop_every_from: Option<u64>,
    pub rtp_to: u64,
    pub rtp_from: u64,
    pub dropped: u64,
    /// A viewer of the second engine.
    pub on_second: bool,
}

struct PublisherMedia {
    tag: u8,
    audio: Mid,
    video: Mid,
    next_video: Instant,
    next_audio: Instant,
    frame: u32,
    seq: [u64; 3],
    audio_seq: u64,
    force_key: [bool; 3],
    codec: Codec,
    simulcast: bool,
    /// Layers this publisher sends (a subset models a layer paused by BWE).
    pub sending: [bool; 3],
}

pub struct Sim {
    pub now: Instant,
    pub engine: Engine,
    pub clients: BTreeMap<u32, Client>,
    next_client: u32,
    engine_addr: SocketAddr,
    by_addr: HashMap<SocketAddr, u32>,
    /// Wall time spent inside engine calls (including draining `poll_transmit`).
    pub engine_time: Duration,
    /// The video codec clients created from now on send (publishers) and
    /// offer first.
    pub video_codec: Codec,
    /// More video codecs clients created from now on offer, after
    /// `video_codec` (publishers still send `video_codec`).
    pub also_offer: Vec<Codec>,
    /// Whether publishers created from now on send 3 simulcast layers or one.
    pub simulcast: bool,
    transmits: Vec<Transmit>,
    /// Relay messages each engine produced, not yet handed to the other.
    relays: (Relayed, Relayed),
    /// A second engine (worker 1; `engine` is worker 0) whose viewers are
    /// fed through relays from `engine`, moved between them as the workers
    /// do after each step.
    pub second: Option<Engine>,
    /// Relays moved between the engines, each way: (0 → 1, 1 → 0).
    pub relayed: (u64, u64),
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new()
    }
}

impl Sim {
    pub fn new() -> Sim {
        Sim::with_keyframe_cache(true)
    }

    /// An engine whose viewers start from a fresh keyframe only (no
    /// cached group, `--keyframe-cache false`).
    pub fn without_keyframe_cache() -> Sim {
        Sim::with_keyframe_cache(false)
    }

    fn with_keyframe_cache(keyframe_cache: bool) -> Sim {
        let now = Instant::now();
        let engine_addr: SocketAddr = ENGINE_ADDR.parse().unwrap();
        let config = EngineConfig {
            candidates: vec![engine_addr],
            seed: 7,
            keyframe_cache,
            ..EngineConfig::default()
        };
        Sim {
            now,
            engine: Engine::new(config, now).unwrap(),
            clients: BTreeMap::new(),
            next_client: 1,
            engine_addr,
            by_addr: HashMap::new(),
            engine_time: Duration::ZERO,
            video_codec: Codec::Vp8,
            also_offer: Vec::new(),
            simulcast: true,
            transmits: Vec::new(),
            relays: (Vec::new(), Vec::new()),
            second: None,
            relayed: (0, 0),
        }
    }

    /// Two engines, as two workers of one node: rooms live on the first,
    /// [`Sim::play_on_second`] puts viewers on the second.
    pub fn with_second_engine() -> Sim {
        let mut sim = Sim::new();
        let config = EngineConfig {
            candidates: vec![SECOND_ADDR.parse().unwrap()],
            seed: 8,
            ..EngineConfig::default()
        };
        sim.second = Some(Engine::new(config, sim.now).unwrap());
        sim
    }

    fn client_rtc(&self) -> Rtc {
        let config = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false);
        let config = std::iter::once(self.video_codec)
            .chain(self.also_offer.iter().copied())
            .fold(config, |config, codec| match codec {
                Codec::H264 => config.enable_h264(true),
                Codec::Vp9 => config.enable_vp9(true),
                Codec::Av1 => config.enable_av1(true),
                _ => config.enable_vp8(true),
            });
        config.build(self.now)
    }

    fn new_client(&mut self) -> (u32, Rtc, SocketAddr) {
        let n = self.next_client;
        self.next_client += 1;
        let addr: SocketAddr = format!("127.0.0.2:{}", 10_000 + n).parse().unwrap();
        let mut rtc = self.client_rtc();
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        (n, rtc, addr)
    }

    /// Hands `cmd` to the engine (the second one for its viewers), then
    /// lets every datagram it caused arrive.
    pub fn send_command(&mut self, cmd: Command) -> Result<Reply, signaling::MediaError> {
        let t = Instant::now();
        let on_second = matches!(&cmd, Command::Play { homes, .. } if !homes.is_empty())
            || matches!(&cmd, Command::Delete { session } | Command::SetLayer { session, .. }
                if self.clients.values().any(|c| &c.session == session && c.on_second));
        let engine = match (&mut self.second, on_second) {
            (Some(second), true) => second,
            _ => &mut self.engine,
        };
        let r = engine.handle_command(self.now, cmd);
        self.engine_time += t.elapsed();
        self.flush();
        r
    }

    fn insert_client(&mut self, n: u32, client: Client) {
        self.by_addr.insert(client.addr, n);
        self.clients.insert(n, client);
    }

    /// Drops a client without telling the engine (its datagrams stop).
    pub fn forget(&mut self, client: u32) {
        if let Some(c) = self.clients.remove(&client) {
            self.by_addr.remove(&c.addr);
        }
    }

    /// A WHIP publisher with audio and 3 simulcast layers; `tag` marks its payloads.
    pub fn publish(&mut self, room: &str, tag: u8) -> u32 {
        let (n, mut rtc, addr) = self.new_client();
        let mut api = rtc.sdp_api();
        let audio = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("s".into()),
            Some("a".into()),
            None,
        );
        let simulcast = self.simulcast.then(|| {
            let mut sim = Simulcast::new();
            for rid in RIDS {
                sim.add_send_layer(SimulcastLayer::new(rid));
            }
            sim
        });
        let video = api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("s".into()),
            Some("v".into()),
            simulcast,
        );
        let (offer, pending) = api.apply().unwrap();
        let session = SessionId::random();
        let reply = self
            .send_command(Command::Publish {
                room: RoomId::parse(room).unwrap(),
                session: session.clone(),
                identity: None,
                offer: offer.to_sdp_string(),
            })
            .expect("publish accepted");
        accept(&mut rtc, pending, reply);
        let now = self.now;
        self.insert_client(
            n,
            Client {
                rtc,
                sink: Sink::Record,
                rtp_packets: 0,
                rtp_bytes: 0,
                keyframes: 0,
                addr,
                session,
                received: Vec::new(),
                keyframe_requests: Vec::new(),
                publisher: Some(PublisherMedia {
                    tag,
                    audio,
                    video,
                    next_video: now,
                    next_audio: now,
                    frame: 0,
                    seq: [1, 1, 1],
                    audio_seq: 1,
                    force_key: [true; 3],
                    codec: self.video_codec,
                    simulcast: self.simulcast,
                    sending: [true; 3],
                }),
                connected: false,
                drop_every_to: None,
                drop_every_from: None,
                rtp_to: 0,
                rtp_from: 0,
                dropped: 0,
                on_second: false,
            },
        );
        n
    }

    /// A WHEP viewer of `room`, optionally capped at a layer.
    pub fn play(&mut self, room: &str, layer: Option<LayerPref>) -> u32 {
        self.play_with(room, layer, Sink::Record)
    }

    /// A WHEP viewer that handles its media as `sink` says.
    pub fn play_with(&mut self, room: &str, layer: Option<LayerPref>, sink: Sink) -> u32 {
        self.play_at(room, layer, sink, None)
    }

    /// A WHEP viewer of `room` on the second engine, fed from the first.
    pub fn play_on_second(&mut self, room: &str, layer: Option<LayerPref>) -> u32 {
        assert!(self.second.is_some(), "Sim::with_second_engine");
        self.play_at(room, layer, Sink::Record, Some(WorkerId(0)))
    }

    fn play_at(&mut self, room: &str, layer: Option<LayerPref>, sink: Sink, home: Option<WorkerId>) -> u32 {
        self.try_play_at(room, layer, sink, home).expect("play accepted")
    }

    /// A WHEP viewer of `room`, or the engine's refusal.
    pub fn try_play(&mut self, room: &str) -> Result<u32, signaling::MediaError> {
        self.try_play_at(room, None, Sink::Record, None)
    }

    fn try_play_at(
        &mut self,
        room: &str,
        layer: Option<LayerPref>,
        sink: Sink,
        home: Option<WorkerId>,
    ) -> Result<u32, signaling::MediaError> {
        let (n, mut rtc, addr) = self.new_client();
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let session = SessionId::random();
        let reply = self.send_command(Command::Play {
            room: RoomId::parse(room).unwrap(),
            session: session.clone(),
            identity: None,
            offer: offer.to_sdp_string(),
            publisher: None,
            max_layer: layer,
            homes: home.into_iter().collect(),
            room_video: Vec::new(),
        })?;
        accept(&mut rtc, pending, reply);
        self.insert_client(
            n,
            Client {
                rtc,
                sink,
                rtp_packets: 0,
                rtp_bytes: 0,
                keyframes: 0,
                addr,
                session,
                received: Vec::new(),
                keyframe_requests: Vec::new(),
                publisher: None,
                connected: false,
                drop_every_to: None,
                drop_every_from: None,
                rtp_to: 0,
                rtp_from: 0,
                dropped: 0,
                on_second: home.is_some(),
            },
        );
        Ok(n)
    }

    pub fn set_layer(&mut self, client: u32, layer: Option<LayerPref>) {
        let session = self.clients[&client].session.clone();
        self.send_command(Command::SetLayer { session, layer })
            .expect("set layer");
    }

    pub fn delete(&mut self, client: u32) {
        let session = self.clients[&client].session.clone();
        self.send_command(Command::Delete { session }).expect("delete");
        self.forget(client);
    }

    pub fn stop_layer(&mut self, client: u32, layer: usize) {
        if let Some(p) = self.clients.get_mut(&client).and_then(|c| c.publisher.as_mut()) {
            p.sending[layer] = false;
        }
    }

    /// Runs the simulation for `d` of simulated time in 1 ms steps.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(1);
            self.step();
        }
    }

    fn step(&mut self) {
        let now = self.now;
        let ids: Vec<u32> = self.clients.keys().copied().collect();
        for id in &ids {
            let c = self.clients.get_mut(id).unwrap();
            write_media(c, now);
            c.rtc.handle_input(Input::Timeout(now)).unwrap();
        }
        let t = Instant::now();
        if now >= drain_engine(&mut self.engine, &mut self.transmits, &mut self.relays.0) {
            self.engine.handle_timeout(now);
        }
        if let Some(second) = &mut self.second
            && now >= drain_engine(second, &mut self.transmits, &mut self.relays.1)
        {
            second.handle_timeout(now);
        }
        self.engine_time += t.elapsed();
        self.flush();
    }

    /// A datagram from a client to whichever engine it was sent to.
    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let t = Instant::now();
        match &mut self.second {
            Some(second) if to.port() == SECOND_ADDR.parse::<SocketAddr>().unwrap().port() => {
                second.handle_receive(self.now, from, to, bytes)
            }
            _ => self.engine.handle_receive(self.now, from, to, bytes),
        }
        self.engine_time += t.elapsed();
    }

    /// Moves relays between the engines, as the workers' inboxes do;
    /// whether any moved.
    fn move_relays(&mut self) -> bool {
        let Some(second) = &mut self.second else {
            return false;
        };
        let now = self.now;
        let mut moved = false;
        drain_engine(&mut self.engine, &mut self.transmits, &mut self.relays.0);
        drain_engine(second, &mut self.transmits, &mut self.relays.1);
        for (to, relay) in self.relays.0.drain(..) {
            assert_eq!(to, WorkerId(1));
            second.handle_relay(now, WorkerId(0), relay);
            self.relayed.0 += 1;
            moved = true;
        }
        for (to, relay) in self.relays.1.drain(..) {
            assert_eq!(to, WorkerId(0));
            self.engine.handle_relay(now, WorkerId(1), relay);
            self.relayed.1 += 1;
            moved = true;
        }
        moved
    }

    /// Delivers datagrams both ways until nothing is in flight.
    fn flush(&mut self) {
        let now = self.now;
        let mut pending: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
        for _ in 0..1000 {
            let mut moved = false;
            let ids: Vec<u32> = self.clients.keys().copied().collect();
            for id in ids {
                let c = self.clients.get_mut(&id).unwrap();
                drain(c, now, &mut pending);
                for (from, to, bytes) in std::mem::take(&mut pending) {
                    moved = true;
                    self.deliver(from, to, &bytes);
                }
            }
            moved |= self.move_relays();
            let mut transmits = std::mem::take(&mut self.transmits);
            let t = Instant::now();
            // As the worker does after each batch of datagrams: let the
            // viewers written to send.
            if now >= drain_engine(&mut self.engine, &mut transmits, &mut self.relays.0) {
                self.engine.handle_timeout(now);
            }
            drain_engine(&mut self.engine, &mut transmits, &mut self.relays.0);
            if let Some(second) = &mut self.second {
                if now >= drain_engine(second, &mut transmits, &mut self.relays.1) {
                    second.handle_timeout(now);
                }
                drain_engine(second, &mut transmits, &mut self.relays.1);
            }
            self.engine_time += t.elapsed();
            for t in transmits.drain(..) {
                moved = true;
                let Some(c) = self
                    .by_addr
                    .get(&t.destination)
                    .and_then(|n| self.clients.get_mut(n))
                else {
                    continue;
                };
                if is_rtp(&t.contents) && lose(&mut c.rtp_to, c.drop_every_to) {
                    c.dropped += 1;
                    continue;
                }
                if c.sink == Sink::Discard && is_rtp(&t.contents) {
                    c.rtp_packets += 1;
                    c.rtp_bytes += t.contents.len() as u64;
                    continue;
                }
                let Ok(r) = Receive::new(Protocol::Udp, t.source, t.destination, &t.contents) else {
                    continue;
                };
                c.rtc.handle_input(Input::Receive(now, r)).unwrap();
                // str0m's rule: drain after every input (RTP mode holds one received packet).
                drain(c, now, &mut pending);
            }
            self.transmits = transmits;
            for (from, to, bytes) in std::mem::take(&mut pending) {
                moved = true;
                self.deliver(from, to, &bytes);
            }
            if !moved {
                return;
            }
        }
        panic!("simulation did not settle");
    }

    pub fn client(&self, id: u32) -> &Client {
        &self.clients[&id]
    }

    pub fn engine_addr(&self) -> SocketAddr {
        self.engine_addr
    }
}

/// RTP, not RTCP (RFC 5761 demultiplexing on the second byte).
fn is_rtp(b: &[u8]) -> bool {
    b.len() >= 12 && b[0] >> 6 == 2 && !(192..=223).contains(&b[1])
}

/// Counts one RTP datagram on a link and says whether it is lost.
fn lose(counter: &mut u64, every: Option<u64>) -> bool {
    *counter += 1;
    every.is_some_and(|n| counter.is_multiple_of(n))
}

fn drain(c: &mut Client, now: Instant, out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
    loop {
        match c.rtc.poll_output().unwrap() {
            Output::Timeout(_) => break,
            Output::Transmit(t) => {
                if is_rtp(&t.contents) && lose(&mut c.rtp_from, c.drop_every_from) {
                    c.dropped += 1;
                    continue;
                }
                out.push((t.source, t.destination, Vec::<u8>::from(t.contents)))
            }
            Output::Event(e) => record(c, now, e),
        }
    }
}

fn accept(rtc: &mut Rtc, pending: SdpPendingOffer, reply: Reply) {
    let Reply::Answer(sdp) = reply else {
        panic!("expected an answer, got {reply:?}")
    };
    let answer = SdpAnswer::from_sdp_string(&sdp).expect("answer parses");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
}

fn record(c: &mut Client, now: Instant, e: Event) {
    match e {
        Event::Connected => c.connected = true,
        Event::RtpPacket(p) => {
            let kind = if p.header.payload_type == opus_pt(&c.rtc) {
                MediaKind::Audio
            } else {
                MediaKind::Video
            };
            c.rtp_packets += 1;
            c.rtp_bytes += p.payload.len() as u64;
            let codec = codec_of(&c.rtc, p.header.payload_type);
            if kind == MediaKind::Video && video_tag(codec, &p.payload).is_some_and(|t| t.3) {
                c.keyframes += 1;
            }
            if c.sink == Sink::Record {
                c.received.push(Received {
                    at: now,
                    kind,
                    ssrc: *p.header.ssrc,
                    seq: *p.seq_no,
                    ts: p.header.timestamp,
                    codec,
                    payload: p.payload.to_vec(),
                    transport_cc: p.header.ext_vals.transport_cc,
                });
            }
        }
        Event::KeyframeRequest(r) => {
            c.keyframe_requests.push((now, r.rid, r.kind));
            if let (Some(p), Some(rid)) = (c.publisher.as_mut(), r.rid)
                && let Some(i) = RIDS.iter().position(|x| *x == &*rid)
            {
                p.force_key[i] = true;
            }
            if let (Some(p), None) = (c.publisher.as_mut(), r.rid) {
                p.force_key[0] = true;
            }
        }
        _ => {}
    }
}

fn opus_pt(rtc: &Rtc) -> str0m::media::Pt {
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == str0m::format::Codec::Opus)
        .map(|p| p.pt())
        .unwrap()
}

fn video_pt(rtc: &Rtc, codec: Codec) -> str0m::media::Pt {
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
        .unwrap()
}

fn codec_of(rtc: &Rtc, pt: str0m::media::Pt) -> Option<Codec> {
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| p.pt() == pt)
        .map(|p| p.spec().codec)
}

/// A non-VP8 video payload: the codec's keyframe signalling where the node
/// looks for it, then filler, then the `TAIL` tag.
fn tagged_payload(codec: Codec, size: usize, first: bool, key: bool, tail: [u8; TAIL]) -> Vec<u8> {
    let mut payload = vec![0u8; size];
    match codec {
        // A keyframe starts with a STAP-A of SPS, PPS and an IDR slice
        // (RFC 6184 §5.7.1); its other packets are further IDR slices and
        // other frames' are non-IDR slices, each a single NAL unit (§5.6).
        Codec::H264 if first && key => {
            let mut stap = vec![0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
            let idr = size - stap.len() - 2;
            stap.extend_from_slice(&(idr as u16).to_be_bytes());
            stap.push(0x65);
            payload[..stap.len()].copy_from_slice(&stap);
        }
        Codec::H264 => payload[0] = if key { 0x65 } else { 0x41 },
        // VP9 descriptor (RFC 9628 §4.2): B on the frame's first packet, P
        // on predicted frames.
        Codec::Vp9 => payload[0] = if first { 0x08 } else { 0 } | if key { 0 } else { 0x40 },
        // AV1 aggregation header (AV1 RTP §4.4): N starts a coded video sequence.
        Codec::Av1 => payload[0] = if first && key { 0x08 } else { 0x10 },
        _ => unreachable!("VP8 payloads are built by write_media"),
    }
    payload[size - TAIL..].copy_from_slice(&tail);
    payload
}

/// Writes the publisher's due audio and video packets.
fn write_media(c: &mut Client, now: Instant) {
    if !c.connected || c.publisher.is_none() {
        return;
    }
    let codec = c.publisher.as_ref().map_or(Codec::Vp8, |p| p.codec);
    let video_pt = video_pt(&c.rtc, codec);
    let opus = opus_pt(&c.rtc);
    let Some(p) = c.publisher.as_mut() else { return };
    if now >= p.next_audio {
        p.next_audio += AUDIO_FRAME;
        let ts = (p.audio_seq * 960) as u32;
        let mut api = c.rtc.direct_api();
        if let Some(s) = api.stream_tx_by_mid(p.audio, None) {
            s.write_rtp(RtpWrite::new(
                opus,
                SeqNo::from(p.audio_seq),
                ts,
                now,
                vec![p.tag; 80],
            ));
        }
        p.audio_seq += 1;
    }
    if now >= p.next_video {
        p.next_video += FRAME;
        p.frame += 1;
        let ts = p.frame * 3000;
        for (layer, rid) in RIDS.iter().enumerate() {
            if !p.sending[layer] || (!p.simulcast && layer > 0) {
                continue;
            }
            let rid = p.simulcast.then(|| (*rid).into());
            // Periodic keyframes every 3 s, and on request.
            let key = std::mem::take(&mut p.force_key[layer]) || p.frame % 90 == 1;
            let (size, count) = LAYER_SHAPE[layer];
            let mut api = c.rtc.direct_api();
            let Some(s) = api.stream_tx_by_mid(p.video, rid) else {
                continue;
            };
            for i in 0..count {
                if p.codec != Codec::Vp8 {
                    let f = p.frame.to_be_bytes();
                    let tail = [p.tag, layer as u8, f[1], f[2], f[3], i as u8, key as u8];
                    let payload = tagged_payload(p.codec, size, i == 0, key, tail);
                    let write = RtpWrite::new(video_pt, SeqNo::from(p.seq[layer]), ts, now, payload)
                        .marker(i + 1 == count)
                        .nackable(true);
                    s.write_rtp(write);
                    p.seq[layer] += 1;
                    continue;
                }
                let mut payload = vec![0u8; size];
                // Each layer's encoder counts PictureID and TL0PICIDX from its own origin.
                let pid = (p.frame as u16).wrapping_add(1000 * layer as u16 + 77) & 0x7fff;
                let tl0 = (p.frame as u8).wrapping_add(90 * layer as u8);
                payload[..DESC].copy_from_slice(&[
                    if i == 0 { 0x90 } else { 0x80 }, // X, S on the frame's first packet, PID=0
                    0xe0,                             // I, L, T present
                    0x80 | (pid >> 8) as u8,
                    pid as u8,
                    tl0,
                    0x20, // TID 0, Y=1
                ]);
                if i == 0 {
                    payload[DESC] = if key { 0x10 } else { 0x11 }; // P bit
                    if key {
                        payload[DESC + 3..DESC + 6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                        let w = 320u16 << layer;
                        payload[DESC + 6..DESC + 8].copy_from_slice(&w.to_le_bytes());
                        payload[DESC + 8..DESC + 10].copy_from_slice(&(w * 9 / 16).to_le_bytes());
                    }
                    payload[DESC + 10] = p.tag;
                    payload[DESC + 11] = layer as u8;
                    payload[DESC + 12..DESC + 15].copy_from_slice(&p.frame.to_be_bytes()[1..]);
                }
                let write = RtpWrite::new(video_pt, SeqNo::from(p.seq[layer]), ts, now, payload)
                    .marker(i + 1 == count)
                    .nackable(true);
                s.write_rtp(write);
                p.seq[layer] += 1;
            }
        }
    }
}

/// Relay messages one engine produced, with where they go.
type Relayed = Vec<(WorkerId, Message)>;

/// Does what a worker does with an engine's output: datagrams and relay
/// messages into the lists (LL-HLS snapshots and events are not needed
/// here); returns when the engine next wants a timeout.
fn drain_engine(
    engine: &mut Engine,
    transmits: &mut Vec<Transmit>,
    relays: &mut Vec<(WorkerId, Message)>,
) -> Instant {
    loop {
        match engine.poll_output() {
            EngineOutput::Transmit(t) => transmits.push(t),
            EngineOutput::Relay(to, msg) => relays.push((to, msg)),
            EngineOutput::Hls(_) | EngineOutput::Event(_) => {}
            EngineOutput::Timeout(at) => return at,
        }
    }
}
