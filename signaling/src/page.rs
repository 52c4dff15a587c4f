//! The demo page at `/`: plain HTML + JS, compiled into the binary, and the
//! browser libraries it loads at runtime (hls.js), read from an installed npm
//! package rather than copied into the repository.

use std::path::{Path, PathBuf};

use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use tracing::{debug, warn};

use crate::http::{self, HttpError, Resp};

/// A static file served from memory.
#[derive(Debug)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../static/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/app.js"),
    },
    Asset {
        path: "/chat.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/chat.js"),
    },
    Asset {
        path: "/hls-player.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/hls-player.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../static/style.css"),
    },
];

pub fn find(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// Where the page loads hls.js from: `/vendor/hls.js/{file}`.
pub const HLSJS_PREFIX: &str = "/vendor/hls.js/";

/// `GET /vendor/hls.js/{file}`: a file of hls.js's `dist` directory (`dir`,
/// from `sfu serve --hlsjs-dir`). Only plain `*.js`/`*.mjs`/`*.map` names are
/// served, so a request cannot leave the directory.
pub async fn hlsjs(dir: Option<&Path>, file: &str) -> Result<Resp, HttpError> {
    let content_type = match file.rsplit_once('.') {
        Some((_, "js" | "mjs")) => "text/javascript; charset=utf-8",
        Some((_, "map")) => "application/json",
        _ => return Err(HttpError::not_found()),
    };
    let plain = !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !plain {
        debug!(file, "hls.js asset name refused");
        return Err(HttpError::not_found());
    }
    let Some(dir) = dir else {
        return Err(not_installed());
    };
    let path: PathBuf = dir.join(file);
    let read = tokio::task::spawn_blocking({
        let path = path.clone();
        move || std::fs::read(path)
    })
    .await;
    match read {
        Ok(Ok(body)) => {
            let mut resp = http::with_body(StatusCode::OK, content_type, body);
            // The installed version can change under a running node (npm ci).
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            Ok(resp)
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound && file.starts_with("hls.") => {
            warn!(path = %path.display(), "hls.js is not installed; the page's HLS player is off");
            Err(not_installed())
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(HttpError::not_found()),
        Ok(Err(e)) => {
            warn!(path = %path.display(), error = %e, "cannot read hls.js");
            Err(HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read hls.js",
            ))
        }
        Err(e) => {
            warn!(error = %e, "hls.js read task failed");
            Err(HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read hls.js",
            ))
        }
    }
}

fn not_installed() -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "hls.js is not installed on this node: run scripts/setup.sh (npm ci in web/), \
         or point sfu serve --hlsjs-dir at hls.js's dist directory",
    )
}
