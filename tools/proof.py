#!/usr/bin/env python3
"""The proof harness of issue 19: a Kaa cluster under an open-loop load while a seeded schedule
kills, pauses, adds, removes and upgrades nodes (and, in network namespaces, partitions them and
makes their network lossy), then a check of every call the client made and of the cluster's
state, Jepsen-style. Python 3 standard library only. docs/proof.md says what it checks.

Run it through tools/proof.sh; `tools/proof.sh --help` lists the options.
"""

import argparse
import bisect
import collections
import http.client
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN_MODEL = os.path.join(REPO, "snapshots", "iris-logreg", "model.onnx")
REPLICATION = 2
DEADLINE_MS = 4000          # Kaa-Deadline-Ms of every call
CLIENT_TIMEOUT = 10.0       # the client gives up on a call after this
LEAVE_TIMEOUT = 60          # the node's default leave_timeout, seconds
SHUTDOWN_GRACE = 10         # the node's default shutdown_grace, seconds


class Abort(Exception):
    """The harness cannot go on (not a verdict on the cluster)."""


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the harness."""


def fmt_t(t, t0):
    return f"+{t - t0:7.1f}s"


# ---------------------------------------------------------------------------------------------
# HTTP


def http_call(host, port, method, path, body=None, headers=None, timeout=10.0):
    """One request on a fresh connection: (status, headers dict lower-cased, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def http_json(host, port, method, path, payload=None, timeout=30.0):
    body = None if payload is None else json.dumps(payload).encode()
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    status, _, data = http_call(host, port, method, path, body, hdrs, timeout)
    if status != 200:
        raise Abort(f"{method} http://{host}:{port}{path} answered {status}: {data[:300]!r}")
    return json.loads(data)


def metrics(node, timeout=5.0):
    status, _, data = http_call(node.host, node.http_port, "GET", "/metrics", timeout=timeout)
    if status != 200:
        raise OSError(f"/metrics answered {status}")
    out = {}
    for line in data.decode(errors="replace").splitlines():
        if line and not line.startswith("#"):
            parts = line.split()
            if len(parts) == 2 and "{" not in parts[0]:
                try:
                    out[parts[0]] = float(parts[1])
                except ValueError:
                    pass
    return out


# ---------------------------------------------------------------------------------------------
# Nodes


class Proc:
    """One process of a node: started with a binary, ended with an exit status."""

    def __init__(self, popen, binary, started):
        self.popen = popen
        self.pid = popen.pid
        self.binary = binary
        self.started = started
        self.expect = None      # None: must stay up; "kill": SIGKILLed; "term": SIGTERMed
        self.rc = None
        self.ended = None


class Node:
    def __init__(self, idx, name, host, http_port, peer_port, data_dir, log_path, netns=None):
        self.idx, self.name = idx, name
        self.host, self.http_port, self.peer_port = host, http_port, peer_port
        self.data_dir, self.log_path, self.netns = data_dir, log_path, netns
        self.procs = []
        self.state = "down"     # down, up, paused, stopping; the client sends only to "up"
        self.ready_at = 0.0     # when it last became ready
        self.binary = None

    @property
    def proc(self):
        return self.procs[-1] if self.procs else None

    @property
    def alive(self):
        p = self.proc
        return p is not None and p.rc is None

    @property
    def peer_addr(self):
        return f"{self.host}:{self.peer_port}"


# ---------------------------------------------------------------------------------------------
# The harness


class Harness:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.t0 = time.time()
        self.lock = threading.RLock()
        self.nodes = []
        self.faults = []            # dicts: kind, nodes, start, end, detail
        self.disturb = []           # (node name, kind, start, end): what may cut a client's call
        self.violations = []        # (check, text)
        self.notes = []
        self.upgrade_windows = []
        self.zero_events = []
        self.zero_candidates = 0
        self.samples = 0
        self.max_under = 0
        self.stop_sampler = threading.Event()
        self.calls = []
        self.netns_names = []
        self.bridge = None
        self.nft_applied = []
        self.netem_applied = []
        self.work = tempfile.mkdtemp(prefix="kaa-proof.", dir="/tmp")
        self.logf = open(os.path.join(self.work, "proof.log"), "a")
        self.kaa = args.kaa
        self.kaa_next = None
        self.total = 0
        self.keys = set()
        self.mode = "loopback"
        self.netem_ok = False
        self.load = None
        self.timing = {}

    # -- output

    def log(self, msg):
        line = f"[proof {fmt_t(time.time(), self.t0)}] {msg}"
        with self.lock:
            print(line, flush=True)
            self.logf.write(line + "\n")
            self.logf.flush()

    def violate(self, check, text):
        with self.lock:
            self.violations.append((check, text))
        self.log(f"VIOLATION ({check}): {text}")

    # -- processes

    def node_argv(self, node, binary):
        others = [n.peer_addr for n in self.nodes if n is not node and n.procs]
        argv = [binary, "node", "--data-dir", node.data_dir,
                "--http-addr", f"{node.host}:{node.http_port}",
                "--peer-addr", f"{node.host}:{node.peer_port}",
                "--node-name", node.name,
                "--cluster-key-file", os.path.join(self.work, "cluster.key"),
                "--replication", str(REPLICATION),
                "--repair-grace", f"{self.args.repair_grace}s",
                "--placement-settle", "2s",
                "--log-level", "notice"]
        if others:
            argv += ["--seeds", ",".join(others)]
        if node.netns:
            argv = ["ip", "netns", "exec", node.netns] + argv
        return argv

    def start(self, node, binary=None, wait=True, timeout=120.0):
        binary = binary or node.binary or self.kaa
        node.binary = binary
        argv = self.node_argv(node, binary)
        with open(node.log_path, "a") as f:
            f.write(f"===== proof: start {node.name} with {binary} at {fmt_t(time.time(), self.t0)}\n")
        log = open(node.log_path, "a")
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
        log.close()
        with self.lock:
            node.procs.append(Proc(popen, binary, time.time()))
            node.state = "starting"
        if wait:
            self.wait_ready(node, timeout)
            if self.load is not None and not self.load.stop.is_set():
                self.load.first_calls(node)

    def wait_ready(self, node, timeout):
        until = time.time() + timeout
        while time.time() < until:
            if not node.alive:
                raise Abort(f"{node.name} exited (status {node.proc.rc}) before it was ready; "
                            f"see {node.log_path}")
            try:
                status, _, _ = http_call(node.host, node.http_port, "GET", "/v2/health/ready", timeout=2)
                if status == 200:
                    with self.lock:
                        node.state = "up"
                        node.ready_at = time.time()
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise Abort(f"{node.name} was not ready within {timeout:.0f} s; see {node.log_path}")

    def reap(self):
        """Records the exit of every node process that ended; an unplanned exit is a violation."""
        with self.lock:
            for node in self.nodes:
                for p in node.procs:
                    if p.rc is None:
                        rc = p.popen.poll()
                        if rc is not None:
                            p.rc, p.ended = rc, time.time()
                            if p.expect is None:
                                node.state = "down"
                                self.violate(4, f"{node.name} (pid {p.pid}) exited with status {rc} "
                                             f"at {fmt_t(p.ended, self.t0)} without the schedule stopping it; "
                                             f"log tail: {tail(node.log_path)}")

    def signal(self, node, sig, expect=None):
        p = node.proc
        if expect:
            p.expect = expect
        os.kill(p.pid, sig)

    def up_nodes(self):
        with self.lock:
            return [n for n in self.nodes if n.state == "up"]

    # -- network namespaces

    def ns_setup(self, count):
        tag = os.path.basename(self.work).split(".")[-1].lower()[:6]
        self.bridge = f"kpb{tag}"
        subnet = 10 + random.SystemRandom().randrange(200)
        self.ns_prefix = f"10.{subnet}.77"
        sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        sh(["ip", "addr", "add", f"{self.ns_prefix}.254/24", "dev", self.bridge])
        sh(["ip", "link", "set", self.bridge, "up"])
        names = []
        for i in range(1, count + 1):
            ns = f"kaa-proof-{tag}-n{i}"
            sh(["ip", "netns", "add", ns])
            self.netns_names.append(ns)
            host_if, ns_if = f"kp{tag}{i}", f"kq{tag}{i}"
            sh(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if])
            sh(["ip", "link", "set", ns_if, "netns", ns])
            sh(["ip", "link", "set", host_if, "master", self.bridge])
            sh(["ip", "link", "set", host_if, "up"])
            sh(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
            sh(["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "name", "eth0"])
            sh(["ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.ns_prefix}.{i}/24", "dev", "eth0"])
            sh(["ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up"])
            names.append((ns, f"{self.ns_prefix}.{i}"))
        return names

    def ns_teardown(self):
        for ns in self.netns_names:
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def partition(self, side_a, side_b):
        for a_nodes, b_nodes in ((side_a, side_b), (side_b, side_a)):
            for n in a_nodes:
                drops = ", ".join(m.host for m in b_nodes)
                rules = (f"table inet kaaproof {{ chain in {{ type filter hook input priority 0; "
                         f"ip saddr {{ {drops} }} drop; }}; chain out {{ type filter hook output priority 0; "
                         f"ip daddr {{ {drops} }} drop; }}; }}")
                sh(["ip", "netns", "exec", n.netns, "nft", rules])
                self.nft_applied.append(n.netns)

    def heal_partition(self):
        for ns in self.nft_applied:
            subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "kaaproof"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.nft_applied = []

    def netem(self, nodes, spec):
        for n in nodes:
            sh(["ip", "netns", "exec", n.netns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem"] + spec.split())
            self.netem_applied.append(n.netns)

    def heal_netem(self):
        for ns in self.netem_applied:
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.netem_applied = []

    # -- cleanup

    def cleanup(self):
        self.stop_sampler.set()
        self.heal_partition()
        self.heal_netem()
        for node in self.nodes:
            p = node.proc
            if p and p.popen.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        until = time.time() + 30
        for node in self.nodes:
            p = node.proc
            if p:
                try:
                    p.popen.wait(max(0.1, until - time.time()))
                except subprocess.TimeoutExpired:
                    try:
                        os.kill(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.popen.wait()
        self.ns_teardown()


def sh(argv):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise Abort(f"`{' '.join(argv)}` failed ({r.returncode}): {r.stdout.strip()[:400]}")
    return r.stdout


def tail(path, lines=5):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(l.rstrip() for l in f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def free_ports(count):
    """A base port with `count` free ports after it on 127.0.0.1."""
    sysrng = random.SystemRandom()
    for _ in range(200):
        base = sysrng.randrange(20000, 60000 - count)
        ok = True
        for p in range(base, base + count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", p))
                u.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            finally:
                s.close()
                u.close()
            if not ok:
                break
        if ok:
            return base
    raise Abort("found no free range of ports on 127.0.0.1")


# ---------------------------------------------------------------------------------------------
# Snapshots


def build_snapshots(h):
    a = h.args
    out = os.path.join(h.work, "archives")
    os.makedirs(out)
    t = time.time()
    script = ('n=$(printf "m%05d" "$1"); "$0" snapshot build --model "$2" --name "$n" --version 1 '
              '--created-at 2026-01-01T00:00:00Z --out "$3/$n.kaa" >/dev/null')
    seq = "\n".join(str(i) for i in range(a.models)) + "\n"
    r = subprocess.run(["xargs", "-P", str((os.cpu_count() or 2) * 4), "-I{}", "sh", "-c", script,
                        h.kaa, "{}", GEN_MODEL, out], input=seq, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise Abort(f"kaa snapshot build failed: {r.stdout.strip()[:600]}")
    samples = []
    for name in sorted(os.listdir(os.path.join(REPO, "snapshots"))):
        d = os.path.join(REPO, "snapshots", name)
        if not os.path.isfile(os.path.join(d, "model.onnx")):
            continue
        argv = [h.kaa, "snapshot", "build", "--model", os.path.join(d, "model.onnx"), "--name", name,
                "--version", "1", "--created-at", "2026-01-01T00:00:00Z", "--label", "sample=true",
                "--out", os.path.join(out, f"{name}.kaa")]
        if os.path.isfile(os.path.join(d, "pipeline.yaml")):
            argv += ["--pipeline", os.path.join(d, "pipeline.yaml")]
        sh(argv)
        samples.append(name)
    files = sorted(f for f in os.listdir(out) if f.endswith(".kaa"))
    if len(files) != a.models + len(samples):
        raise Abort(f"built {len(files)} archives, expected {a.models + len(samples)}")
    h.total = len(files)
    h.keys = {f[:-4] + "@1" for f in files}
    h.timing["build"] = time.time() - t
    h.log(f"built {len(files)} archives ({a.models} generated, samples: {', '.join(samples)}) in {h.timing['build']:.1f} s")
    return out, files, samples


def publish(h, out, files):
    """Splits the archives into one group per node (seeded) and publishes each group to its node."""
    shuffled = list(files)
    h.rng.shuffle(shuffled)
    nodes = h.up_nodes()
    procs = []
    t = time.time()
    for i, node in enumerate(nodes):
        d = os.path.join(h.work, "publish", node.name)
        os.makedirs(d)
        for f in shuffled[i::len(nodes)]:
            os.link(os.path.join(out, f), os.path.join(d, f))
        logp = os.path.join(h.work, f"publish-{node.name}.log")
        lf = open(logp, "w")
        procs.append((node, logp, subprocess.Popen(
            [h.kaa, "publish", d, "--parallel", "4", "--timeout", "300",
             "--to", f"http://{node.host}:{node.http_port}"], stdout=lf, stderr=subprocess.STDOUT)))
        lf.close()
    for node, logp, p in procs:
        if p.wait() != 0:
            raise Abort(f"kaa publish to {node.name} failed: {tail(logp, 10)}")
    h.timing["publish"] = time.time() - t
    h.log(f"published {len(files)} snapshots to {len(nodes)} nodes in {h.timing['publish']:.1f} s")


def at_rest(h, nodes):
    """Whether every node in `nodes` counts every snapshot, none under-replicated, none fetching."""
    for n in nodes:
        try:
            m = metrics(n)
        except OSError:
            return False
        if (m.get("kaa_placement_snapshots") != h.total or m.get("kaa_snapshots_under_replicated") != 0
                or m.get("kaa_copies_fetching") != 0):
            return False
    return True


def wait_at_rest(h, timeout, what):
    t = time.time()
    while time.time() - t < timeout:
        h.reap()
        if at_rest(h, h.up_nodes()):
            return time.time() - t
        time.sleep(0.5)
    return None


# ---------------------------------------------------------------------------------------------
# The load


class Load:
    """An open-loop client: calls at Poisson times (rate a second), Zipf over the models, each to
    a random node the schedule has up, each on a fresh connection, every one recorded."""

    def __init__(self, h, bodies, names, rate, seed):
        self.h, self.bodies, self.rate = h, bodies, rate
        rng = random.Random(seed)
        order = list(names)
        rng.shuffle(order)                      # which models are hot: seeded
        self.order = order
        weights = [1.0 / (k ** 1.1) for k in range(1, len(order) + 1)]
        total = sum(weights)
        acc, self.cdf = 0.0, []
        for w in weights:
            acc += w / total
            self.cdf.append(acc)
        self.q = queue.Queue()
        self.stop = threading.Event()
        self.records = []
        self.rlock = threading.Lock()
        self.threads = []
        self.seed = seed
        self.lag_max = 0.0
        self.first_seq = 1 << 40
        self.first_rng = random.Random(seed + 2)

    def first_calls(self, node, count=20):
        """Sends `count` calls (models drawn uniformly, seeded) to a node the moment it is ready
        again after a start, so the checks see what a node answers first on every start (most of
        these models it does not hold)."""
        for _ in range(count):
            with self.rlock:
                self.first_seq += 1
                seq = self.first_seq
                model = self.first_rng.choice(self.order)
            rec = {"seq": seq, "id": f"proof-first-{seq - (1 << 40)}", "model": model, "at": time.time(),
                   "node": node.name, "pid": node.proc.pid, "sent": time.time(), "first": True}
            self.call(node, model, rec)
            rec["end"] = time.time()
            with self.rlock:
                self.records.append(rec)

    def pick_model(self, rng):
        i = bisect.bisect_left(self.cdf, rng.random())
        return self.order[min(i, len(self.order) - 1)]

    def start(self, workers=48):
        t = threading.Thread(target=self.dispatch, daemon=True)
        t.start()
        self.threads.append(t)
        for w in range(workers):
            t = threading.Thread(target=self.work, args=(w,), daemon=True)
            t.start()
            self.threads.append(t)

    def dispatch(self):
        rng = random.Random(self.seed + 1)
        seq = 0
        at = time.time()
        while not self.stop.is_set():
            at += rng.expovariate(self.rate)
            delay = at - time.time()
            if delay > 0:
                time.sleep(delay)
            seq += 1
            self.q.put((seq, at, self.pick_model(rng)))
        for _ in range(len(self.threads)):
            self.q.put(None)

    def work(self, w):
        rng = random.Random(self.seed * 1000 + w)
        while True:
            item = self.q.get()
            if item is None:
                return
            seq, at, model = item
            nodes = self.h.up_nodes()
            rec = {"seq": seq, "id": f"proof-{seq}", "model": model, "at": at}
            if not nodes:
                rec.update(node=None, sent=time.time(), end=time.time(), status=None, error="no node up")
                with self.rlock:
                    self.records.append(rec)
                continue
            node = rng.choice(nodes)
            rec["node"] = node.name
            rec["pid"] = node.proc.pid
            rec["sent"] = time.time()
            self.lag_max = max(self.lag_max, rec["sent"] - at)
            self.call(node, model, rec)
            rec["end"] = time.time()
            with self.rlock:
                self.records.append(rec)

    def call(self, node, model, rec):
        conn = http.client.HTTPConnection(node.host, node.http_port, timeout=CLIENT_TIMEOUT)
        phase = "connect"
        try:
            conn.connect()
            phase = "send"
            conn.request("POST", f"/v2/models/{model}/infer", body=self.bodies[model],
                         headers={"Content-Type": "application/json", "Kaa-Request-Id": rec["id"],
                                  "Kaa-Deadline-Ms": str(DEADLINE_MS)})
            phase = "answer"
            r = conn.getresponse()
            data = r.read()
            rec["status"] = r.status
            rec["served_by"] = r.getheader("Kaa-Served-By")
            dl_header = r.getheader("Kaa-Dead-Letter")
            if r.status != 200:
                rec["body"] = data[:300].decode(errors="replace")
                try:
                    dl_body = json.loads(data).get("dead_letter")
                except (ValueError, AttributeError):
                    dl_body = None
                if dl_header or dl_body:
                    rec["dead_letter"] = dl_header or dl_body
                    if dl_header and dl_body and dl_header != dl_body:
                        rec["dl_mismatch"] = f"header {dl_header}, body {dl_body}"
            elif dl_header:
                rec["dl_mismatch"] = f"200 with Kaa-Dead-Letter {dl_header}"
        except ConnectionRefusedError:
            rec["status"], rec["error"] = None, f"refused ({phase})"
        except socket.timeout:
            rec["status"], rec["error"] = None, f"timeout ({phase})"
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            rec["status"], rec["error"] = None, f"{type(e).__name__} ({phase})"
        finally:
            conn.close()


def request_bodies(h, names, samples):
    """The body of a call to every model: the generated ones take iris-logreg's raw input, the
    samples their first example row shaped by their metadata."""
    node = h.up_nodes()[0]
    raw = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                  "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
    bodies = {n: raw for n in names}
    for s in samples:
        meta = http_json(node.host, node.http_port, "GET", f"/v2/models/{s}")
        with open(os.path.join(REPO, "snapshots", s, "example.jsonl")) as f:
            row = json.loads(f.readline())
        inputs = []
        for inp in meta["inputs"]:
            v = row[inp["name"]]
            data = v if isinstance(v, list) else [v]
            shape = [1] + ([len(data)] if len(inp.get("shape", [])) > 1 else [])
            inputs.append({"name": inp["name"], "shape": shape, "datatype": inp["datatype"], "data": data})
        bodies[s] = json.dumps({"inputs": inputs}).encode()
    # Every sample, and a generated model, must answer before the load starts.
    for s in list(samples) + [names[0]]:
        n = h.up_nodes()[h.rng.randrange(len(h.up_nodes()))]
        status, _, data = http_call(n.host, n.http_port, "POST", f"/v2/models/{s}/infer", bodies[s],
                                    {"Content-Type": "application/json"}, timeout=30)
        if status != 200:
            raise Abort(f"the first call to {s} on {n.name} answered {status}: {data[:300]!r}")
    return bodies


# ---------------------------------------------------------------------------------------------
# Placement sampling (check 3: never a snapshot at zero ready copies)


def zero_ready(h, node):
    """Snapshots no live node has ready, as `node`'s placement table says (None: no answer)."""
    try:
        p = http_json(node.host, node.http_port, "GET", "/kaa/v1/placement", timeout=10)
    except (OSError, Abort, ValueError):
        return None, None
    ready = set()
    for s in p.get("snapshots", []):
        if any(c.get("state") == "ready" for c in s.get("holders", []) + s.get("others", [])):
            ready.add(f"{s['name']}@{s['version']}")
    return h.keys - ready, p.get("under_replicated", 0)


def sampler(h):
    i = 0
    while not h.stop_sampler.wait(1.0):
        with h.lock:
            eligible = [n for n in h.nodes if n.state == "up" and time.time() - n.ready_at >= 10]
        if not eligible:
            continue
        node = eligible[i % len(eligible)]
        i += 1
        zero, under = zero_ready(h, node)
        if zero is None:
            continue
        h.samples += 1
        h.max_under = max(h.max_under, under or 0)
        if not zero:
            continue
        # A candidate: every other eligible node must also see no ready copy of it.
        h.zero_candidates += 1
        seen_by = [node.name]
        for other in eligible:
            if other is node or not zero:
                continue
            z, _ = zero_ready(h, other)
            if z is not None:
                zero &= z
                seen_by.append(other.name)
        if zero:
            t = time.time()
            h.zero_events.append((t, sorted(zero)[:10], len(zero), seen_by))
            h.violate(3, f"at {fmt_t(t, h.t0)} {len(zero)} snapshot(s) had no ready copy on any live node "
                         f"(as {', '.join(seen_by)} saw it): {', '.join(sorted(zero)[:10])}")


# ---------------------------------------------------------------------------------------------
# Faults


def fault_record(h, kind, nodes, start, detail=""):
    rec = {"kind": kind, "nodes": [n.name for n in nodes], "start": start, "end": time.time(), "detail": detail}
    h.faults.append(rec)
    h.log(f"fault done: {kind} {','.join(rec['nodes'])} {detail} "
          f"({fmt_t(start, h.t0)} .. {fmt_t(rec['end'], h.t0)})")
    return rec


def fault_kill(h):
    node = h.rng.choice(h.up_nodes())
    down = round(h.rng.uniform(1.0, h.args.repair_grace + 4.0), 1)
    h.log(f"fault: SIGKILL {node.name} (pid {node.proc.pid}), restart after {down} s on the same data")
    start = time.time()
    with h.lock:
        node.state = "down"
        h.signal(node, signal.SIGKILL, expect="kill")
    node.proc.popen.wait()
    h.reap()
    time.sleep(down)
    h.start(node)
    h.disturb.append((node.name, "killed", start, time.time()))
    return fault_record(h, "kill", [node], start, f"down {down} s")


def fault_pause(h):
    node = h.rng.choice(h.up_nodes())
    pause = round(h.rng.uniform(1.5, 3.0), 1)
    h.log(f"fault: SIGSTOP {node.name} (pid {node.proc.pid}) for {pause} s")
    start = time.time()
    with h.lock:
        node.state = "paused"
        os.kill(node.proc.pid, signal.SIGSTOP)
    time.sleep(pause)
    with h.lock:
        os.kill(node.proc.pid, signal.SIGCONT)
        node.state = "up"
    h.disturb.append((node.name, "paused", start, time.time()))
    return fault_record(h, "pause", [node], start, f"{pause} s")


def graceful_stop(h, node, kind):
    with h.lock:
        node.state = "stopping"
        h.signal(node, signal.SIGTERM, expect="term")
    bound = LEAVE_TIMEOUT + SHUTDOWN_GRACE + 30
    try:
        node.proc.popen.wait(bound)
    except subprocess.TimeoutExpired:
        h.violate(4, f"{node.name} (pid {node.proc.pid}) did not stop within {bound} s of SIGTERM ({kind}); "
                     f"SIGKILLed; log tail: {tail(node.log_path)}")
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.popen.wait()
    h.reap()
    rc = node.proc.rc
    if rc != 0:
        h.violate(4, f"{node.name} (pid {node.proc.pid}) exited with status {rc} after SIGTERM ({kind}); "
                     f"log tail: {tail(node.log_path)}")
    with h.lock:
        node.state = "down"


def fault_leave(h):
    node = h.rng.choice(h.up_nodes())
    down = round(h.rng.uniform(1.0, 5.0), 1)
    h.log(f"fault: {node.name} leaves gracefully (SIGTERM), started again {down} s after it exits")
    start = time.time()
    graceful_stop(h, node, "leave")
    stopped = time.time() - start
    time.sleep(down)
    h.start(node)
    h.disturb.append((node.name, "left", start, time.time()))
    return fault_record(h, "leave", [node], start, f"handover and stop {stopped:.1f} s, down {down} s")


def fault_join(h):
    node = next(n for n in h.nodes if not n.procs)
    h.log(f"fault: {node.name} joins")
    start = time.time()
    h.start(node)
    return fault_record(h, "join", [node], start)


def fault_upgrade(h):
    if h.kaa_next is None:
        h.kaa_next = os.path.join(h.work, "kaa-next")
        shutil.copy2(h.kaa, h.kaa_next)
    order = list(h.up_nodes())
    h.log(f"fault: rolling upgrade of {', '.join(n.name for n in order)} to {h.kaa_next}")
    start = time.time()
    steps = []
    for node in order:
        t = time.time()
        graceful_stop(h, node, "upgrade")
        h.start(node, binary=h.kaa_next)
        h.disturb.append((node.name, "upgraded", t, time.time()))
        rest = wait_at_rest(h, h.args.repair_bound, "upgrade step")
        steps.append(f"{node.name} {time.time() - t:.1f} s")
        if rest is None:
            h.violate(3, f"after {node.name} was upgraded the cluster was not back at rest within {h.args.repair_bound} s")
    end = time.time()
    h.upgrade_windows.append((start, end))
    return fault_record(h, "upgrade", order, start, "; ".join(steps))


def hold_network_fault(h, kind, nodes, apply, heal, detail):
    """Applies a network fault to `nodes`, holds it a seeded 6-10 s, heals it, and records it."""
    hold = round(h.rng.uniform(6.0, 10.0), 1)
    h.log(f"fault: {kind} {detail} for {hold} s")
    start = time.time()
    apply()
    time.sleep(hold)
    heal()
    for n in nodes:
        h.disturb.append((n.name, kind, start, time.time()))
    return fault_record(h, kind, nodes, start, f"{detail}, {hold} s")


def fault_partition(h):
    nodes = list(h.up_nodes())
    h.rng.shuffle(nodes)
    k = len(nodes) // 2
    a, b = nodes[:k], nodes[k:]
    side = lambda group: "{" + ", ".join(n.name for n in group) + "}"
    return hold_network_fault(h, "partition", nodes, lambda: h.partition(a, b), h.heal_partition,
                              f"{side(a)} | {side(b)}")


def fault_netem(h):
    nodes = list(h.up_nodes())
    spec = "delay 20ms 10ms loss 5%"
    return hold_network_fault(h, "netem", nodes, lambda: h.netem(nodes, spec), h.heal_netem, f"`{spec}` on every node")


FAULTS = {"kill": fault_kill, "pause": fault_pause, "leave": fault_leave, "join": fault_join,
          "upgrade": fault_upgrade, "partition": fault_partition, "netem": fault_netem}


def schedule(h):
    a = h.args
    if a.faults:
        kinds = [k.strip() for k in a.faults.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in FAULTS]
        if unknown:
            raise Abort(f"--faults: unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
        if h.mode != "namespaces" and {"partition", "netem"} & set(kinds):
            raise Abort("--faults: partition and netem need namespaces mode (root, `ip netns`, nft)")
        if "netem" in kinds and not h.netem_ok:
            raise Abort("--faults: netem needs the kernel's sch_netem, which this machine lacks")
        return kinds
    kinds = ["kill", "pause"]
    if a.short:
        if h.mode == "namespaces":
            kinds.append("partition")
    else:
        kinds += ["join", "leave", "upgrade"]
        if h.mode == "namespaces":
            kinds += ["partition"] + (["netem"] if h.netem_ok else [])
    h.rng.shuffle(kinds)
    return kinds


# ---------------------------------------------------------------------------------------------
# Checks


def all_dead_letters(h, node):
    out, after = [], None
    while True:
        path = "/kaa/v1/deadletters?limit=1000" + (f"&after={after}" if after else "")
        page = http_json(node.host, node.http_port, "GET", path, timeout=60)
        if page.get("unreachable"):
            h.violate(1, f"listing dead letters from {node.name}: unreachable peers {page['unreachable']}")
        out += page.get("dead_letters", [])
        after = page.get("next")
        if not after:
            return out


def classify(h, rec):
    """The class of a call that got no HTTP answer, and whether the schedule explains it."""
    for name, kind, start, end in h.disturb:
        if name == rec["node"] and start - 0.5 <= rec["end"] and rec["sent"] <= end + 0.5:
            if kind in ("killed", "paused", "netem"):
                return f"{rec['error']}: entry node {kind}", True
            return f"{rec['error']}: entry node {kind}", False
    return f"{rec['error']}: no fault on the entry node", False


def since_start(h, rec):
    """`, N s after NODE was started again` when the call went to a node the schedule had restarted."""
    if rec.get("first"):
        return ", one of the first calls after it was ready again"
    ends = [end for name, kind, start, end in h.disturb if name == rec["node"] and end <= rec["sent"]]
    return f", {rec['sent'] - max(ends):.1f} s after it was back" if ends else ""


def check_calls(h, records, letters):
    c = {"calls": len(records), "answered": 0, "dead_lettered": 0, "refused_429": 0}
    failed = {}
    named = {}
    in_upgrade = lambda t: any(s <= t <= e for s, e in h.upgrade_windows)
    upgrade = {"calls": 0, "answered": 0, "dead_lettered": 0, "failed": 0}
    by_id = {r["id"]: r for r in records}
    for r in records:
        up = in_upgrade(r.get("sent", r["at"]))
        if up:
            upgrade["calls"] += 1
        if r.get("dl_mismatch"):
            h.violate(1, f"call {r['id']} to {r['node']}: {r['dl_mismatch']}")
        st = r.get("status")
        if st == 200:
            c["answered"] += 1
            if up:
                upgrade["answered"] += 1
        elif st in (503, 504) and r.get("dead_letter"):
            c["dead_lettered"] += 1
            named.setdefault(r["dead_letter"], []).append(r["id"])
            if up:
                upgrade["dead_lettered"] += 1
        elif st == 429:
            c["refused_429"] += 1
            if up:
                upgrade["failed"] += 1
                h.violate(2, f"call {r['id']} ({r['model']} at {r['node']}) got 429 during the rolling upgrade")
        elif st is not None:
            cls = f"HTTP {st} without a dead letter"
            failed[cls] = failed.get(cls, 0) + 1
            h.violate(1, f"call {r['id']} ({r['model']} at {r['node']}, {fmt_t(r['sent'], h.t0)}{since_start(h, r)}) "
                         f"got {st} without a dead letter: {r.get('body', '')[:160]}")
            if up:
                upgrade["failed"] += 1
        else:
            cls, explained = classify(h, r) if r.get("node") else ("no node up", False)
            failed[cls] = failed.get(cls, 0) + 1
            if not explained:
                h.violate(1, f"call {r['id']} ({r['model']} at {r['node']}, sent {fmt_t(r['sent'], h.t0)}, "
                             f"ended {fmt_t(r['end'], h.t0)}) failed without a dead letter: {cls}")
            if up:
                upgrade["failed"] += 1
                h.violate(2, f"call {r['id']} failed during the rolling upgrade without a dead letter: {cls}")
    if upgrade["dead_lettered"]:
        h.violate(2, f"{upgrade['dead_lettered']} call(s) were dead-lettered during the rolling upgrade, "
                     f"where a holder always stayed up")
    # Dead letters against the calls.
    ids = [d["id"] for d in letters]
    dup = {i for i, n in collections.Counter(ids).items() if n > 1}
    for i in dup:
        h.violate(1, f"dead letter {i} is listed more than once")
    listed = {d["id"]: d for d in letters}
    for dl, calls in named.items():
        if len(calls) > 1:
            h.violate(1, f"dead letter {dl} was named to {len(calls)} calls: {calls[:5]}")
        if dl not in listed:
            h.violate(1, f"dead letter {dl} named to call {calls[0]} is not in the cluster's list")
    per_request = {}
    unnamed = 0
    for d in letters:
        rid = d.get("request_id", "")
        per_request.setdefault(rid, []).append(d["id"])
        r = by_id.get(rid)
        if r is None:
            if not rid.startswith("replay-"):
                h.notes.append(f"dead letter {d['id']} has request id `{rid}`, no call of this run")
            continue
        if r.get("status") == 200:
            h.violate(1, f"dead letter {d['id']} ({d.get('reason')}) is for call {rid}, which the client saw answered 200")
        elif r.get("dead_letter") != d["id"]:
            unnamed += 1
            if r.get("dead_letter"):
                h.violate(1, f"call {rid} was told dead letter {r['dead_letter']} but dead letter {d['id']} is also for it")
    for rid, dls in per_request.items():
        if rid in by_id and len(dls) > 1:
            h.violate(1, f"call {rid} has {len(dls)} dead letters: {dls}")
    c["dead_letters_listed"] = len(letters)
    c["dead_letters_no_client_saw"] = unnamed
    return c, failed, upgrade


def replay_all(h, node, letters):
    """Replays every dead letter by id, then again: each must run once and only once."""
    ids = [d["id"] for d in letters if d.get("state") == "dead"]
    res = {"replayed": 0, "ran_now": 0, "statuses": {}, "second_ran": 0}
    if not ids:
        return res
    before = sum(metrics(n).get("kaa_dead_letter_replays_total", 0) for n in h.up_nodes())
    first = {}
    for i in range(0, len(ids), 1000):
        chunk = ids[i:i + 1000]
        out = http_json(node.host, node.http_port, "POST", "/kaa/v1/deadletters/replay",
                        {"ids": chunk, "rate": 1000}, timeout=600)
        for item in out.get("results", []):
            first[item["id"]] = item
    for i in ids:
        item = first.get(i)
        if item is None:
            h.violate(5, f"replaying dead letter {i}: no result")
            continue
        res["replayed"] += 1
        st = item.get("status")
        res["statuses"][st] = res["statuses"].get(st, 0) + 1
        if item.get("ran_now"):
            res["ran_now"] += 1
        else:
            h.violate(5, f"dead letter {i} did not run on its first replay: {item}")
    # Again, from another node: each answers with its kept result and runs nothing.
    other = next((n for n in h.up_nodes() if n is not node), node)
    for i in range(0, len(ids), 1000):
        chunk = ids[i:i + 1000]
        out = http_json(other.host, other.http_port, "POST", "/kaa/v1/deadletters/replay",
                        {"ids": chunk, "rate": 1000}, timeout=600)
        for item in out.get("results", []):
            if item.get("ran_now"):
                res["second_ran"] += 1
                h.violate(5, f"dead letter {item['id']} ran again on a second replay from {other.name}")
            elif first.get(item["id"], {}).get("status") != item.get("status"):
                h.violate(5, f"dead letter {item['id']}: the second replay answered {item.get('status')}, "
                             f"the first {first.get(item['id'], {}).get('status')}")
    after = sum(metrics(n).get("kaa_dead_letter_replays_total", 0) for n in h.up_nodes())
    res["replays_counted"] = int(after - before)
    if int(after - before) != len(ids):
        h.violate(5, f"the nodes counted {int(after - before)} replays run (kaa_dead_letter_replays_total) "
                     f"for {len(ids)} dead letters replayed twice")
    return res


# ---------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="tools/proof.sh",
        description="Start a Kaa cluster, publish many models, drive an open-loop load while a seeded "
                    "schedule kills, pauses, adds, removes and upgrades nodes (in network namespaces also "
                    "partitions and netem loss/delay), then check every call and the cluster's state. "
                    "Exits 0 when no check is violated, 1 on a violation, 2 when the harness could not run.")
    p.add_argument("--nodes", type=int, default=None, help="nodes to start (default 5; --short: 3)")
    p.add_argument("--models", type=int, default=None, help="generated models (default 10000; --short: 1000)")
    p.add_argument("--seed", type=int, default=None, help="seed of the schedule and the load (default: random, printed)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of load and faults, at least (default 300; --short: 60); the load runs until the schedule is done")
    p.add_argument("--rate", type=float, default=None, help="calls a second of the open-loop client (default 100; --short: 30)")
    p.add_argument("--kaa", default=None,
                   help="the kaa binary (default .build/release/kaa, built with `swift build -c release --product kaa` when missing)")
    p.add_argument("--mode", choices=["auto", "loopback", "namespaces"], default="auto",
                   help="loopback (127.0.0.1 ports) or namespaces (one network namespace a node: root, `ip netns`, nft, tc); "
                        "auto: namespaces when possible")
    p.add_argument("--repair-grace", type=int, default=5, help="the nodes' repair_grace, seconds (default 5)")
    p.add_argument("--repair-bound", type=int, default=None,
                   help="seconds within which the cluster must be back at the replication factor after a fault (default 120; --short: 240)")
    p.add_argument("--short", action="store_true",
                   help="the CI schedule: 3 nodes, 1,000 models, one kill and restart, one pause, one partition in namespaces")
    p.add_argument("--faults", default=None,
                   help="the faults to inject, in this order, comma-separated (from: " + ", ".join(FAULTS)
                        + "); default: the schedule's own, shuffled by the seed")
    p.add_argument("--keep", action="store_true", help="keep the work directory (it is also kept when a check fails)")
    a = p.parse_args(argv)
    d = {"nodes": (3, 5), "models": (1000, 10000), "duration": (60, 300), "rate": (30, 100), "repair_bound": (240, 120)}
    for k, (short, full) in d.items():
        if getattr(a, k) is None:
            setattr(a, k, short if a.short else full)
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 1 << 31)
    if a.nodes < 3:
        p.error("--nodes must be at least 3 (replication 2 and a node to lose)")
    if a.models < 1:
        p.error("--models must be at least 1")
    if a.rate <= 0 or a.duration <= 0:
        p.error("--rate and --duration must be positive")
    return a


def namespaces_possible():
    if os.geteuid() != 0:
        return False, "not root"
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            return False, f"no `{tool}` (tools/install-deps.sh installs nftables and iproute2)"
    r = subprocess.run(["ip", "netns", "list"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if r.returncode != 0:
        return False, "`ip netns` does not work here"
    return True, ""


def netem_possible():
    """Whether this kernel has the netem qdisc (sch_netem): tried on the loopback of a scratch namespace."""
    ns = f"kaa-proof-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        return False, "cannot make a scratch namespace"
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return r.returncode == 0, f"`tc qdisc add ... netem` failed: {r.stdout.strip()} (the kernel lacks sch_netem)"
    finally:
        subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def resolve_kaa(a):
    if a.kaa is None:
        a.kaa = os.path.join(REPO, ".build", "release", "kaa")
        if not os.access(a.kaa, os.X_OK):
            print("proof: no .build/release/kaa; building it: swift build -c release --product kaa", flush=True)
            r = subprocess.run(["swift", "build", "-c", "release", "--product", "kaa"], cwd=REPO)
            if r.returncode != 0:
                raise Abort("swift build -c release --product kaa failed")
    a.kaa = os.path.abspath(a.kaa)
    if not os.access(a.kaa, os.X_OK):
        raise Abort(f"no kaa binary at {a.kaa}")


def run(h):
    a = h.args
    if a.mode in ("auto", "namespaces"):
        ok, why = namespaces_possible()
        if ok:
            h.mode = "namespaces"
        elif a.mode == "namespaces":
            raise Abort(f"namespaces mode is not possible here: {why}")
        else:
            h.log(f"loopback mode (namespaces not possible: {why})")
    if h.mode == "namespaces":
        h.netem_ok, why = netem_possible()
        if not h.netem_ok:
            h.log(f"no netem fault: {why}")
    kinds = schedule(h)
    total_nodes = a.nodes + (1 if "join" in kinds else 0)
    h.log(f"seed {a.seed}, {h.mode} mode, {a.nodes} nodes, {a.models} models, rate {a.rate}/s, "
          f"duration {a.duration} s, repair grace {a.repair_grace} s, repair bound {a.repair_bound} s, "
          f"kaa {h.kaa}, work dir {h.work}")
    h.log(f"schedule: {', '.join(kinds)}")
    sh([h.kaa, "keys", "cluster", "--out", os.path.join(h.work, "cluster.key")])
    if h.mode == "namespaces":
        spaces = h.ns_setup(total_nodes)
        for i, (ns, ip) in enumerate(spaces, 1):
            h.nodes.append(Node(i, f"n{i}", ip, 7070, 7946, os.path.join(h.work, f"n{i}"),
                                os.path.join(h.work, f"n{i}.log"), ns))
    else:
        base = free_ports(2 * total_nodes)
        for i in range(1, total_nodes + 1):
            h.nodes.append(Node(i, f"n{i}", "127.0.0.1", base + 2 * (i - 1), base + 2 * (i - 1) + 1,
                                os.path.join(h.work, f"n{i}"), os.path.join(h.work, f"n{i}.log")))

    out, files, samples = build_snapshots(h)
    t = time.time()
    for node in h.nodes[:a.nodes]:
        h.start(node)
    until = time.time() + 60
    while True:
        members = http_json(h.nodes[0].host, h.nodes[0].http_port, "GET", "/kaa/v1/members")["members"]
        if sum(m["status"] == "alive" for m in members) >= a.nodes:
            break
        if time.time() > until:
            raise Abort(f"the {a.nodes} nodes did not form a cluster within 60 s")
        time.sleep(0.2)
    h.log(f"{a.nodes} nodes up in {time.time() - t:.1f} s")
    publish(h, out, files)
    rest = wait_at_rest(h, max(300, a.models / 10), "publish")
    if rest is None:
        raise Abort("the cluster did not reach the replication factor after publishing")
    h.log(f"every node counts {h.total} snapshots, none under-replicated ({rest:.1f} s after the publish)")

    names = [f[:-4] for f in files if f[:-4] not in samples]
    bodies = request_bodies(h, names, samples)
    load = Load(h, bodies, names + samples, a.rate, a.seed)
    h.load = load
    threading.Thread(target=sampler, args=(h,), daemon=True).start()
    load_start = time.time()
    load.start()
    h.log(f"load started: {a.rate} calls/s, Zipf s=1.1 over {len(names) + len(samples)} models")

    time.sleep(min(10.0, a.duration / 6))
    rests = []
    for kind in kinds:
        h.reap()
        rec = FAULTS[kind](h)
        r = wait_at_rest(h, a.repair_bound, kind)
        rec["rest"] = r
        if r is None:
            h.violate(3, f"after the {kind} fault the cluster was not back at the replication factor within {a.repair_bound} s")
        else:
            rests.append((kind, time.time() - rec["end"]))
        time.sleep(h.rng.uniform(2.0, 5.0))
    last_fault_end = h.faults[-1]["end"] if h.faults else time.time()
    remaining = load_start + a.duration - time.time()
    if remaining > 0:
        time.sleep(remaining)
    load.stop.set()
    for t_ in load.threads:
        t_.join(CLIENT_TIMEOUT + 5)
    load_end = time.time()
    h.log(f"load stopped after {load_end - load_start:.1f} s: {len(load.records)} calls")

    # Heal everything, then the repair bound.
    h.heal_partition()
    h.heal_netem()
    h.reap()
    for node in h.nodes:
        if node.procs and not node.alive:
            h.start(node)
    healed = time.time()
    digests = None
    deadline = max(last_fault_end, healed) + a.repair_bound
    while True:
        h.reap()
        ups = h.up_nodes()
        if at_rest(h, ups):
            try:
                digests = {n.name: http_json(n.host, n.http_port, "GET", "/kaa/v1/placement?under_replicated=true")["digest"]
                           for n in ups}
            except (OSError, Abort):
                digests = None
            if digests and len(set(digests.values())) == 1:
                break
        if time.time() > deadline:
            break
        time.sleep(0.5)
    final_rest = (time.time() - healed, healed - last_fault_end)
    h.stop_sampler.set()
    if not digests or len(set(digests.values())) != 1:
        h.violate(3, f"{a.repair_bound} s after the last fault (and the load's end) the cluster was not at rest with one table: "
                     f"digests {digests}")
    # Every snapshot at the factor on every node's table.
    for n in h.up_nodes():
        p = http_json(n.host, n.http_port, "GET", "/kaa/v1/placement", timeout=60)
        keys = {f"{s['name']}@{s['version']}" for s in p["snapshots"]}
        missing = h.keys - keys
        under = [f"{s['name']}@{s['version']}" for s in p["snapshots"] if s["ready"] < REPLICATION]
        if missing:
            h.violate(3, f"{n.name}'s table lacks {len(missing)} snapshot(s): {sorted(missing)[:10]}")
        if under:
            h.violate(3, f"{n.name}'s table has {len(under)} snapshot(s) under the factor: {under[:10]}")

    # Dead letters, checks 1 and 2, then the replay (5).
    node = h.up_nodes()[0]
    letters = all_dead_letters(h, node)
    counts, failed, upgrade = check_calls(h, load.records, letters)
    replay = replay_all(h, node, letters)

    # Every node stops cleanly (4).
    h.reap()
    for n in h.nodes:
        if n.alive:
            with h.lock:
                n.state = "stopping"
                h.signal(n, signal.SIGTERM, expect="term")
    for n in h.nodes:
        if n.procs and n.proc.rc is None:
            try:
                n.proc.popen.wait(LEAVE_TIMEOUT + SHUTDOWN_GRACE + 30)
            except subprocess.TimeoutExpired:
                h.violate(4, f"{n.name} (pid {n.proc.pid}) did not stop within {LEAVE_TIMEOUT + SHUTDOWN_GRACE + 30} s of SIGTERM at the end")
    h.reap()
    for n in h.nodes:
        for p in n.procs:
            if p.expect == "term" and p.rc not in (0, None):
                if not any(v[0] == 4 and str(p.pid) in v[1] for v in h.violations):
                    h.violate(4, f"{n.name} (pid {p.pid}) exited with status {p.rc} after SIGTERM; log tail: {tail(n.log_path)}")
            if p.expect == "kill" and p.rc != -signal.SIGKILL:
                h.violate(4, f"{n.name} (pid {p.pid}) was SIGKILLed by the schedule but exited with {p.rc}")

    # Save the records.
    with open(os.path.join(h.work, "calls.jsonl"), "w") as f:
        for r in sorted(load.records, key=lambda r: r["seq"]):
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(h.work, "faults.json"), "w") as f:
        json.dump(h.faults, f, indent=1)

    report(h, load, counts, failed, upgrade, replay, rests, final_rest, digests, load_start, load_end)


def report(h, load, counts, failed, upgrade, replay, rests, final_rest, digests, load_start, load_end):
    a = h.args
    lat = sorted((r["end"] - r["sent"]) * 1000 for r in load.records if r.get("status") == 200)
    pct = lambda q: lat[min(len(lat) - 1, int(q * (len(lat) - 1)))] if lat else 0.0
    firsts = [r for r in load.records if r.get("first")]
    first_bad = sum(1 for r in firsts if r.get("status") != 200 and not r.get("dead_letter"))
    lines = ["", "=" * 78,
             f"Kaa proof report: seed {a.seed}, {h.mode}, {a.nodes} nodes (+{len(h.nodes) - a.nodes} joining), "
             f"{h.total} snapshots ({a.models} generated), replication {REPLICATION}, repair grace {a.repair_grace} s",
             f"  command: tools/proof.sh {' '.join(sys.argv[1:])} --seed {a.seed}" if "--seed" not in sys.argv else
             f"  command: tools/proof.sh {' '.join(sys.argv[1:])}",
             f"  times: build {h.timing.get('build', 0):.1f} s, publish {h.timing.get('publish', 0):.1f} s, "
             f"load {load_end - load_start:.1f} s, total {time.time() - h.t0:.1f} s",
             f"calls: {counts['calls']} ({a.rate}/s open loop, max lag behind schedule {load.lag_max * 1000:.0f} ms)",
             f"  answered 200: {counts['answered']} (p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {pct(1.0):.1f} ms)",
             f"  dead-lettered (503/504 naming one): {counts['dead_lettered']}",
             f"  refused 429 (not accepted): {counts['refused_429']}",
             f"  of these, sent to a node the moment it was ready after a (re)start: {len(firsts)}, "
             f"{first_bad} neither answered nor dead-lettered"]
    if failed:
        lines.append("  failed, by class:")
        for cls, n in sorted(failed.items()):
            lines.append(f"    {cls}: {n}")
    else:
        lines.append("  failed: none")
    lines.append(f"dead letters listed cluster-wide: {counts['dead_letters_listed']} "
                 f"({counts['dead_letters_no_client_saw']} for calls whose client saw no dead letter)")
    lines.append(f"replay: {replay['replayed']} replayed, {replay['ran_now']} ran on the first replay, "
                 f"{replay['second_ran']} ran again on the second; statuses {replay['statuses']}; "
                 f"nodes counted {replay.get('replays_counted', 0)} runs")
    if h.upgrade_windows:
        lines.append(f"rolling upgrade: {upgrade['calls']} calls sent during it, {upgrade['answered']} answered, "
                     f"{upgrade['dead_lettered']} dead-lettered, {upgrade['failed']} failed")
    lines.append(f"placement: {h.samples} samples, max under-replicated {h.max_under}, "
                 f"{h.zero_candidates} zero-copy candidates, {len(h.zero_events)} confirmed at zero ready copies")
    lines.append(f"  at the end: at rest with one table {final_rest[0]:.1f} s after the load stopped "
                 f"({final_rest[1]:.1f} s after the last fault; bound {a.repair_bound} s); "
                 f"digest {next(iter(set(digests.values())))[:16] if digests and len(set(digests.values())) == 1 else digests}")
    lines.append("faults:")
    for f in h.faults:
        rest = f.get("rest")
        lines.append(f"  {fmt_t(f['start'], h.t0)} .. {fmt_t(f['end'], h.t0)}  {f['kind']:<9} {','.join(f['nodes']):<14} "
                     f"{f['detail']}; at rest {'%.1f s after' % rest if rest is not None else 'NOT within the bound'}")
    exits = []
    for n in h.nodes:
        for p in n.procs:
            exits.append(f"{n.name}:{p.pid}={p.rc}({p.expect or 'run'})")
    lines.append("node processes (pid=exit status (planned)): " + " ".join(exits))
    for note in h.notes[:10]:
        lines.append(f"note: {note}")
    lines.append(f"violations: {len(h.violations)}")
    by_check = {}
    for check, text in h.violations:
        by_check.setdefault(check, []).append(text)
    for check in sorted(by_check):
        lines.append(f"  check {check}: {len(by_check[check])}")
        for text in by_check[check][:8]:
            lines.append(f"    - {text[:400]}")
    lines.append("=" * 78)
    text = "\n".join(lines)
    print(text, flush=True)
    with open(os.path.join(h.work, "report.txt"), "w") as f:
        f.write(text + "\n")


def main(argv):
    a = parse_args(argv)
    try:
        resolve_kaa(a)
    except Abort as e:
        print(f"proof: {e}", file=sys.stderr)
        return 2
    h = Harness(a)

    def on_signal(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 2
    try:
        run(h)
        code = 1 if h.violations else 0
    except Abort as e:
        h.log(f"error: {e}")
        code = 2
    except Interrupted as e:
        h.log(f"interrupted ({e}); stopping everything")
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        h.cleanup()
        h.logf.close()
        if a.keep or code != 0:
            print(f"proof: work directory kept: {h.work} (node logs n*.log, calls.jsonl, faults.json, report.txt)")
        else:
            shutil.rmtree(h.work, ignore_errors=True)
    print(f"proof: {'PASS' if code == 0 else 'FAIL' if code == 1 else 'INTERRUPTED' if code == 130 else 'ERROR'} (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
