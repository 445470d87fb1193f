#!/usr/bin/env python3
"""make test-cluster: HAProxy in front of 3 kvantd on the real model, loopback ports.

Runs deploy/haproxy/haproxy.cfg itself (ports, the stats socket and logging replaced), drives 8
concurrent streaming clients (http.client, one connection per request) through HAProxy and, while
they run:
  1. steady     the cluster as started;
     drain      `kvantctl drain` on one daemon while it serves streams: HAProxy marks it DOWN (its
                /health answers 503 draining) while it still runs, then `kvantctl drain --resume`: UP;
  2. rolling    each daemon in turn gets SIGTERM while it serves streams, exits, is restarted, and is
                waited on until HAProxy sees it UP again (its stats socket);
  3. sigkill    one daemon is killed with SIGKILL while it serves streams, until HAProxy marks it DOWN;
  4. after      the two survivors serve on.
Requests are counted sent / completed / failed per phase (the phase a request started in).
Goals checked: 0 failed in steady, rolling and after; in sigkill only streams of the killed daemon
fail (X-Kvant-Server, set by HAProxy, names the daemon of each response). Then prefix affinity:
requests of one X-Session-Id all land on one daemon (each daemon's kvant:request_success_total), and
that daemon alone serves the session's growing prompt from its prefix cache (kvant:prefix_cache_hits_total).

No timing assertions: every wait is on an event (a health state, a process exit, a count); the
timeouts only end a failing run. Prints TAP (`ok N - …`); `1..0 # SKIP <reason>` without haproxy,
the model or kvantd.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLIENTS = 8
MAX_TOKENS = 8
GUARD = 180          # seconds: only ends a failing wait
DRAIN_TIMEOUT = 60   # shutdown_timeout_seconds of the daemons


# The shared part of each affinity session's prompt (~100 tokens: several full KV blocks).
AFFINITY_CONTEXT = ("You are a helpful assistant for a small bakery. The bakery opens at seven in the morning and "
                    "closes at six in the evening, except on Sundays, when it closes at noon. It sells bread, "
                    "croissants, cakes and coffee. Customers may order cakes three days ahead by phone or in the "
                    "shop. Answer briefly and politely, and never invent prices that you were not told.")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, condition, guard=GUARD, interval=0.05):
    """Polls condition() until it returns a true value (an event); raises after `guard` seconds."""
    deadline = time.monotonic() + guard
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for: {what}")
        time.sleep(interval)


class HAProxy:
    def __init__(self, workdir, source, front_port, daemon_ports):
        self.sock = os.path.join(workdir, "haproxy.sock")
        self.cfg = os.path.join(workdir, "haproxy.cfg")
        text = open(source).read()
        text = text.replace("/run/haproxy/admin.sock", self.sock)
        text = re.sub(r"(?m)^(\s*)log /dev/log.*$", r"\1log stdout format raw local0 info", text)
        text = re.sub(r"(?m)^(\s*)bind :8080\b", rf"\1bind 127.0.0.1:{front_port}", text)
        text = re.sub(r"(?m)^(\s*)bind 127\.0\.0\.1:8404\b", rf"\1bind 127.0.0.1:{free_port()}", text)
        for i, port in enumerate(daemon_ports, 1):
            text, n = re.subn(rf"(?m)^(\s*server kvant{i}) 127\.0\.0\.1:800{i}\b", rf"\1 127.0.0.1:{port}", text)
            if n != 2:
                raise RuntimeError(f"{source}: expected 2 'server kvant{i} 127.0.0.1:800{i}' lines, found {n}")
        open(self.cfg, "w").write(text)
        self.log = open(os.path.join(workdir, "haproxy.log"), "w")
        self.proc = None

    def check(self):
        r = subprocess.run(["haproxy", "-c", "-f", self.cfg], capture_output=True, text=True)
        return r.returncode == 0, (r.stdout + r.stderr).strip()

    def start(self):
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.cfg], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for("the HAProxy stats socket", lambda: os.path.exists(self.sock) and self.stats(), guard=30)

    def command(self, line):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.sock)
            s.sendall((line + "\n").encode())
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        return out.decode()

    def stats(self):
        """{(backend, server): row} of `show stat`; {} when the socket does not answer yet."""
        try:
            text = self.command("show stat")
        except OSError:
            return {}
        lines = text.strip().splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            rows[(row["pxname"], row["svname"])] = row
        return rows

    def server(self, name, backend="kvant"):
        return self.stats().get((backend, name), {})

    def status(self, name):
        return self.server(name).get("status", "")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Daemon:
    def __init__(self, index, kvantd, model, workdir, port):
        self.name = f"kvant{index}"
        self.kvantd = kvantd
        self.port = port
        self.config = os.path.join(workdir, f"{self.name}.toml")
        self.logpath = os.path.join(workdir, f"{self.name}.log")
        self.socket = os.path.join(workdir, self.name + ".sock")
        with open(self.config, "w") as f:
            f.write(f'''model = "{os.path.abspath(model)}"
allowed_dirs = ["{os.path.dirname(os.path.abspath(model))}"]
socket = "{self.socket}"
http_host = "127.0.0.1"
http_port = {port}
threads = 1
max_num_seqs = 4
shutdown_timeout_seconds = {DRAIN_TIMEOUT}
log_level = "info"
''')
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        log = open(self.logpath, "a")
        log.write(f"---- start {self.starts}\n")
        log.flush()
        self.proc = subprocess.Popen([self.kvantd, "--config", self.config], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def health(self):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request("GET", "/health")
            r = conn.getresponse()
            body = r.read()
            conn.close()
            return r.status, json.loads(body or b"{}")
        except (OSError, http.client.HTTPException, ValueError):
            return None, {}

    def wait_healthy(self):
        def ok():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting; see {self.logpath}")
            return self.health()[0] == 200
        wait_for(f"{self.name} /health 200", ok, guard=GUARD)

    def metric(self, name):
        """The sum of the daemon's /metrics samples named `name` (over all label sets)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def request_success(self):
        return self.metric("kvant:request_success_total")

    def drain_log_lines(self):
        try:
            return [l for l in open(self.logpath, errors="replace") if "draining HTTP requests" in l]
        except OSError:
            return []


