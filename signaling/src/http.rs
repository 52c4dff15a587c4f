//! HTTP plumbing shared by the handlers: responses, RFC 9457 problems,
//! CORS decoration, body reading, header parsing.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use crate::auth::AuthError;
use crate::media::MediaError;

pub type Body = Full<Bytes>;
pub type Resp = Response<Body>;

pub const ACCEPT_POST: HeaderName = HeaderName::from_static("accept-post");
pub const ACCEPT_PATCH: HeaderName = HeaderName::from_static("accept-patch");

pub const SDP: &str = "application/sdp";
pub const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
pub const JSON: &str = "application/json";
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Response headers a cross-origin WHIP/WHEP client must be able to read
/// (none is CORS-safelisted).
const EXPOSE_HEADERS: &str = "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After";
/// Every method the WHIP/WHEP resources answer, for CORS.
pub const CORS_METHODS: &str = "GET, HEAD, POST, PATCH, DELETE, OPTIONS";
/// `ETag` is allowed as a request header because Eyevinn's client sends it
/// on PATCH in place of `If-Match`.
pub const CORS_REQUEST_HEADERS: &str = "Authorization, Content-Type, If-Match, ETag";
/// How long a browser may cache a preflight, seconds.
pub const CORS_MAX_AGE: &str = "86400";

/// Retry-After for 409 ([`MediaError::NoPublisher`], from a node that
/// cannot wait for a publisher): players back off exponentially from this
/// value (draft-ietf-wish-whep §4.1).
pub const NO_PUBLISHER_RETRY_SECS: u32 = 2;

/// An error response: an RFC 9457 problem with extra headers.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl HttpError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        HttpError {
            status,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no such resource")
    }

    /// 415 naming what this resource accepts (RFC 9110 §15.5.16, RFC 5789 §2.2).
    pub fn unsupported_type(accept_header: HeaderName, accepted: &'static str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {accepted}"),
        )
        .with(accept_header, HeaderValue::from_static(accepted))
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("allowed methods: {allow}"),
        )
        .with(header::ALLOW, HeaderValue::from_static(allow))
    }

    pub fn retry_after(status: StatusCode, detail: impl Into<String>, secs: u32) -> Self {
        Self::new(status, detail).with(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
    }

    pub fn with(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn into_response(self) -> Resp {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = serde_json::json!({
            "type": "about:blank",
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut resp = with_body(self.status, PROBLEM_JSON, body.to_string());
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

impl From<MediaError> for HttpError {
    fn from(e: MediaError) -> Self {
        let detail = e.to_string();
        match e {
            MediaError::BadRequest(_) => Self::new(StatusCode::BAD_REQUEST, detail),
            MediaError::Unprocessable(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail),
            MediaError::NotAcceptable(_) => Self::new(StatusCode::NOT_ACCEPTABLE, detail),
            MediaError::NotFound => Self::new(StatusCode::NOT_FOUND, detail),
            MediaError::NoPublisher(_) => {
                Self::retry_after(StatusCode::CONFLICT, detail, NO_PUBLISHER_RETRY_SECS)
            }
            MediaError::RoomFull { retry_after_secs, .. } => {
                Self::retry_after(StatusCode::TOO_MANY_REQUESTS, detail, retry_after_secs)
            }
            MediaError::Overloaded { retry_after_secs } => {
                Self::retry_after(StatusCode::SERVICE_UNAVAILABLE, detail, retry_after_secs)
            }
            MediaError::Upstream(_) | MediaError::Unavailable(_) => {
                Self::retry_after(StatusCode::SERVICE_UNAVAILABLE, detail, 2)
            }
            MediaError::Internal(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, detail),
        }
    }
}

impl From<AuthError> for HttpError {
    /// RFC 6750 §3: 401 with a `WWW-Authenticate: Bearer` challenge; 403 for
    /// a valid token without the right.
    fn from(e: AuthError) -> Self {
        let challenge = match e {
            AuthError::Missing => r#"Bearer realm="wave""#,
            AuthError::Invalid(_)
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::WrongAudience
            | AuthError::TooLong { .. } => r#"Bearer realm="wave", error="invalid_token""#,
            AuthError::Forbidden { .. } => r#"Bearer realm="wave", error="insufficient_scope""#,
        };
        let status = match e {
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        Self::new(status, e.to_string()).with(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge))
    }
}

pub fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

pub fn with_body(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Resp {
    match serde_json::to_string(value) {
        Ok(s) => with_body(status, JSON, s),
        Err(e) => HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Which origin a response lets read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// A request without `Origin`: `*` (no cookies are used, so `*` is as
    /// safe as an echo).
    Any,
    /// Echoed with `Vary: Origin`, so that caches keep per-origin copies.
    Echo(HeaderValue),
    /// A foreign page on an open node: no `Access-Control-Allow-Origin`, so
    /// the browser keeps the response from it.
    Deny,
}

/// Adds the CORS headers every response carries.
pub fn decorate_cors(resp: &mut Resp, cors: Cors) {
    let h = resp.headers_mut();
    match cors {
        Cors::Echo(o) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        Cors::Any => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
        Cors::Deny => {
            h.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
            h.append(header::VARY, HeaderValue::from_static("Origin"));
            return;
        }
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
}

/// Whether `host` (a `Host` header or URI authority: `name[:port]`,
/// `a.b.c.d[:port]`, `[v6][:port]`) names this machine's loopback:
/// `localhost` and its subdomains (RFC 6761 §6.3), 127.0.0.0/8, `::1`.
/// A DNS-rebinding page reaches a loopback server under the attacker's
/// name, so that name never passes.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return false;
        }
        return inside
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| std::net::IpAddr::V6(ip).to_canonical().is_loopback());
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
        return ip.is_loopback();
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether an `Origin` value (RFC 6454 §7: `scheme://host[:port]`, or
/// `null`) is a page served from loopback over http or https.
pub fn is_loopback_origin(origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    scheme_ok && !host.contains('/') && is_loopback_host(host)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether the request's media type (parameters ignored) is `expected`.
pub fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    media_type(headers).is_some_and(|t| t.eq_ignore_ascii_case(expected))
}

pub fn media_type(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim())
}

/// A body over the limit but not over this is still read (and dropped)
/// before the 413 goes out: a server that answers and closes while the
/// client is still sending leaves unread bytes, the kernel resets the
/// connection, and clients (hyper, curl, browsers) then report a broken
/// pipe instead of the 413.
const DRAIN_MAX: u64 = 4 << 20;

/// Reads a whole body of at most `max` bytes within `timeout`.
pub async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_MAX) {
        return Err(too_large());
    }
    let max_len = max as u64;
    let read = async {
        let mut kept = Vec::with_capacity(declared.map_or(0, |n| n.min(max_len) as usize));
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| HttpError::bad_request(format!("reading the body failed: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            total += data.len() as u64;
            if total > DRAIN_MAX {
                return Err(too_large());
            }
            if total <= max_len {
                kept.extend_from_slice(&data);
            }
        }
        if total > max_len {
            return Err(too_large());
        }
        Ok(Bytes::from(kept))
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request body took too long",
        )),
        Ok(result) => result,
    }
}

/// Reads a non-empty UTF-8 body.
pub async fn read_text(
    body: Incoming,
    headers: &HeaderMap,
    max: usize,
    timeout: Duration,
) -> Result<String, HttpError> {
    let bytes = read_body(body, headers, max, timeout).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(HttpError::bad_request("empty body"));
    }
    String::from_utf8(bytes.into()).map_err(|_| HttpError::bad_request("body is not UTF-8"))
}

/// The bearer token of `Authorization`, if any. A scheme other than Bearer,
/// an empty token, or the literal `undefined`/`null` that JavaScript
/// clients send when no token is configured all count as no token.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    let usable =
        scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !matches!(token, "undefined" | "null");
    usable.then_some(token)
}

/// An `If-Match` condition (RFC 9110 §13.1.1).
#[derive(Debug, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Tags(Vec<String>),
}

