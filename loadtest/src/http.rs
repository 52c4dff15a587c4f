//! WHIP/WHEP signaling over hyper: POST an offer, follow redirects, retry
//! when the server asks to (429/503/409 with Retry-After), DELETE at the end.
//! Every status and failure is counted; nothing here panics or waits forever.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::debug;

use crate::error::Error;

/// A created WHIP/WHEP session.
#[derive(Debug, Clone)]
pub struct Session {
    pub answer: String,
    /// Absolute URL of the session resource (for DELETE).
    pub location: Option<String>,
}

/// The HTTP client all peers share, with counters of what the server said.
pub struct Signaling {
    client: Client<HttpConnector, Full<Bytes>>,
    token: Option<String>,
    timeout: Duration,
    retries: u32,
    /// Responses by status code, plus "timeout" and "connect" failures.
    pub outcomes: Mutex<BTreeMap<String, u64>>,
}

fn client(local: Option<IpAddr>, timeout: Duration) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    connector.set_local_address(local);
    Client::builder(TokioExecutor::new()).build(connector)
}

const SDP: &str = "application/sdp";
const MAX_REDIRECTS: usize = 5;
/// Longest wait honoured from a Retry-After header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

impl Signaling {
    pub fn new(token: Option<String>, timeout: Duration, retries: u32) -> Signaling {
        Signaling {
            client: client(None, timeout),
            token,
            timeout,
            retries,
            outcomes: Mutex::new(BTreeMap::new()),
        }
    }

    fn count(&self, what: impl Into<String>) {
        if let Ok(mut m) = self.outcomes.lock() {
            *m.entry(what.into()).or_default() += 1;
        }
    }

    /// Sends one request and reads the whole response within the timeout.
    async fn send(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        method: Method,
        url: &str,
        body: &str,
        content_type: &str,
        counted: bool,
    ) -> Result<(StatusCode, hyper::HeaderMap, String), Error> {
        let mut req = Request::builder().method(method).uri(url);
        if !body.is_empty() {
            req = req.header("content-type", content_type);
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| Error::Http(format!("bad request for {url}: {e}")))?;
        let fut = async {
            let res = client.request(req).await.map_err(|e| {
                self.count("connect");
                Error::Http(format!("{url}: {e}"))
            })?;
            let status = res.status();
            let headers = res.headers().clone();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Http(format!("{url}: body: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, headers, String::from_utf8_lossy(&body).into_owned()))
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok((status, h, b))) => {
                if counted {
                    self.count(status.as_u16().to_string());
                }
                Ok((status, h, b))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                self.count("timeout");
                Err(Error::Timeout(format!("{url} after {:?}", self.timeout)))
            }
        }
    }

    /// POSTs an SDP offer to a WHIP or WHEP endpoint from `local` (each
    /// simulated peer connects from its own address, as real clients do, so
    /// per-IP limits see many clients); returns the answer.
    pub async fn offer(&self, url: &str, sdp: &str, local: Option<IpAddr>) -> Result<Session, Error> {
        let own;
        let client = match local {
            Some(ip) => {
                own = client(Some(ip), self.timeout);
                &own
            }
            None => &self.client,
        };
        let mut target = url.to_owned();
        let mut redirects = 0;
        let mut attempts = 0;
        loop {
            let (status, headers, body) = self.send(client, Method::POST, &target, sdp, SDP, true).await?;
            let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
            match status.as_u16() {
                201 | 200 => {
                    let location = header("location").and_then(|l| resolve(&target, &l));
                    return Ok(Session {
                        answer: body,
                        location,
                    });
                }
                307 | 308 if redirects < MAX_REDIRECTS => {
                    let Some(next) = header("location").and_then(|l| resolve(&target, &l)) else {
                        return Err(Error::Status {
                            status: status.as_u16(),
                            reason: "redirect without a usable Location".into(),
                        });
                    };
                    debug!(from = %target, to = %next, "following redirect");
                    target = next;
                    redirects += 1;
                }
                429 | 503 | 409 if attempts < self.retries => {
                    attempts += 1;
                    let wait = header("retry-after")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map_or(Duration::from_secs(1), Duration::from_secs)
                        .min(MAX_RETRY_AFTER);
                    debug!(%status, ?wait, attempt = attempts, "server asks to retry");
                    tokio::time::sleep(wait).await;
                }
                s => {
                    let reason = body
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect();
                    return Err(Error::Status { status: s, reason });
                }
            }
        }
    }

    /// Ends a session (best effort; the outcome is counted).
    pub async fn delete(&self, location: &str) {
        if let Err(e) = self
            .send(&self.client, Method::DELETE, location, "", SDP, true)
            .await
        {
            debug!(%location, error = %e, "DELETE failed");
        }
    }

    /// GETs a text resource (the server's metrics); non-2xx is an error.
    pub async fn get(&self, url: &str) -> Result<String, Error> {
        let (status, _, body) = self.send(&self.client, Method::GET, url, "", SDP, false).await?;
        success(status, body)
    }

    /// POSTs (a non-empty `json` body) or GETs (an empty one) a JSON API
    /// (Janus's REST API); the status is counted; non-2xx is an error.
    pub async fn json(&self, url: &str, json: &str) -> Result<String, Error> {
        let method = if json.is_empty() {
            Method::GET
        } else {
            Method::POST
        };
        let (status, _, body) = self
            .send(&self.client, method, url, json, "application/json", true)
            .await?;
        success(status, body)
    }

    pub fn outcomes(&self) -> BTreeMap<String, u64> {
        self.outcomes.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Resolves a Location header (absolute, or a path) against the request URL.
pub fn resolve(base: &str, location: &str) -> Option<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_owned());
    }
    let uri: Uri = base.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let path = uri.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    Some(format!("{scheme}://{authority}{dir}{location}"))
}

/// The body of a 2xx answer; any other status is an error with the body's
/// start as its reason.
fn success(status: StatusCode, body: String) -> Result<String, Error> {
    if status.is_success() {
        Ok(body)
    } else {
        Err(Error::Status {
            status: status.as_u16(),
            reason: body.chars().take(200).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn resolves_locations() {
        let b = "http://127.0.0.1:8080/whep/room?layer=low";
        assert_eq!(
            resolve(b, "/whep/room/abc").unwrap(),
            "http://127.0.0.1:8080/whep/room/abc"
        );
        assert_eq!(
            resolve(b, "room/abc").unwrap(),
            "http://127.0.0.1:8080/whep/room/abc"
        );
        assert_eq!(resolve(b, "http://10.0.0.1/x").unwrap(), "http://10.0.0.1/x");
    }
}
