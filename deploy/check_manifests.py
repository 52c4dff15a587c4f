"""Checks deploy/'s manifests for what deploy/README.md promises, beyond the
Kubernetes schemas (which kubernetes-validate checks):

  check_manifests.py deploy/kubernetes/*.yaml
  check_manifests.py --compose deploy/compose/compose.yaml

Prints one line per problem and exits 1 when there is any.
"""

import re
import subprocess
import sys
from pathlib import Path

import yaml

problems = []


def need(cond, what):
    if not cond:
        problems.append(what)
    return cond


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def pod_specs(docs):
    for d in docs:
        spec = d.get("spec", {})
        if "template" in spec:
            yield d, spec["template"]["spec"]


def check_kubernetes(paths):
    docs = [d for p in paths for d in yaml.safe_load_all(Path(p).read_text()) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    for d, pod in pod_specs(docs):
        name = d["metadata"]["name"]
        need(not pod.get("hostNetwork"), f"{name}: hostNetwork (the default plan must not need it)")
        need(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: not runAsNonRoot")
        for c in pod["containers"]:
            for port in c.get("ports", []):
                need("hostPort" not in port, f"{name}: hostPort {port.get('hostPort')}")

    nats = by.get(("StatefulSet", "nats"))
    if need(nats, "no nats StatefulSet"):
        s = nats["spec"]
        need(s["replicas"] == 3, "nats: not 3 replicas")
        need(s.get("podManagementPolicy") == "Parallel", "nats: podManagementPolicy is not Parallel")
        anti = s["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
        need(anti.get("requiredDuringSchedulingIgnoredDuringExecution"), "nats: no required anti-affinity")
        svc = by.get(("Service", s["serviceName"]), {})
        need(svc.get("spec", {}).get("publishNotReadyAddresses"), "nats: its headless Service hides unready peers")
        conf = by[("ConfigMap", "nats-config")]["data"]["nats.conf"]
        need("jetstream" in conf, "nats: JetStream is off")
        routes = re.findall(r"nats://(nats-\d)\.", conf)
        need(sorted(routes) == ["nats-0", "nats-1", "nats-2"], f"nats: routes {routes}")

    node = by.get(("StatefulSet", "wave-node"))
    if not need(node, "no wave-node StatefulSet"):
        return
    s = node["spec"]
    pod = s["template"]["spec"]
    c = pod["containers"][0]
    env = env_of(c)
    need(c["readinessProbe"]["httpGet"]["path"] == "/healthz", "wave-node: readiness is not /healthz")
    need("httpGet" not in c.get("livenessProbe", {}), "wave-node: an HTTP liveness probe would restart a draining node")
    public = env.get("SFU_PUBLIC_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    need(public == "status.hostIP", "wave-node: SFU_PUBLIC_IP is not the node's status.hostIP")
    drain = env.get("SFU_DRAIN_TIMEOUT", {}).get("value", "30s")
    need(drain.endswith("s"), f"wave-node: SFU_DRAIN_TIMEOUT {drain} is not in seconds")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need(grace > int(drain.rstrip("s")), f"wave-node: grace {grace}s does not cover the drain {drain}")
    for key in ("SFU_AUTH_SECRET", "SFU_NATS", "SFU_NODE_ID", "SFU_ADVERTISE_URL"):
        need(key in env, f"wave-node: no {key}")
    workers = int(env["SFU_WORKERS"]["value"])
    formula = re.search(r"SFU_MEDIA_PORT=\$\$\(\((\d+) \+ (\d+) \* ordinal\)\)", " ".join(c["args"]))
    if need(formula, "wave-node: the media port is not derived from the pod ordinal"):
        base, step = int(formula[1]), int(formula[2])
        need(step >= workers, "wave-node: pods' media port blocks overlap")
        # The pod's script as Kubernetes hands it to bash (`$$` -> `$`), run
        # with each pod's host name up to its `exec`.
        script = c["args"][0].replace("$$", "$").replace("exec /usr/local/bin/sfu serve", 'echo "$SFU_MEDIA_PORT"')
        for n in range(s["replicas"]):
            run = subprocess.run(["bash", "-c", script], env={"HOSTNAME": f"wave-node-{n}"},
                                 capture_output=True, text=True, check=False)
            need(run.stdout.strip() == str(base + step * n),
                 f"wave-node-{n}: its script binds media port {run.stdout.strip()!r}{run.stderr}, want {base + step * n}")
            media = by.get(("Service", f"wave-node-{n}-media"))
            if not need(media, f"wave-node-{n}: no media Service"):
                continue
            ms = media["spec"]
            need(ms["type"] == "NodePort", f"wave-node-{n}-media: not a NodePort")
            need(ms.get("externalTrafficPolicy") == "Local", f"wave-node-{n}-media: traffic policy not Local")
            need(ms["selector"] == {"statefulset.kubernetes.io/pod-name": f"wave-node-{n}"},
                 f"wave-node-{n}-media: selects more than its pod")
            want = [base + step * n + w for w in range(workers)]
            got = [(p["port"], p["targetPort"], p["nodePort"], p["protocol"]) for p in ms["ports"]]
            need(got == [(p, p, p, "UDP") for p in want], f"wave-node-{n}-media: ports {got}, want {want} (UDP, 1:1)")
            need(("Service", f"wave-node-{n}") in by, f"wave-node-{n}: no HTTP Service for its Ingress host")
    ingress = by.get(("Ingress", "wave"))
    if need(ingress, "no Ingress"):
        need(ingress["spec"].get("tls"), "Ingress: no TLS")
        backends = {p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
        for n in range(s["replicas"]):
            need(f"wave-node-{n}" in backends, f"Ingress: no host for wave-node-{n} (its SFU_ADVERTISE_URL)")
    need(("Deployment", "turn") in by and ("Service", "turn") in by, "no TURN Deployment and Service")


def check_compose(path):
    compose = yaml.safe_load(Path(path).read_text())
    services = compose.get("services", {})
    required = ["nats-1", "nats-2", "nats-3", "node-1", "node-2", "node-3", "turn", "hls-cache"]
    for name in required:
        need(name in services, f"compose: no service {name}")
    if problems:
        return
    conf = (Path(path).parent / "nats.conf").read_text()
    need("jetstream" in conf, "compose: NATS without JetStream")
    need(sorted(re.findall(r"nats://(nats-\d):6222", conf)) == ["nats-1", "nats-2", "nats-3"],
         "compose: NATS routes do not name the three servers")
    seen_ports = set()
    for n in (1, 2, 3):
        svc = services[f"node-{n}"]
        env = svc["environment"]
        need(env.get("SFU_NATS", "").count("nats://") == 3, f"node-{n}: SFU_NATS does not list 3 servers")
        need("WAVE_PUBLIC_IP" in str(env.get("SFU_PUBLIC_IP")), f"node-{n}: the public IP is not WAVE_PUBLIC_IP")
        need(env.get("SFU_NODE_ID") == f"node-{n}", f"node-{n}: SFU_NODE_ID")
        first, workers = int(env["SFU_MEDIA_PORT"]), int(env["SFU_WORKERS"])
        want = f"{first}-{first + workers - 1}:{first}-{first + workers - 1}/udp"
        need(want in svc.get("ports", []), f"node-{n}: media ports not published 1:1 as {want}")
        need(not seen_ports & set(range(first, first + workers)), f"node-{n}: media ports overlap another node's")
        seen_ports |= set(range(first, first + workers))
        need(svc.get("stop_grace_period") == "40s", f"node-{n}: stop_grace_period does not cover the drain")
    turn = services["turn"]
    need({"3478:3478/udp", "3478:3478/tcp"} <= set(turn.get("ports", [])), "turn: 3478 udp and tcp not published")
    nginx = (Path(path).parent / "nginx.conf").read_text()
    hls = nginx[nginx.index("location /hls/"):]
    hls = hls[: hls.index("}")]
    need("proxy_cache hls;" in hls, "hls-cache: /hls/ not cached")
    need("$request_uri" in hls, "hls-cache: the cache key drops the _HLS_ query parameters")
    need("proxy_cache_lock on;" in hls, "hls-cache: concurrent blocking reloads are not collapsed")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--compose"]:
        check_compose(args[1])
    else:
        check_kubernetes(args)
    for p in problems:
        print(f"  {p}")
    sys.exit(1 if problems else 0)
