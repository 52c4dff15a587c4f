//! LL-HLS of a room held by another node, served here: the request is
//! passed to the room's node over HTTP and its answer returned as is (the
//! room is packaged once, at its origin). A blocking playlist request
//! (`_HLS_msn`) waits there; the token in the query is checked there, with
//! the cluster's shared secret. Who holds a room is looked up in the
//! registry at most once a second per room.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::debug;

use crate::cluster::{Cluster, RoomClaim};
use crate::http::{self, Resp};
use crate::locks::lock;
use crate::media::RoomId;

/// A blocking playlist request waits up to three target durations at the
/// origin; a whole answer must come within this.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer passed on (a segment of a high rung is a few MiB).
const MAX_BODY: usize = 32 << 20;
/// How long a room's holder is remembered.
const OWNER_TTL: Duration = Duration::from_secs(1);
const MAX_CACHED: usize = 10_000;

/// The client and the owner cache.
pub struct HlsProxy {
    client: Client<HttpConnector, Full<Bytes>>,
    owners: Mutex<HashMap<RoomId, (Instant, Option<RoomClaim>)>>,
}

impl Default for HlsProxy {
    fn default() -> Self {
        HlsProxy {
            client: Client::builder(TokioExecutor::new()).build_http(),
            owners: Mutex::new(HashMap::new()),
        }
    }
}

impl HlsProxy {
    /// The room of an `/hls/{room}/...` path.
    pub fn room_of(path: &str) -> Option<RoomId> {
        let rest = path.strip_prefix("/hls/")?;
        RoomId::parse(rest.split('/').next()?)
    }

    /// The node holding `room`, when another one (cached a second).
    pub async fn owner_elsewhere(&self, cluster: &Cluster, room: &RoomId) -> Option<RoomClaim> {
        let now = Instant::now();
        if let Some((at, owner)) = lock(&self.owners).get(room)
            && now.saturating_duration_since(*at) < OWNER_TTL
        {
            return owner.clone();
        }
        let owner = cluster
            .owner(room)
            .await
            .ok()
            .flatten()
            .filter(|o| o.node != *cluster.node_id());
        let mut owners = lock(&self.owners);
        if owners.len() >= MAX_CACHED {
            owners.clear();
        }
        owners.insert(room.clone(), (now, owner.clone()));
        owner
    }

    /// `GET` (or `HEAD`) of the same path and query at the owner.
    pub async fn forward(&self, owner: &RoomClaim, parts: &hyper::http::request::Parts) -> Resp {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}{path}", owner.http_url.trim_end_matches('/'));
        let bad_gateway = |why: String| {
            debug!(%url, %why, "LL-HLS from the room's node failed");
            http::with_body(
                StatusCode::BAD_GATEWAY,
                "text/plain; charset=utf-8",
                format!("the room's node {} did not answer: {why}\n", owner.node),
            )
        };
        let req = match Request::builder()
            .method(parts.method.clone())
            .uri(&url)
            .body(Full::new(Bytes::new()))
        {
            Ok(r) => r,
            Err(e) => return bad_gateway(e.to_string()),
        };
        let resp = match tokio::time::timeout(TIMEOUT, self.client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return bad_gateway(e.to_string()),
            Err(_) => return bad_gateway("timed out".into()),
        };
        let (head, body) = resp.into_parts();
        let body = match tokio::time::timeout(TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return bad_gateway(e.to_string()),
            Err(_) => return bad_gateway("body timed out".into()),
        };
        let mut out = hyper::Response::new(Full::new(body));
        *out.status_mut() = head.status;
        for name in [
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            header::ETAG,
            header::LAST_MODIFIED,
        ] {
            if let Some(v) = head.headers.get(&name) {
                out.headers_mut().insert(name, v.clone());
            }
        }
        out.headers_mut().insert(
            "x-wave-origin",
            HeaderValue::from_str(owner.node.as_str()).unwrap_or(HeaderValue::from_static("-")),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_is_the_first_segment() {
        assert_eq!(HlsProxy::room_of("/hls/r1/index.m3u8").unwrap().as_str(), "r1");
        assert_eq!(HlsProxy::room_of("/hls/r1").unwrap().as_str(), "r1");
        assert!(HlsProxy::room_of("/hls//x").is_none());
        assert!(HlsProxy::room_of("/other/r1").is_none());
    }
}
