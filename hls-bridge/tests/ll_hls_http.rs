//! The HLS service over real HTTP on loopback (HTTP/1.1 and h2c): content
//! types, gzip, cache headers, CORS, blocking playlist reload and its
//! 400/503 cases, preload-hinted parts, delta updates, signed URLs
//! (checklist C13–C15, C19, Appendix B).

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::checker;
use common::http::{get, request, start};
use common::room::{Room, ladder};
use hls_bridge::http::{HlsAccess, HlsService, HlsStore, TOKEN_WINDOW, sign_token};
use hls_bridge::{HlsConfig, RoomSnapshot};
use hyper::StatusCode;

const ROOM: &str = "demo";

/// Snapshots of a 3-layer + Opus room over 12 s of simulated time.
fn snapshots() -> Vec<RoomSnapshot> {
    let mut room = Room::new(HlsConfig::default(), &ladder(), true);
    room.run(Duration::from_secs(12));
    room.snapshots
}

async fn setup(
    limit: Duration,
    secret: Option<&[u8]>,
) -> (std::net::SocketAddr, Arc<HlsService>, Vec<RoomSnapshot>) {
    let access = secret.map_or_else(HlsAccess::public, HlsAccess::signed);
    setup_with(limit, access).await
}

async fn setup_with(
    limit: Duration,
    access: HlsAccess,
) -> (std::net::SocketAddr, Arc<HlsService>, Vec<RoomSnapshot>) {
    let store = HlsStore::new();
    let service = Arc::new(HlsService::new(store, access).with_block_limit(limit));
    let addr = start(service.clone()).await;
    (addr, service, snapshots())
}

fn media_path(s: &RoomSnapshot, rendition: &str, file: &str) -> String {
    format!("/hls/{ROOM}/{}/{rendition}/{file}", s.session)
}

