//! Real HTTP on loopback for the HLS service: a server on 127.0.0.1:0 and
//! a small hyper client speaking HTTP/1.1 or h2c (prior knowledge).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use hls_bridge::http::{HlsService, serve};

pub async fn start(service: Arc<HlsService>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, service));
    addr
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: hyper::Version,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    /// The body, gunzipped when it was sent gzipped.
    pub fn text(&self) -> String {
        if self.header("content-encoding") == "gzip" {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&self.body[..]), &mut out)
                .unwrap();
            out
        } else {
            String::from_utf8(self.body.to_vec()).unwrap()
        }
    }
}

/// One request on a fresh connection: `h2` picks h2c, else HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str, h2: bool, headers: &[(&str, &str)]) -> Answer {
    request(addr, "GET", path, h2, headers).await
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    h2: bool,
    headers: &[(&str, &str)],
) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = TokioIo::new(stream);
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", addr.to_string());
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(Empty::<Bytes>::new()).unwrap();
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
        version,
    }
}