impl IfMatch {
    /// `If-Match`, or else an `ETag` request header (Eyevinn's client sends
    /// its entity tag that way).
    pub fn from_headers(headers: &HeaderMap) -> Option<IfMatch> {
        let raw = headers
            .get(header::IF_MATCH)
            .or_else(|| headers.get(header::ETAG))?;
        let s = raw.to_str().ok()?.trim();
        if s == "*" {
            return Some(IfMatch::Any);
        }
        Some(IfMatch::Tags(
            s.split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        ))
    }

    /// Strong comparison: a weak tag (`W/"…"`) never matches.
    pub fn matches(&self, current: &str) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Tags(tags) => tags.iter().any(|t| t == current),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn bearer_rules() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc.def")])),
            Some("abc.def")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(bearer(&headers(&[("authorization", "Bearer undefined")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Basic dXNlcg==")])), None);
        assert_eq!(bearer(&headers(&[])), None);
    }

    #[test]
    fn if_match_rules() {
        let tag = "\"abc\"";
        assert_eq!(IfMatch::from_headers(&headers(&[])), None);
        assert!(
            IfMatch::from_headers(&headers(&[("if-match", "*")]))
                .unwrap()
                .matches(tag)
        );
        assert!(
            IfMatch::from_headers(&headers(&[("if-match", "\"x\", \"abc\"")]))
                .unwrap()
                .matches(tag)
        );
        assert!(
            !IfMatch::from_headers(&headers(&[("if-match", "W/\"abc\"")]))
                .unwrap()
                .matches(tag)
        );
        assert!(
            !IfMatch::from_headers(&headers(&[("if-match", "\"zzz\"")]))
                .unwrap()
                .matches(tag)
        );
        assert!(
            IfMatch::from_headers(&headers(&[("etag", "\"abc\"")]))
                .unwrap()
                .matches(tag)
        );
    }

    #[test]
    fn loopback_hosts_and_origins() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.9.8.7:80",
            "[::1]",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "example.com",
            "localhost.example.com",
            "evil-localhost",
            "10.0.0.1:8080",
            "0.0.0.0",
            "[::]",
            "[::2]:80",
            "127.0.0.1:port",
            "127.0.0.1:8080:1",
            "[::1]x",
            "[::1",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
        let origin = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_loopback_origin(&origin("http://localhost:8080")));
        assert!(is_loopback_origin(&origin("https://127.0.0.1")));
        assert!(is_loopback_origin(&origin("http://[::1]:9000")));
        assert!(!is_loopback_origin(&origin("null")));
        assert!(!is_loopback_origin(&origin("https://app.example")));
        assert!(!is_loopback_origin(&origin("file://localhost")));
        assert!(!is_loopback_origin(&origin("http://localhost.evil.example")));
    }

    #[test]
    fn content_type_ignores_parameters_and_case() {
        assert!(content_type_is(
            &headers(&[("content-type", "Application/SDP; charset=utf-8")]),
            SDP
        ));
        assert!(!content_type_is(&headers(&[("content-type", "text/plain")]), SDP));
        assert!(!content_type_is(&headers(&[]), SDP));
    }
}