class Load:
    """CLIENTS threads sending streamed completions through HAProxy until stopped."""

    def __init__(self, port):
        self.port = port
        self.lock = threading.Lock()
        self.phase = "steady"
        self.results = []         # (phase, ok, server, detail)
        self.in_flight = {}       # phase -> count
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def set_phase(self, phase):
        with self.lock:
            self.phase = phase

    def count(self, phase, ok=None):
        with self.lock:
            return sum(1 for r in self.results if r[0] == phase and (ok is None or r[1] == ok))

    def inflight(self, phase):
        with self.lock:
            return self.in_flight.get(phase, 0)

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=GUARD)

    def client(self, index):
        n = 0
        while not self.stopping.is_set():
            with self.lock:
                phase = self.phase
                self.in_flight[phase] = self.in_flight.get(phase, 0) + 1
            ok, server, detail = self.one(f"Request {n} of client {index}: the capital of France is")
            with self.lock:
                self.in_flight[phase] -= 1
                self.results.append((phase, ok, server, detail))
            n += 1

    def one(self, prompt):
        server = None
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            body = json.dumps({"prompt": prompt, "max_tokens": MAX_TOKENS, "stream": True, "temperature": 0})
            conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            server = r.getheader("X-Kvant-Server")
            if r.status != 200:
                return False, server, f"HTTP {r.status}: {r.read()[:200]!r}"
            done, finish, tokens = False, None, 0
            while True:
                line = r.readline()
                if not line:
                    break
                line = line.decode().rstrip("\r\n")
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    continue
                for choice in json.loads(data).get("choices", []):
                    tokens += 1 if choice.get("text") else 0
                    finish = choice.get("finish_reason") or finish
            conn.close()
            if not done:
                return False, server, f"stream cut after {tokens} chunks (no [DONE])"
            if finish not in ("stop", "length"):
                return False, server, f"finish_reason {finish}"
            return True, server, ""
        except (OSError, http.client.HTTPException, ValueError) as e:
            return False, server, f"{type(e).__name__}: {e}"


