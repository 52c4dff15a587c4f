//! The LL-HLS hot path through today's hyper service against the same
//! handler behind an axum `Router` with tower-http's `CompressionLayer`:
//! requests per second per core of server CPU for a non-blocking media
//! playlist GET (gzip accepted, as players send) and a part GET, on
//! loopback HTTP/1.1 keep-alive connections.
//!
//! The server runs on one current-thread runtime on its own thread; its
//! CPU time comes from `/proc/thread-self/stat`, so the client's work (on
//! other threads) does not count.
//!
//! `cargo bench -p hls-bridge --bench http_stack`

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use common::room::{Room, ladder};
use hls_bridge::HlsConfig;
use hls_bridge::http::{HlsAccess, HlsService, HlsStore, serve};
use http_body_util::{BodyExt as _, Empty};
use hyper::header;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate as _};

const ROOM: &str = "demo";
/// Concurrent keep-alive connections.
const CONNECTIONS: usize = 32;
const WINDOW: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
enum Stack {
    /// `hls_bridge::http::serve`: hyper-util's auto connection builder and
    /// the service's own gzip of each rendered playlist (cached per snapshot).
    Hyper,
    /// axum Router + CompressionLayer (media types excluded); the service's
    /// cached gzip still answers, so the layer passes it through.
    AxumCached,
    /// The same, with the layer doing the gzip on every request (what a
    /// migration that drops the service's own gzip would run).
    AxumLayerGzip,
}

fn main() {
    let mut room = Room::new(HlsConfig::default(), &ladder(), true);
    room.run(Duration::from_secs(12));
    let snap = room.last().clone();
    let store = HlsStore::new();
    store.publish(ROOM, snap.clone());
    let service = Arc::new(HlsService::new(store, HlsAccess::public()));
    let playlist = format!("/hls/{ROOM}/{}/v2/index.m3u8", snap.session);

    println!(
        "{:<16} {:<10} {:>10} {:>10} {:>14} {:>8}",
        "stack", "request", "req/s", "server cpu", "req/s per core", "bytes"
    );
    let mut part = None;
    for stack in [Stack::Hyper, Stack::AxumCached, Stack::AxumLayerGzip] {
        let (addr, control) = start(stack, service.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("client runtime");
        let part_path = part
            .get_or_insert_with(|| rt.block_on(last_part(addr, &playlist)))
            .clone();
        for (name, path) in [("playlist", &playlist), ("part", &part_path)] {
            let (count, bytes, wall, cpu) = rt.block_on(load(addr, path, &control));
            let rate = count as f64 / wall;
            println!(
                "{:<16} {name:<10} {rate:>10.0} {cpu:>10.2} {:>14.0} {:>8}",
                format!("{stack:?}"),
                count as f64 / cpu,
                bytes / count.max(1)
            );
        }
    }
}

/// A server thread: answers the load, and reports its own CPU seconds
/// between a start and a stop message.
fn start(stack: Stack, service: Arc<HlsService>) -> (SocketAddr, mpsc::Sender<oneshot::Sender<f64>>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (control, mut requests) = mpsc::channel::<oneshot::Sender<f64>>(4);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
            addr_tx
                .send(listener.local_addr().expect("bound"))
                .expect("main waits");
            match stack {
                Stack::Hyper => drop(tokio::spawn(serve(listener, service))),
                Stack::AxumCached | Stack::AxumLayerGzip => {
                    let media = DefaultPredicate::new()
                        .and(NotForContentType::const_new("video/"))
                        .and(NotForContentType::const_new("audio/"));
                    let router = Router::new()
                        .route("/hls/{*rest}", get(handler))
                        .layer(CompressionLayer::new().gzip(true).compress_when(media))
                        .with_state((service, matches!(stack, Stack::AxumLayerGzip)));
                    drop(tokio::spawn(async move { axum::serve(listener, router).await }));
                }
            }
            // Each message asks for the thread's CPU seconds so far.
            while let Some(reply) = requests.recv().await {
                let _ = reply.send(thread_cpu_seconds());
            }
        });
    });
    (addr_rx.recv().expect("server thread bound"), control)
}

async fn handler(State((service, layer_gzip)): State<(Arc<HlsService>, bool)>, req: Request) -> Response {
    // GETs only: the body is not needed, and axum's body is not `Sync`, so a
    // borrowed request could not be held across the service's await.
    let (mut parts, _body) = req.into_parts();
    if layer_gzip {
        // The service then answers identity; the layer still saw the
        // client's Accept-Encoding and compresses.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    let req = hyper::Request::from_parts(parts, ());
    service.handle(&req).await.map(axum::body::Body::new)
}

/// `CONNECTIONS` clients GET `path` for [`WINDOW`]: requests, response
/// bytes, wall seconds and the server thread's CPU seconds.
async fn load(
    addr: SocketAddr,
    path: &str,
    control: &mpsc::Sender<oneshot::Sender<f64>>,
) -> (u64, u64, f64, f64) {
    let count = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let cpu = || async {
        let (tx, rx) = oneshot::channel();
        control.send(tx).await.expect("server thread runs");
        rx.await.expect("server answers")
    };
    let cpu0 = cpu().await;
    let t0 = Instant::now();
    let until = t0 + WINDOW;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (path, count, bytes) = (path.to_owned(), count.clone(), bytes.clone());
            tokio::spawn(async move {
                let mut sender = connect(addr).await;
                while Instant::now() < until {
                    let n = fetch(&mut sender, &path).await;
                    count.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = cpu().await;
    (
        count.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        wall,
        cpu1 - cpu0,
    )
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the bench server");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

/// One GET with `Accept-Encoding: gzip`; the body length. A non-200 answer
/// ends the bench: the numbers would not be of the hot path.
async fn fetch(sender: &mut Sender, path: &str) -> usize {
    let req = hyper::Request::get(path)
        .header(header::HOST, "bench")
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Empty::new())
        .expect("valid request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), hyper::StatusCode::OK, "GET {path}");
    resp.into_body().collect().await.expect("body").to_bytes().len()
}

/// The last part the media playlist names, as a path.
async fn last_part(addr: SocketAddr, playlist: &str) -> String {
    let mut sender = connect(addr).await;
    let req = hyper::Request::get(playlist)
        .header(header::HOST, "bench")
        .body(Empty::new())
        .expect("valid request");
    let body = sender.send_request(req).await.expect("playlist").into_body();
    let text =
        String::from_utf8(body.collect().await.expect("body").to_bytes().to_vec()).expect("text playlist");
    let uri = text
        .lines()
        .rev()
        .filter(|l| l.starts_with("#EXT-X-PART:"))
        .find_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .expect("the playlist lists parts");
    let dir = playlist.rsplit_once('/').expect("a path").0;
    format!("{dir}/{uri}")
}

/// This thread's user + system CPU seconds (`/proc/thread-self/stat`
/// fields 14 and 15, in clock ticks of 1/100 s).
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("Linux /proc");
    let after = stat.rsplit_once(')').expect("stat has a comm field").1;
    // After the comm: the state letter, then numbers from field 4 (ppid) on.
    let f: Vec<i64> = after
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f[10] + f[11]) as f64 / 100.0
}