/// A player reads the multivariant playlist once. A request in the
/// stream's first target duration, while a layer has packets but no part
/// yet, waits for that layer instead of leaving it out for good; an old
/// stream's layer that never made a part does not hold anyone.
#[tokio::test]
async fn an_early_multivariant_request_waits_for_a_layer_without_parts_yet() {
    let (addr, service, snaps) = setup(Duration::from_secs(9), None).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let mut full = snaps.last().unwrap().clone();
    let lead = full.started().unwrap() - full.epoch.unwrap();
    full.epoch = Some(now - lead);
    let mut early = full.clone();
    let top = early.renditions.get_mut("v2").expect("a v2 rendition");
    top.segments.clear();
    top.open = None;
    service.store().publish(ROOM, early.clone());
    let path = format!("/hls/{ROOM}/index.m3u8");
    let held = tokio::spawn({
        let path = path.clone();
        async move {
            let t0 = Instant::now();
            let mv = get(addr, &path, false, &[]).await;
            (mv, t0.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.store().publish(ROOM, full);
    let (mv, took) = held.await.unwrap();
    assert_eq!(mv.status, StatusCode::OK);
    assert!(mv.text().contains("/v2/index.m3u8"), "{}", mv.text());
    assert!(
        took >= Duration::from_millis(250),
        "answered after {took:?}, before the top layer had a part:\n{}",
        mv.text()
    );

    let mut old = early;
    old.epoch = Some(now - lead - Duration::from_secs(60));
    service.store().publish(ROOM, old);
    let t0 = Instant::now();
    let mv = get(addr, &path, false, &[]).await;
    assert_eq!(mv.status, StatusCode::OK);
    assert!(t0.elapsed() < Duration::from_secs(1), "held {:?}", t0.elapsed());
    assert!(
        mv.text().contains("/v1/index.m3u8") && !mv.text().contains("/v2/"),
        "{}",
        mv.text()
    );
}

/// hls.js takes a Media Playlist with parts but no whole segment for an
/// empty one and backs off for seconds: a request in a rendition's first
/// segment waits for it; past the blocking limit it gets the parts there are.
#[tokio::test]
async fn a_media_playlist_request_in_the_first_segment_waits_for_it() {
    let (addr, service, snaps) = setup(Duration::from_secs(9), None).await;
    let full = snaps.last().unwrap().clone();
    let mut early = full.clone();
    let v1 = early.renditions.get_mut("v1").expect("a v1 rendition");
    assert!(
        v1.open.as_ref().is_some_and(|o| !o.parts.is_empty()),
        "the fixture has an open segment with parts"
    );
    v1.segments.clear();
    service.store().publish(ROOM, early.clone());
    let path = media_path(&full, "v1", "index.m3u8");
    let held = tokio::spawn({
        let path = path.clone();
        async move {
            let t0 = Instant::now();
            let pl = get(addr, &path, false, &[]).await;
            (pl, t0.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Held as a first-segment wait, not as a client's blocking request.
    let page = metrics_page(&service);
    assert_eq!(metric(&page, "wave_hls_first_segment_held"), 1.0, "{page}");
    assert_eq!(metric(&page, "wave_hls_blocking_held"), 0.0, "{page}");
    service.store().publish(ROOM, full.clone());
    let (pl, took) = held.await.unwrap();
    assert_eq!(pl.status, StatusCode::OK);
    assert!(pl.text().contains("#EXTINF:"), "{}", pl.text());
    assert!(
        took >= Duration::from_millis(250),
        "answered after {took:?}, before a whole segment:\n{}",
        pl.text()
    );
    // Counted apart, and out of the blocked-answer histogram (whose 300 ms
    // would otherwise swamp the blocking answers' milliseconds).
    let page = metrics_page(&service);
    let counts = |page: &str| {
        [
            "wave_hls_first_segment_waits_total",
            "wave_hls_first_segment_held",
            "wave_hls_first_segment_timeouts_total",
            "wave_hls_blocking_requests_total",
            "wave_hls_blocking_checks_total",
            "wave_hls_blocked_answer_seconds_count",
        ]
        .map(|name| metric(page, name))
    };
    assert_eq!(counts(&page), [1.0, 0.0, 0.0, 0.0, 0.0, 0.0], "{page}");

    // A client's blocking reload still counts as one.
    let (k, msn, part, reload) = blocking_reload(&service, &snaps, "v1");
    service.store().publish(ROOM, snaps[k].clone());
    let pending = tokio::spawn(async move { get(addr, &reload, false, &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let want = format!("part_{msn}_{part}.m4s");
    let ready = next_where(&snaps, k, |s| s.renditions["v1"].files.contains_key(&want));
    service.store().publish(ROOM, snaps[ready].clone());
    assert_eq!(pending.await.unwrap().status, StatusCode::OK);
    let c = counts(&metrics_page(&service));
    assert_eq!((c[0], c[3], c[5]), (1.0, 1.0, 1.0), "{c:?}");

    // A rendition whose first segment does not end in time is served as it is.
    let (addr, service, _) = setup(Duration::from_millis(400), None).await;
    service.store().publish(ROOM, early);
    let t0 = Instant::now();
    let pl = get(addr, &path, false, &[]).await;
    let took = t0.elapsed();
    assert_eq!(pl.status, StatusCode::OK);
    assert!(took >= Duration::from_millis(350), "answered after {took:?}");
    assert!(
        pl.text().contains("#EXT-X-PART:") && !pl.text().contains("#EXTINF:"),
        "{}",
        pl.text()
    );
    let page = metrics_page(&service);
    assert_eq!(counts(&page), [1.0, 0.0, 1.0, 0.0, 0.0, 0.0], "{page}");
    assert_eq!(metric(&page, "wave_hls_blocking_timeouts_total"), 0.0);
}

/// The service's Prometheus lines, as the node's `/metrics` serves them.
fn metrics_page(service: &HlsService) -> String {
    let mut page = String::new();
    service.metrics.render(&mut page);
    page
}

fn metric(page: &str, name: &str) -> f64 {
    wave_metrics::value(page, name).unwrap_or_else(|| panic!("{name} in {page}"))
}

#[tokio::test]
async fn serves_playlists_and_files_with_types_gzip_cache_and_cors_over_h1_and_h2c() {
    let (addr, service, snaps) = setup(Duration::from_secs(9), None).await;
    let snap = snaps.last().unwrap().clone();
    service.store().publish(ROOM, snap.clone());
    for h2 in [false, true] {
        let mv = get(
            addr,
            &format!("/hls/{ROOM}/index.m3u8"),
            h2,
            &[("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(mv.status, StatusCode::OK);
        assert_eq!(
            mv.version,
            if h2 {
                hyper::Version::HTTP_2
            } else {
                hyper::Version::HTTP_11
            }
        );
        assert_eq!(mv.header("content-type"), "application/vnd.apple.mpegurl");
        assert_eq!(mv.header("content-encoding"), "gzip");
        assert_eq!(mv.header("access-control-allow-origin"), "*");
        assert_eq!(mv.header("cache-control"), "public, max-age=2");
        assert!(mv.text().contains("#EXT-X-STREAM-INF"));
        let pl = get(
            addr,
            &media_path(&snap, "v1", "index.m3u8"),
            h2,
            &[("accept-encoding", "gzip, br")],
        )
        .await;
        assert_eq!(pl.status, StatusCode::OK);
        assert_eq!(pl.header("content-encoding"), "gzip");
        let (m, v) = checker::check_media(&pl.text());
        assert!(v.is_empty(), "{v:?}");
        // Every file the playlist names downloads whole, with its type.
        let seg = m.complete().last().unwrap();
        let part = &m.segments.last().unwrap().parts[0];
        for (file, len) in [
            (seg.map.clone().unwrap(), None),
            (seg.uri.clone().unwrap(), None),
            (
                part.uri.clone(),
                Some(snap.renditions["v1"].files[&part.uri].len()),
            ),
        ] {
            let a = get(
                addr,
                &media_path(&snap, "v1", &file),
                h2,
                &[("accept-encoding", "gzip")],
            )
            .await;
            assert_eq!(a.status, StatusCode::OK, "{file}");
            assert_eq!(a.header("content-type"), "video/mp4");
            assert_eq!(a.header("content-encoding"), "", "media is not gzipped");
            assert!(a.header("cache-control").contains("immutable"));
            if let Some(len) = len {
                assert_eq!(a.body.len(), len);
            }
        }
        let audio = get(addr, &media_path(&snap, "opus", "init_0.mp4"), h2, &[]).await;
        assert_eq!(audio.header("content-type"), "audio/mp4");
        let mpd = get(addr, &format!("/hls/{ROOM}/manifest.mpd"), h2, &[]).await;
        assert_eq!(mpd.header("content-type"), "application/dash+xml");
        assert!(mpd.text().contains("<MPD"));
    }
    // Without Accept-Encoding: plain. HEAD: headers only. OPTIONS: CORS preflight.
    let plain = get(addr, &format!("/hls/{ROOM}/index.m3u8"), false, &[]).await;
    assert_eq!(plain.header("content-encoding"), "");
    let head = request(addr, "HEAD", &format!("/hls/{ROOM}/index.m3u8"), false, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let pre = request(
        addr,
        "OPTIONS",
        &media_path(&snap, "v0", "index.m3u8"),
        false,
        &[],
    )
    .await;
    assert_eq!(pre.status, StatusCode::NO_CONTENT);
    assert!(pre.header("access-control-allow-methods").contains("GET"));
    let post = request(addr, "POST", &format!("/hls/{ROOM}/index.m3u8"), false, &[]).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    // 404s: unknown room, rendition, session, and files neither there nor hinted.
    for path in [
        "/hls/nope/index.m3u8".to_string(),
        media_path(&snap, "v9", "index.m3u8"),
        format!("/hls/{ROOM}/ffffffffffff/v0/index.m3u8"),
        media_path(&snap, "v0", "seg_999.m4s"),
        media_path(&snap, "v0", "part_999_0.m4s"),
        media_path(&snap, "v0", "../../index.m3u8"),
    ] {
        let a = get(addr, &path, false, &[]).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.header("access-control-allow-origin"), "*");
    }
}

/// The first snapshot after `from` in which `ready` holds.
fn next_where(snaps: &[RoomSnapshot], from: usize, ready: impl Fn(&RoomSnapshot) -> bool) -> usize {
    (from + 1..snaps.len())
        .find(|&i| ready(&snaps[i]))
        .expect("a later snapshot")
}

/// Publishes the middle snapshot; the blocking reload of `rendition`'s
/// next part there: (index of that snapshot, MSN, part, path).
fn blocking_reload(
    service: &HlsService,
    snaps: &[RoomSnapshot],
    rendition: &str,
) -> (usize, u64, u32, String) {
    let k = snaps.len() / 2;
    service.store().publish(ROOM, snaps[k].clone());
    let (msn, part) = snaps[k].renditions[rendition].next_part().unwrap();
    let path = format!(
        "{}?_HLS_msn={msn}&_HLS_part={part}",
        media_path(&snaps[k], rendition, "index.m3u8")
    );
    (k, msn, part, path)
}

#[tokio::test]
async fn blocking_reload_holds_until_the_part_exists_and_never_answers_early() {
    let (addr, service, snaps) = setup(Duration::from_secs(9), None).await;
    let (k, msn, part, path) = blocking_reload(&service, &snaps, "v2");
    for h2 in [false, true] {
        service.store().publish(ROOM, snaps[k].clone());
        let pending = tokio::spawn({
            let path = path.clone();
            async move { (get(addr, &path, h2, &[]).await, Instant::now()) }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!pending.is_finished(), "answered before the part existed");
        assert_eq!(
            service
                .metrics
                .blocking_held
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Other renditions' parts do not release it.
        let want = format!("part_{msn}_{part}.m4s");
        let ready = next_where(&snaps, k, |s| s.renditions["v2"].files.contains_key(&want));
        for s in &snaps[k + 1..ready] {
            service.store().publish(ROOM, s.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pending.is_finished());
        let published = Instant::now();
        service.store().publish(ROOM, snaps[ready].clone());
        let (a, answered) = pending.await.unwrap();
        assert!(answered >= published);
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.header("cache-control"),
            "public, max-age=18",
            "6 TD for a blocking reload"
        );
        let text = a.text();
        assert!(text.contains(&format!("URI=\"{want}\"")), "{text}");
        assert!(checker::check_media(&text).1.is_empty());
    }
    // Already there: no wait. Left the window: the whole playlist at once.
    for q in ["_HLS_msn=0", "_HLS_msn=0&_HLS_part=0", "_HLS_msn=1&_HLS_part=40"] {
        let t = Instant::now();
        let a = get(
            addr,
            &format!("{}?{q}", media_path(&snaps[0], "v2", "index.m3u8")),
            false,
            &[],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{q}");
        assert!(t.elapsed() < Duration::from_millis(500));
        assert!(a.text().contains("#EXT-X-MEDIA-SEQUENCE:"));
    }
    // N past the last part of M means part 0 of M + 1.
    let last = snaps[k].renditions["v2"].segments.last().unwrap().clone();
    let n = last.parts.len();
    let a = get(
        addr,
        &format!(
            "{}?_HLS_msn={}&_HLS_part={n}",
            media_path(&snaps[0], "v2", "index.m3u8"),
            last.msn
        ),
        false,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text().contains(&format!("part_{}_0.m4s", last.msn + 1)));
}

#[tokio::test]
async fn bad_directives_are_400_and_a_long_wait_is_503() {
    let (addr, service, snaps) = setup(Duration::from_millis(300), None).await;
    let k = snaps.len() / 2;
    service.store().publish(ROOM, snaps[k].clone());
    let r = &snaps[k].renditions["v0"];
    let last = r.last_msn().unwrap();
    let (pm, pi) = r.last_part().unwrap();
    let base = media_path(&snaps[k], "v0", "index.m3u8");
    for q in [
        "_HLS_part=1".to_string(),
        format!("_HLS_msn={}", last + 3),
        format!("_HLS_msn={pm}&_HLS_part={}", pi + 11),
        format!("_HLS_msn={}&_HLS_part=11", last + 1),
        "_HLS_msn=-1".to_string(),
        "_HLS_msn=1&_HLS_part=x".to_string(),
    ] {
        let a = get(addr, &format!("{base}?{q}"), false, &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(a.header("cache-control"), "no-store");
    }
    // Within the limits but never coming: 503 after the hold limit.
    let t = Instant::now();
    let a = get(addr, &format!("{base}?_HLS_msn={}", last + 2), true, &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        service
            .metrics
            .timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        service
            .metrics
            .blocking_held
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn a_hinted_part_is_held_until_whole_and_the_ended_stream_ignores_directives() {
    let (addr, service, snaps) = setup(Duration::from_secs(9), None).await;
    let k = snaps.len() / 2;
    service.store().publish(ROOM, snaps[k].clone());
    let (msn, i) = snaps[k].renditions["opus"].next_part().unwrap();
    let file = format!("part_{msn}_{i}.m4s");
    let path = media_path(&snaps[k], "opus", &file);
    let pending = tokio::spawn(async move { get(addr, &path, true, &[]).await });
    // One past the hint is not hinted: 404 at once.
    let beyond = get(
        addr,
        &media_path(&snaps[k], "opus", &format!("part_{msn}_{}.m4s", i + 1)),
        false,
        &[],
    )
    .await;
    assert_eq!(beyond.status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished());
    let ready = next_where(&snaps, k, |s| s.renditions["opus"].files.contains_key(&file));
    service.store().publish(ROOM, snaps[ready].clone());
    let a = pending.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, snaps[ready].renditions["opus"].files[&file]);
    assert_eq!(a.header("cache-control"), "public, max-age=18");
    assert!(checker::check_fragments(&a.body).is_ok());

    // The publisher leaves: ENDLIST, directives ignored, no hint.
    let mut room = Room::new(HlsConfig::default(), &ladder()[..1], false);
    room.run(Duration::from_secs(5));
    room.stop();
    let ended = room.last().clone();
    service.store().publish(ROOM, ended.clone());
    let a = get(
        addr,
        &format!(
            "{}?_HLS_msn=999&_HLS_part=3",
            media_path(&ended, "v0", "index.m3u8")
        ),
        false,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text().contains("#EXT-X-ENDLIST") && !a.text().contains("PRELOAD-HINT"));
}

#[tokio::test]
async fn delta_update_skips_old_segments() {
    let store = HlsStore::new();
    let service = Arc::new(HlsService::new(store, HlsAccess::public()));
    let addr = start(service.clone()).await;
    let mut room = Room::new(HlsConfig::default(), &ladder()[..1], true);
    room.run(Duration::from_secs(34));
    let snap = room.last().clone();
    service.store().publish(ROOM, snap.clone());
    let base = media_path(&snap, "v0", "index.m3u8");
    let full = get(addr, &base, false, &[]).await.text();
    let (f, _) = checker::check_media(&full);
    let (msn, part) = snap.renditions["v0"].last_part().unwrap();
    let a = get(
        addr,
        &format!("{base}?_HLS_msn={msn}&_HLS_part={part}&_HLS_skip=YES"),
        false,
        &[],
    )
    .await;
    let (d, v) = checker::check_media(&a.text());
    assert!(v.is_empty(), "{v:?}");
    assert!(d.skipped > 0);
    assert_eq!(&f.segments[d.skipped as usize..], &d.segments[..]);
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The `?token=` value at the end of a URI.
fn token_of(uri: &str) -> &str {
    uri.rsplit_once("?token=").map_or("", |(_, t)| t)
}

/// The expiry a signed token names.
fn expiry_of(token: &str) -> u64 {
    token.split_once('-').unwrap().0.parse().unwrap()
}

#[tokio::test]
async fn signed_urls_are_checked_everywhere_and_playlists_carry_windowed_tokens() {
    let secret = b"hls-secret";
    let (addr, service, snaps) = setup(Duration::from_secs(9), Some(secret)).await;
    let snap = snaps.last().unwrap().clone();
    service.store().publish(ROOM, snap.clone());
    let now = unix_now();
    let token = sign_token(secret, ROOM, now + 600);
    let mv = get(addr, &format!("/hls/{ROOM}/index.m3u8?token={token}"), false, &[]).await;
    assert_eq!(mv.status, StatusCode::OK);
    let text = mv.text();
    let uri = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap();
    // A rendition playlist is reloaded with this URL for the whole
    // session: its token lasts as long as the grant, rounded up to the window.
    let rendition_token = token_of(uri);
    assert_eq!(
        expiry_of(rendition_token),
        (now + 600).div_ceil(TOKEN_WINDOW) * TOKEN_WINDOW,
        "{uri}"
    );
    let pl = get(addr, &format!("/hls/{ROOM}/{uri}"), false, &[]).await;
    assert_eq!(pl.status, StatusCode::OK);
    let (m, _) = checker::check_media(&pl.text());
    let part = &m.segments.last().unwrap().parts[0].uri;
    // Files get a short-lived token, the same for every viewer in the window.
    let file_token = token_of(part);
    let expires = expiry_of(file_token);
    assert_eq!(expires % TOKEN_WINDOW, 0);
    assert!(
        expires > now + TOKEN_WINDOW - 2 && expires <= now + 2 * TOKEN_WINDOW + 1,
        "{part}"
    );
    assert!(m.hints.iter().all(|(_, u)| token_of(u) == file_token));
    assert!(m.reports.iter().all(|(u, _, _)| token_of(u) == file_token));
    let again = get(addr, &format!("/hls/{ROOM}/{uri}"), false, &[]).await;
    let (m2, _) = checker::check_media(&again.text());
    // Another viewer in the same window gets the very same URLs (unless
    // the window turned between the two requests).
    let second = token_of(&m2.segments.last().unwrap().parts[0].uri);
    assert!(
        second == file_token || expiry_of(second) == expires + TOKEN_WINDOW,
        "{second} vs {file_token}"
    );
    let dir = uri.rsplit_once('/').unwrap().0;
    let a = get(addr, &format!("/hls/{ROOM}/{dir}/{part}"), false, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    // Missing: 401; expired, forged, another room's: 403.
    let expired = sign_token(secret, ROOM, now - 1);
    let other = sign_token(secret, "other", now + 60);
    let forged = sign_token(b"guess", ROOM, now + 60);
    for (q, status) in [
        (String::new(), StatusCode::UNAUTHORIZED),
        ("?token=".to_string(), StatusCode::UNAUTHORIZED),
        (format!("?token={expired}"), StatusCode::FORBIDDEN),
        (format!("?token={other}"), StatusCode::FORBIDDEN),
        (format!("?token={forged}"), StatusCode::FORBIDDEN),
        (
            "?token=eyJhbGciOiJIUzI1NiJ9.e30.x".to_string(),
            StatusCode::FORBIDDEN,
        ),
    ] {
        for path in [
            format!("/hls/{ROOM}/index.m3u8"),
            format!("/hls/{ROOM}/manifest.mpd"),
            format!("/hls/{ROOM}/thumbnail.jpg"),
            media_path(&snap, "v0", "index.m3u8"),
            media_path(&snap, "v0", "init_0.mp4"),
        ] {
            let a = get(addr, &format!("{path}{q}"), false, &[]).await;
            assert_eq!(a.status, status, "{path}{q}");
        }
    }
}

/// The embedder's grant (the node's JWTs) opens the multivariant playlist;
/// the playlists then carry signed tokens, never the grant itself.
#[tokio::test]
async fn an_authorizer_grant_opens_the_playlists_and_is_not_copied_into_them() {
    let key = b"derived-key";
    let grant_end = unix_now() + 3_000;
    let access =
        HlsAccess::signed(key.to_vec()).with_authorizer(move |room, token, _now| match (room, token) {
            (ROOM, "viewer-grant") => Ok(grant_end),
            (_, "viewer-grant") => Err("token does not grant this room"),
            _ => Err("invalid token"),
        });
    let (addr, service, snaps) = setup_with(Duration::from_secs(9), access).await;
    let snap = snaps.last().unwrap().clone();
    service.store().publish(ROOM, snap.clone());
    service.store().publish("other", snap.clone());
    let mv = get(
        addr,
        &format!("/hls/{ROOM}/index.m3u8?token=viewer-grant"),
        false,
        &[],
    )
    .await;
    assert_eq!(mv.status, StatusCode::OK);
    let text = mv.text();
    assert!(!text.contains("viewer-grant"), "{text}");
    let uri = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap();
    assert_eq!(
        expiry_of(token_of(uri)),
        grant_end.div_ceil(TOKEN_WINDOW) * TOKEN_WINDOW
    );
    let pl = get(addr, &format!("/hls/{ROOM}/{uri}"), false, &[]).await;
    assert_eq!(pl.status, StatusCode::OK, "{}", pl.text());
    let (m, v) = checker::check_media(&pl.text());
    assert!(v.is_empty(), "{v:?}");
    let init = m.segments[0].map.clone().expect("an EXT-X-MAP");
    let dir = uri.rsplit_once('/').unwrap().0;
    let a = get(addr, &format!("/hls/{ROOM}/{dir}/{init}"), false, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let dash = get(
        addr,
        &format!("/hls/{ROOM}/manifest.mpd?token=viewer-grant"),
        false,
        &[],
    )
    .await;
    assert_eq!(dash.status, StatusCode::OK);
    assert!(!dash.text().contains("viewer-grant") && dash.text().contains("token="));
    for path in [
        "/hls/other/index.m3u8?token=viewer-grant".to_string(),
        format!("/hls/{ROOM}/index.m3u8?token=someone-else"),
    ] {
        assert_eq!(
            get(addr, &path, false, &[]).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    // A token signed for this room does not open another one.
    let signed = token_of(uri);
    let a = get(addr, &format!("/hls/other/index.m3u8?token={signed}"), false, &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_held_request_wakes_only_when_its_rendition_progresses() {
    use std::sync::atomic::Ordering::Relaxed;
    let (addr, service, snaps) = setup(Duration::from_secs(9), None).await;
    let (k, msn, part, path) = blocking_reload(&service, &snaps, "v0");
    let pending = tokio::spawn(async move { get(addr, &path, false, &[]).await });
    let m = &service.metrics;
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.blocking_held.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "never held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(m.blocking_checks.load(Relaxed), 1);
    // Snapshots in which every other rendition (video layers, audio) got
    // parts but v0 did not: none of them re-checks the held request.
    let want = format!("part_{msn}_{part}.m4s");
    let ready = next_where(&snaps, k, |s| s.renditions["v0"].files.contains_key(&want));
    for s in &snaps[k + 1..=ready] {
        let mut others = s.clone();
        others
            .renditions
            .insert("v0".into(), snaps[k].renditions["v0"].clone());
        service.store().publish(ROOM, others);
    }
    for other in ["v1", "v2"] {
        assert_ne!(
            snaps[ready].renditions[other].last_part(),
            snaps[k].renditions[other].last_part()
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished());
    assert_eq!(
        m.blocking_checks.load(Relaxed),
        1,
        "{} snapshots without v0 progress woke the held request",
        ready - k
    );
    service.store().publish(ROOM, snaps[ready].clone());
    let a = pending.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text().contains(&format!("URI=\"{want}\"")));
    assert_eq!(m.blocking_checks.load(Relaxed), 2);
}