class TAP:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        self.n += 1
        if not ok:
            self.failed += 1
        print(f"{'ok' if ok else 'not ok'} {self.n} - {name}", flush=True)
        if detail:
            for line in str(detail).splitlines():
                print(f"#   {line}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvantd", default=os.path.join(ROOT, ".build/release/kvantd"))
    ap.add_argument("--kvantctl", help="default: kvantctl beside --kvantd")
    ap.add_argument("--model", default=os.environ.get("KVANT_MODEL", os.path.join(ROOT, "models/gemma-3-270m-q4_k_m.gguf")))
    ap.add_argument("--haproxy-config", default=os.path.join(ROOT, "deploy/haproxy/haproxy.cfg"))
    ap.add_argument("--keep", action="store_true", help="keep the working directory (configs, logs)")
    args = ap.parse_args()
    if shutil.which("haproxy") is None:
        print("1..0 # SKIP haproxy is not installed (apt-get install haproxy; make setup does it)")
        return 0
    if not os.path.isfile(args.model):
        print(f"1..0 # SKIP model missing: {args.model} (run: make model)")
        return 0
    if not os.access(args.kvantd, os.X_OK):
        print(f"1..0 # SKIP kvantd not built: {args.kvantd} (run: make build)")
        return 0
    kvantctl = args.kvantctl or os.path.join(os.path.dirname(args.kvantd), "kvantctl")
    if not os.access(kvantctl, os.X_OK):
        print(f"1..0 # SKIP kvantctl not built: {kvantctl} (run: make build)")
        return 0

    workdir = tempfile.mkdtemp(prefix="kvant-cluster-")
    front = free_port()
    daemons = [Daemon(i, args.kvantd, args.model, workdir, free_port()) for i in (1, 2, 3)]
    proxy = HAProxy(workdir, args.haproxy_config, front, [d.port for d in daemons])
    tap = TAP()
    load = None
    started = time.monotonic()
    try:
        ok, out = proxy.check()
        tap.check("haproxy -c accepts deploy/haproxy/haproxy.cfg (ports replaced)", ok, "" if ok else out)
        if not ok:
            return 1
        for d in daemons:
            d.start()
        for d in daemons:
            d.wait_healthy()
        proxy.start()
        wait_for("HAProxy sees all 3 daemons UP", lambda: all(proxy.status(d.name) == "UP" for d in daemons))
        tap.check("3 kvantd healthy and UP in HAProxy", True)

        load = Load(front)
        load.start()
        # Steady: until every client completed a couple of requests.
        wait_for("steady-phase requests", lambda: load.count("steady", True) >= 2 * CLIENTS or load.count("steady", False) > 0)

        # Drain one daemon with kvantctl while it serves streams; it stays up but leaves the rotation.
        load.set_phase("drain")
        wait_for("steady-phase requests to finish", lambda: load.inflight("steady") == 0)
        d = daemons[0]
        wait_for(f"{d.name} serving a stream", lambda: int(proxy.server(d.name).get("scur") or 0) >= 1, guard=60)
        ctl = lambda *a: subprocess.run([kvantctl, "drain", "--socket", d.socket, "--json", *a],
                                        capture_output=True, text=True, timeout=DRAIN_TIMEOUT + 30)
        sessions_at_drain = int(proxy.server(d.name).get("scur") or 0)
        drained = ctl()
        result = json.loads(drained.stdout or "{}")
        wait_for(f"HAProxy marks the drained {d.name} DOWN", lambda: proxy.status(d.name).startswith("DOWN"))
        status, health = d.health()
        still_running = d.proc.poll() is None
        served_while_down = load.count("drain", True)
        wait_for("requests served while it is out of rotation", lambda: load.count("drain", True) >= served_while_down + CLIENTS)
        resumed = ctl("--resume")
        wait_for(f"HAProxy sees {d.name} UP after drain --resume", lambda: proxy.status(d.name) == "UP")
        tap.check("kvantctl drain: it waits for the streams, /health 503 draining, HAProxy marks it DOWN while it runs; --resume: UP",
                  drained.returncode == 0 and result.get("drained") is True and status == 503
                  and health.get("status") == "draining" and still_running and resumed.returncode == 0,
                  f"{sessions_at_drain} HAProxy sessions on {d.name} at drain; drain: exit {drained.returncode} "
                  f"{' '.join(drained.stdout.split())} {drained.stderr.strip()}\n"
                  f"/health while drained: {status} {health}; process running: {still_running}; resume: exit {resumed.returncode}")

        # Rolling restart.
        load.set_phase("rolling")
        wait_for("drain-phase requests to finish", lambda: load.inflight("drain") == 0)
        rolling = []
        for d in daemons:
            # SIGTERM while it serves streams (HAProxy's current sessions on it).
            wait_for(f"{d.name} serving a stream", lambda: int(proxy.server(d.name).get("scur") or 0) >= 1, guard=60)
            in_flight = int(proxy.server(d.name).get("scur") or 0)
            before = len(d.drain_log_lines())
            d.proc.send_signal(signal.SIGTERM)
            rc = d.proc.wait(timeout=DRAIN_TIMEOUT + GUARD)
            lines = d.drain_log_lines()[before:]
            logged = re.search(r"in_flight[=:\"' ]+(\d+)", lines[-1]) if lines else None
            d.start()
            d.wait_healthy()
            wait_for(f"HAProxy sees {d.name} UP again", lambda: proxy.status(d.name) == "UP")
            rolling.append((d.name, rc, in_flight, logged.group(1) if logged else "?"))
        tap.check("rolling restart: each daemon drained and exited 0 on SIGTERM while serving, restarted, UP again",
                  all(rc == 0 for _, rc, _, _ in rolling),
                  "\n".join(f"{n}: exit {rc}, {s} HAProxy sessions at SIGTERM, kvantd logged in_flight={l}" for n, rc, s, l in rolling))

        # SIGKILL one daemon while it serves streams.
        load.set_phase("sigkill")
        wait_for("rolling-phase requests to finish", lambda: load.inflight("rolling") == 0)
        victim = daemons[1]
        wait_for(f"{victim.name} serving a stream", lambda: int(proxy.server(victim.name).get("scur") or 0) >= 1, guard=60)
        sessions_at_kill = int(proxy.server(victim.name).get("scur") or 0)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=GUARD)
        wait_for(f"HAProxy marks {victim.name} DOWN", lambda: proxy.status(victim.name).startswith("DOWN"))
        load.set_phase("after")
        wait_for("after-phase requests", lambda: load.count("after", True) >= 2 * CLIENTS or load.count("after", False) > 0)
        load.stop()

        def failures(phase):
            with load.lock:
                return [r for r in load.results if r[0] == phase and not r[1]]

        for phase in ("steady", "drain", "rolling"):
            f = failures(phase)
            tap.check(f"{phase}: 0 failed of {load.count(phase)} requests", not f,
                      "\n".join(f"{s}: {d}" for _, _, s, d in f[:10]))
        f = failures("sigkill")
        tap.check(f"sigkill: only streams of the killed daemon fail ({len(f)} of {load.count('sigkill')} failed; "
                  f"{sessions_at_kill} HAProxy sessions on {victim.name} at SIGKILL)",
                  all(s == victim.name for _, _, s, _ in f), "\n".join(f"{s}: {d}" for _, _, s, d in f[:10]))
        f = failures("after")
        tap.check(f"after HAProxy marked {victim.name} DOWN: 0 failed of {load.count('after')} requests", not f,
                  "\n".join(f"{s}: {d}" for _, _, s, d in f[:10]))

        # Prefix affinity: back to 3 daemons, no other load.
        victim.start()
        victim.wait_healthy()
        wait_for(f"HAProxy sees {victim.name} UP again", lambda: proxy.status(victim.name) == "UP")
        # Each session is a conversation whose prompt grows turn by turn, so turns 2-4 find the earlier
        # turns' blocks in the prefix cache of the daemon that served them (and only there).
        placement = {}
        problems = []
        hits = {}
        for session in ("alice", "bob", "carol", "dave", "erin", "frank"):
            before = [d.request_success() for d in daemons]
            hits_before = [d.metric("kvant:prefix_cache_hits_total") for d in daemons]
            servers = set()
            conversation = f"Conversation {session}. " + AFFINITY_CONTEXT
            for k in range(4):
                conversation += f" Turn {k}: tell me more about part {k}."
                conn = http.client.HTTPConnection("127.0.0.1", front, timeout=120)
                conn.request("POST", "/v1/completions",
                             body=json.dumps({"prompt": conversation, "max_tokens": 4}),
                             headers={"Content-Type": "application/json", "X-Session-Id": session})
                r = conn.getresponse()
                r.read()
                servers.add(r.getheader("X-Kvant-Server"))
                if r.status != 200:
                    problems.append(f"{session}: HTTP {r.status}")
                conn.close()
            delta = [d.request_success() - b for d, b in zip(daemons, before)]
            hit_delta = [d.metric("kvant:prefix_cache_hits_total") - b for d, b in zip(daemons, hits_before)]
            placement[session] = delta
            hits[session] = hit_delta
            if sorted(delta) != [0, 0, 4] or len(servers) != 1:
                problems.append(f"{session}: request_success_total deltas {delta}, X-Kvant-Server {servers}")
            elif not all((h > 0) == (n > 0) for h, n in zip(hit_delta, delta)):
                problems.append(f"{session}: prefix_cache_hits_total deltas {hit_delta} (requests {delta})")
        tap.check("prefix affinity: the 4 requests of each X-Session-Id land on one daemon (its request_success_total +4),"
                  " whose prefix cache serves the conversation's earlier turns (kvant:prefix_cache_hits_total)",
                  not problems, "\n".join(problems + [f"{s}: {d} hits {hits[s]}" for s, d in placement.items()]))

        # The figures (BENCHMARKS.md).
        kv = proxy.stats().get(("kvant", "BACKEND"), {})
        print("# cluster figures: phase sent completed failed")
        for phase in ("steady", "drain", "rolling", "sigkill", "after"):
            print(f"#   {phase:8} {load.count(phase):5} {load.count(phase, True):9} {load.count(phase, False):6}")
        print(f"#   HAProxy backend kvant: retries {kv.get('wretr', '?')}, redispatches {kv.get('wredis', '?')}, "
              f"connection errors {kv.get('econ', '?')}, response errors {kv.get('eresp', '?')}")
        print(f"#   sessions per daemon (affinity): "
              + ", ".join(f"{d.name} {sum(1 for v in placement.values() if v[i] > 0)}" for i, d in enumerate(daemons)))
        print("#   prefix-cache hit tokens per session (turns 2-4 on its daemon): "
              + ", ".join(f"{s} {int(max(h))}" for s, h in hits.items()))
        print(f"#   wall time {time.monotonic() - started:.0f} s")
    except Exception as e:  # a failed wait or start: one failed check with the reason, then clean up
        tap.check("cluster run", False, f"{type(e).__name__}: {e}\nlogs in {workdir}")
        args.keep = True
    finally:
        if load:
            load.stopping.set()
        for d in daemons:
            if d.proc and d.proc.poll() is None:
                d.proc.terminate()
                try:
                    d.proc.wait(timeout=DRAIN_TIMEOUT + 30)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
        proxy.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"# working directory kept: {workdir}")
    print(f"1..{tap.n}")
    return 1 if tap.failed else 0


if __name__ == "__main__":
    sys.exit(main())
