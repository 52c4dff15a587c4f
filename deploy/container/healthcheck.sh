#!/bin/bash
# The image's HEALTHCHECK: `GET /healthz` on the node's own HTTP listener,
# with bash's /dev/tcp (the slim runtime has no curl). The address comes from
# SFU_HTTP (`0.0.0.0:8080`, `10.0.0.5:8080`, `[::]:8080`).
set -u
addr="${SFU_HTTP:-127.0.0.1:8080}"
port="${addr##*:}"
host="${addr%:*}"
host="${host#[}"
host="${host%]}"
case "$host" in 0.0.0.0 | "" | ::) host=127.0.0.1 ;; esac
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 3 status <&3 || exit 1
case "$status" in
  "HTTP/1.1 200"* | "HTTP/1.0 200"*) exit 0 ;;
  *) echo "healthz: ${status%$'\r'}"; exit 1 ;;
esac
