#!/usr/bin/env bash
# Tests of deploy/:
#   1. every Kubernetes manifest against the Kubernetes schemas (kubernetes-validate, strict);
#   2. the compose file: parsed, the required services and their wiring checked,
#      and normalised by podman-compose;
#   3. the local cluster: deploy/local/cluster.sh up, a publisher through node 1
#      and viewers through node 2 (the load tester, asserting media arrived),
#      then down, with no process of it left;
#   4. SIGTERM drains a node with live viewers (503 for new sessions, /healthz
#      503, the viewers keep receiving, exit 0);
#   5. with --image (long; not in CI's budget): the container image, built with
#      podman from Debian base images made here with debootstrap.
#
#   deploy/test.sh            1-4 (scripts/test.sh runs this)
#   deploy/test.sh --image    1-5
#   deploy/test.sh --only-image
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DEPLOY="$ROOT/deploy"
VENV="$DEPLOY/.venv"
KUBERNETES_VERSION="${WAVE_K8S_VERSION:-1.33.0}"

fail() {
  echo "deploy/test.sh: FAIL: $*" >&2
  exit 1
}

# A Python venv with the validators (PEP 668 keeps them out of the system Python).
venv() {
  if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/podman-compose" ]; then
    echo "== deploy: installing kubernetes-validate, PyYAML and podman-compose into deploy/.venv"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate pyyaml podman-compose
  fi
}

