//! hls.js is served from its installed package directory under
//! `/vendor/hls.js/`, with a 404 that says how to install it when absent.
use crate::common;

use std::path::PathBuf;

use common::*;
use hyper::StatusCode;
use signaling::HttpConfig;

/// A fresh directory holding a fake `hls.min.js`, removed on drop.
struct Dist(PathBuf);

impl Dist {
    fn new(js: &str) -> Dist {
        let dir = std::env::temp_dir().join(format!("wave-hlsjs-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hls.min.js"), js).unwrap();
        Dist(dir)
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn with_dir(dir: Option<PathBuf>) -> HttpConfig {
    HttpConfig {
        hlsjs_dir: dir,
        ..config()
    }
}

#[tokio::test]
async fn installed_hlsjs_is_served_as_javascript() {
    let dist = Dist::new("var Hls = function () {};");
    let srv = start(with_dir(Some(dist.0.clone()))).await;

    let r = srv.get("/vendor/hls.js/hls.min.js").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.body, "var Hls = function () {};");

    let r = srv.send("HEAD", "/vendor/hls.js/hls.min.js", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());

    let r = srv.send("POST", "/vendor/hls.js/hls.min.js", &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn missing_hlsjs_is_a_404_that_says_how_to_install_it() {
    let empty = Dist::new("");
    std::fs::remove_file(empty.0.join("hls.min.js")).unwrap();
    for dir in [None, Some(empty.0.clone())] {
        let srv = start(with_dir(dir.clone())).await;
        let r = srv.get("/vendor/hls.js/hls.min.js").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{dir:?}: {r:?}");
        let detail = r.problem()["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.contains("scripts/setup.sh") && detail.contains("--hlsjs-dir"),
            "{dir:?}: {detail}"
        );
    }
}

#[tokio::test]
async fn only_plain_script_names_inside_the_directory_are_served() {
    let dist = Dist::new("var Hls;");
    std::fs::write(dist.0.join("notes.txt"), "not a script").unwrap();
    let srv = start(with_dir(Some(dist.0.join("sub")))).await;
    std::fs::create_dir_all(dist.0.join("sub")).unwrap();
    for path in [
        "/vendor/hls.js/../hls.min.js",
        "/vendor/hls.js/%2e%2e%2fhls.min.js",
        "/vendor/hls.js/..%2Fhls.min.js",
        "/vendor/hls.js/sub/hls.min.js",
        "/vendor/hls.js/.hidden.js",
        "/vendor/hls.js/../notes.txt",
        "/vendor/hls.js/",
    ] {
        let r = srv.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {r:?}");
        assert_eq!(r.problem()["detail"], "no such resource", "{path}");
    }
}