validate_kubernetes() {
  echo "== deploy: Kubernetes manifests (schemas of $KUBERNETES_VERSION, strict)"
  local files=("$DEPLOY"/kubernetes/*.yaml)
  "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$KUBERNETES_VERSION" "${files[@]}" ||
    fail "a manifest does not match the Kubernetes schemas"
  "$VENV/bin/python" "$DEPLOY/check_manifests.py" "${files[@]}" ||
    fail "the manifests miss what deploy/README.md promises"
}

validate_compose() {
  echo "== deploy: compose file"
  "$VENV/bin/python" "$DEPLOY/check_manifests.py" --compose "$DEPLOY/compose/compose.yaml" ||
    fail "the compose file misses what deploy/README.md promises"
  # podman-compose resolves variables, anchors and paths the way an engine
  # would, without starting anything.
  (cd "$DEPLOY/compose" && WAVE_PUBLIC_IP=203.0.113.10 WAVE_AUTH_SECRET=test WAVE_TURN_SECRET=test \
    "$VENV/bin/podman-compose" -f compose.yaml config >/dev/null) ||
    fail "podman-compose cannot read deploy/compose/compose.yaml"
}

local_cluster() {
  echo "== deploy: local cluster (3 NATS, 3 nodes, TURN): publish through node 1, watch through node 2"
  local bin="${CARGO_TARGET_DIR:-$ROOT/target}/release"
  cargo build --quiet --release -p sfu -p turn-server -p loadtest
  STATE="$(mktemp -d "${TMPDIR:-/tmp}/wave-deploy-test.XXXXXX")"
  export WAVE_LOCAL_STATE="$STATE" WAVE_BIN_DIR="$bin"
  export WAVE_LOCAL_PORT_BASE="${WAVE_LOCAL_PORT_BASE:-27000}"
  trap 'deploy/local/cluster.sh down >/dev/null 2>&1 || true; rm -rf "$STATE"' EXIT
  deploy/local/cluster.sh up >"$STATE/up.out" || { cat "$STATE/up.out"; fail "cluster.sh up"; }
  deploy/local/cluster.sh up >/dev/null || fail "a second cluster.sh up (idempotent) failed"
  [ "$(grep -c 'running pid' "$STATE/up.out")" = 7 ] || { cat "$STATE/up.out"; fail "up did not list 7 processes"; }

  local http1=$((WAVE_LOCAL_PORT_BASE + 81)) http2=$((WAVE_LOCAL_PORT_BASE + 82)) token room report
  token="$("$bin/sfu" token --secret "$(cat "$STATE/secret")" --room '*' --identity deploy-test --publish --subscribe --ttl 10m)"
  # The load tester joins its URL and the endpoint paths: the publisher's
  # WHIP goes to node 1, the viewers' WHEP to node 2, which answers them
  # itself and feeds them from node 1 over the QUIC relay.
  room="lt7-0"
  report="$STATE/report.json"
  "$bin/loadtest" --url "http://127.0.0.1" --token "$token" --seed 7 \
    --whip-path ":$http1/whip/{room}" --whep-path ":$http2/whep/{room}" --metrics-path "" \
    --rate 20 --duration 4 --threads 1 --full-every 1 --quiet --json "$report" \
    --expect 'joined>=100%,failed<1,loss<5%' \
    fanout --viewers 3 --layer low >"$STATE/loadtest.out" 2>&1 ||
    { cat "$STATE/loadtest.out"; fail "publish through node 1, watch through node 2"; }
  "$VENV/bin/python" - "$report" <<'EOF' || { cat "$STATE/loadtest.out"; fail "the viewers received no media"; }
import json, sys
r = json.load(open(sys.argv[1]))
received = r["packets_expected"] - r["packets_lost"]
keyframes = r["join_ms"]["first_keyframe"]["count"]
print(f"   publisher connected: {r['publishers_connected']}/{r['publishers']}, "
      f"viewers joined: {r['viewers_joined']}/{r['viewers_planned']}, "
      f"packets received: {received}, viewers with a keyframe: {keyframes}")
assert r["publishers_connected"] == 1, "the publisher did not connect"
assert r["viewers_joined"] == r["viewers_planned"] == 3, "not every viewer joined"
assert keyframes == 3, "not every viewer decoded a keyframe"
assert received > 0, "no packets reached the viewers"
# Each node answers what reaches it: no redirect.
redirects = r["http"].get("307", 0)
print(f"   307 redirects: {redirects}")
assert redirects == 0, "a node redirected instead of relaying"
EOF
  local relayed
  relayed="$(curl -fsS "http://127.0.0.1:$http2/metrics" | awk '$1 == "wave_relay_frames_received_total" { print $2 }')"
  echo "   relay frames node 1 -> node 2: ${relayed:-none}"
  [ "${relayed:-0}" -gt 0 ] || fail "node 2 received nothing over the relay"
  deploy/local/cluster.sh down >/dev/null
  deploy/local/cluster.sh down >/dev/null || fail "a second cluster.sh down (idempotent) failed"
  if pgrep -f -- "$STATE" >/dev/null; then
    pgrep -af -- "$STATE" >&2
    fail "processes of the local cluster are still running after down"
  fi
  if deploy/local/cluster.sh status >/dev/null; then fail "status reports processes after down"; fi
  echo "   down: nothing left running"
  trap - EXIT
  rm -rf "$STATE"
}

# The drain a Kubernetes rollout relies on, with real viewers: SIGTERM to a
# node whose room has a publisher and two viewers; new sessions get 503 and
# /healthz 503 at once, the viewers keep receiving (the load tester's window
# spans the signal and must see no loss and no freeze), and when they leave
# the node exits 0 without waiting for its drain timeout.
drain_with_viewers() {
  echo "== deploy: SIGTERM drains a node with live viewers"
  local bin="${CARGO_TARGET_DIR:-$ROOT/target}/release" dir port node lt i code before after
  port=$((${WAVE_LOCAL_PORT_BASE:-27000} + 90))
  dir="$(mktemp -d "${TMPDIR:-/tmp}/wave-drain-test.XXXXXX")"
  "$bin/sfu" serve --http "127.0.0.1:$port" --workers 1 --drain-timeout 20s >"$dir/node.out" 2>"$dir/node.log" &
  node=$!
  trap 'kill -KILL "$node" "${lt:-}" 2>/dev/null || true; rm -rf "$dir"' EXIT
  for i in $(seq 1 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break
    [ "$i" = 100 ] && { cat "$dir/node.log"; fail "the node did not start"; }
    sleep 0.1
  done
  "$bin/loadtest" --url "http://127.0.0.1:$port" --seed 9 --rate 20 --duration 5 --threads 1 --full-every 1 \
    --quiet --json "$dir/report.json" --expect 'joined>=100%,failed<1,loss<1%,freezes<1' \
    fanout --viewers 2 --layer low >"$dir/loadtest.out" 2>&1 &
  lt=$!
  for i in $(seq 1 100); do
    [ "$(curl -sf "http://127.0.0.1:$port/v1/rooms/lt9-0" | grep -o '"session"' | wc -l)" -ge 3 ] && break
    [ "$i" = 100 ] && { cat "$dir/loadtest.out"; fail "the publisher and two viewers did not join"; }
    sleep 0.1
  done
  sleep 1
  kill -TERM "$node"
  sleep 0.3
  code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz")"
  [ "$code" = 503 ] || fail "/healthz answered $code while draining"
  curl -s -D "$dir/whep.h" -o /dev/null -X POST -H 'content-type: application/sdp' \
    --data-binary $'v=0\r\n' "http://127.0.0.1:$port/whep/lt9-0"
  grep -q '^HTTP/1.1 503' "$dir/whep.h" && grep -qi '^retry-after: ' "$dir/whep.h" ||
    { cat "$dir/whep.h"; fail "a new WHEP session was not refused with 503 + Retry-After"; }
  metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk '/^wave_rtp_forwarded_total/ {print $2}'; }
  before="$(metric)"
  sleep 1
  after="$(metric)"
  awk -v a="$before" -v b="$after" 'BEGIN { exit !(b > a) }' ||
    fail "the node forwarded nothing while draining ($before -> $after packets)"
  wait "$lt" || { cat "$dir/loadtest.out"; fail "the viewers lost media while the node drained"; }
  lt=""
  for i in $(seq 1 50); do
    kill -0 "$node" 2>/dev/null || break
    [ "$i" = 50 ] && fail "the node still runs 5 s after its last session ended"
    sleep 0.1
  done
  wait "$node" || fail "the drained node exited with status $?"
  grep -q "every session has ended" "$dir/node.log" || { cat "$dir/node.log"; fail "the node did not drain"; }
  echo "   /healthz 503 and WHEP 503 + Retry-After while draining; forwarded $before -> $after packets in 1 s of it;"
  echo "   viewers: no loss, no freeze across the signal; exit 0 once they left"
  trap - EXIT
  rm -rf "$dir"
}

# Base images the Containerfile names, made from Debian's packages (no image
# can be pulled here): debootstrap --variant=minbase of this machine's suite,
# imported as debian:bookworm-slim; the same plus this machine's Rust
# toolchain, laid out as the official rust image does, as rust:1-slim-bookworm.
base_images() {
  local work="$DEPLOY/.image-work" suite mirror toolchain
  suite="$(. /etc/os-release && echo "$VERSION_CODENAME")"
  [ "$suite" = bookworm ] || fail "the Containerfile names bookworm bases; this machine is $suite"
  mirror="${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)}"
  [ -n "$mirror" ] || fail "set DEBIAN_MIRROR (no URIs in /etc/apt/sources.list.d/debian.sources)"
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  mkdir -p "$work"
  if [ ! -d "$work/debian" ]; then
    echo "   debootstrap --variant=minbase $suite"
    rm -rf "$work/debian"
    debootstrap --variant=minbase "$suite" "$work/debian" "$mirror" >"$work/debootstrap.log" 2>&1 ||
      { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
    rm -rf "$work/debian"/var/cache/apt/archives/*.deb "$work/debian"/var/lib/apt/lists/*
  fi
  if ! podman image exists docker.io/library/debian:bookworm-slim; then
    # This machine's local CAs (a TLS-inspecting proxy's) come along, as in
    # its own Debian: `apt-get install ca-certificates` in a stage trusts
    # them, and npm is pointed at them as this machine's is.
    mkdir -p "$work/debian/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$work/debian/usr/local/share/ca-certificates/" 2>/dev/null || true
    cat "$work/debian/usr/local/share/ca-certificates/"*.crt >"$work/debian/etc/local-ca.pem" 2>/dev/null || true
    tar -C "$work/debian" -c . | podman import \
      --change 'CMD ["bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV NODE_EXTRA_CA_CERTS=/etc/local-ca.pem' \
      - docker.io/library/debian:bookworm-slim >/dev/null
    podman rmi docker.io/library/rust:1-slim-bookworm >/dev/null 2>&1 || true
  fi
  if ! podman image exists docker.io/library/rust:1-slim-bookworm; then
    toolchain="$(rustc --print sysroot)"
    echo "   rust base: the debian base plus $(basename "$toolchain")"
    rm -rf "$work/rust"
    cp -a "$work/debian" "$work/rust"
    mkdir -p "$work/rust/usr/local/rustup/toolchains" "$work/rust/usr/local/cargo/bin"
    cp -a "$toolchain" "$work/rust/usr/local/rustup/toolchains/stable"
    rm -rf "$work/rust/usr/local/rustup/toolchains/stable/share/doc"
    for b in "$work/rust/usr/local/rustup/toolchains/stable/bin/"*; do
      ln -s "/usr/local/rustup/toolchains/stable/bin/$(basename "$b")" "$work/rust/usr/local/cargo/bin/"
    done
    tar -C "$work/rust" -c . | podman import \
      --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV CARGO_HOME=/usr/local/cargo' \
      --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
      --change 'ENV NODE_EXTRA_CA_CERTS=/etc/local-ca.pem' \
      - docker.io/library/rust:1-slim-bookworm >/dev/null
    rm -rf "$work/rust"
  fi
}

build_image() {
  echo "== deploy: container image (podman build; long)"
  command -v podman >/dev/null || apt-get install -y -qq podman >/dev/null
  local start end mnt
  start=$(date +%s)
  base_images
  # chroot isolation: this machine refuses the OCI runtime's setrlimit, so
  # RUN steps cannot use runc; the resulting image is the same.
  local jobs=()
  [ -z "${CARGO_BUILD_JOBS:-}" ] || jobs=(--build-arg "CARGO_BUILD_JOBS=$CARGO_BUILD_JOBS")
  podman build --format docker --isolation chroot --network host "${jobs[@]}" \
    -f deploy/container/Containerfile -t localhost/wave:test . >"$DEPLOY/.image-work/build.log" 2>&1 ||
    { tail -30 "$DEPLOY/.image-work/build.log"; fail "podman build"; }
  end=$(date +%s)
  echo "   built localhost/wave:test in $((end - start)) s, $(podman image inspect localhost/wave:test --format '{{.Size}}') bytes"
  podman image inspect localhost/wave:test --format '{{.Config.User}} {{json .Config.Healthcheck.Test}}' |
    grep -q '^10001:10001 .*wave-healthcheck' || fail "the image lacks its non-root user or HEALTHCHECK"
  # Containers cannot start here: run the image's binaries from its
  # filesystem on the host instead.
  mnt="$(podman image mount localhost/wave:test)"
  trap 'podman image unmount localhost/wave:test >/dev/null 2>&1 || true' RETURN
  "$mnt/usr/local/bin/sfu" --version || fail "the image's sfu does not run"
  "$mnt/usr/local/bin/turn-server" --version || fail "the image's turn-server does not run"
  [ -f "$mnt/usr/share/wave/hls.js/hls.min.js" ] || fail "the image lacks hls.js"
  local missing
  missing="$(LD_LIBRARY_PATH="$mnt/usr/lib/x86_64-linux-gnu:$mnt/lib/x86_64-linux-gnu" ldd "$mnt/usr/local/bin/sfu" | grep 'not found' || true)"
  [ -z "$missing" ] || fail "the image's sfu misses libraries: $missing"
  echo "   the image's sfu and turn-server run; hls.js present; user 10001; HEALTHCHECK on /healthz"
}

case "${1:-}" in
  "") venv; validate_kubernetes; validate_compose; local_cluster; drain_with_viewers ;;
  --image) venv; validate_kubernetes; validate_compose; local_cluster; drain_with_viewers; build_image ;;
  --only-image) build_image ;;
  *) echo "usage: $0 [--image|--only-image]" >&2; exit 2 ;;
esac
echo "== deploy: ok"
