#!/usr/bin/env python3
"""make soak: kvantd under concurrent load, then SIGTERM; counts every request and checks that none is lost.

Starts kvantd (release build) on the real model with a control socket (and the HTTP API when the build has
one), then for SOAK_SECONDS (default 120) runs at once:
  - socket clients: streamed and plain `generate` requests, some cancelled by closing the connection midway
    (client disconnects), a prompt repeated with a common prefix (prefix-cache hits when the engine has one);
  - HTTP clients (if the HTTP API answers): streamed and plain completions, some disconnecting midway;
  - a reload storm: `reload-scales` with a good file and with broken files (truncated JSON, a negative
    scale, a wrong layer count), alternating;
  - `set-kv-dtype` switches between int8_pertensor (with the good file), int8_pertoken and fp16;
  - `stats` sampling: peak RSS of the daemon (VmHWM/VmRSS from /proc), KV blocks in use.
Then it waits for the clients to finish, reads `stats` (blocks in use must be 0), sends SIGTERM while a last
batch of requests runs, and prints sent / completed / errored by reason / lost, peak RSS, RSS after warm-up
vs at the end, and blocks in use at the end. A request is lost when it got neither a reply nor a clean
error: no reply line before EOF on the socket, or a broken HTTP response. Exit status 1 when anything was
lost, the daemon crashed or blocks leaked.

Traffic goes only to this machine (a Unix socket in a temporary directory and 127.0.0.1).
"""
import json, os, random, signal, socket, subprocess, sys, tempfile, threading, time, http.client

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(HERE, ".build", "release")
MODEL = os.environ.get("KVANT_MODEL", os.path.join(HERE, "models", "gemma-3-270m-q4_k_m.gguf"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
SOCKET_CLIENTS = int(os.environ.get("SOAK_SOCKET_CLIENTS", "4"))
HTTP_CLIENTS = int(os.environ.get("SOAK_HTTP_CLIENTS", "4"))

lock = threading.Lock()
counts = {"sent": 0, "completed": 0, "lost": 0, "disconnected_by_client": 0}
errors = {}


def count(key, n=1):
    with lock:
        counts[key] = counts.get(key, 0) + n


def error(reason):
    with lock:
        errors[reason] = errors.get(reason, 0) + 1


class Conn:
    """One JSON-RPC connection on the control socket."""

    def __init__(self, path, timeout=300):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        self.next_id = 0

    def send(self, method, params=None):
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.s.sendall((json.dumps(msg) + "\n").encode())
        return self.next_id

    def read(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, method, params=None, on_note=None):
        rid = self.send(method, params)
        while True:
            m = self.read()
            if m is None:
                return None
            if "method" in m and "id" not in m:
                if on_note:
                    on_note(m)
                continue
            if m.get("id") == rid or (m.get("id") is None and "error" in m):
                return m

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def tally(reply):
    """Counts one reply: completed, an error by reason, or lost (None)."""
    if reply is None:
        count("lost")
    elif "error" in reply:
        error(reply["error"].get("data", {}).get("reason", "unknown") + ": " + reply["error"]["message"][:60])
    else:
        count("completed")


PROMPTS = ["The three laws of thermodynamics are", "Once upon a time", "def fibonacci(n):",
           "The capital of France is", "In 1905 Albert Einstein published"]
SHARED_PREFIX = "You are a careful assistant. Answer briefly and precisely. " * 8


def socket_client(path, stop, rng):
    while not stop.is_set():
        kind = rng.random()
        prompt = rng.choice(PROMPTS)
        if kind < 0.3:
            prompt = SHARED_PREFIX + prompt
        try:
            c = Conn(path)
        except OSError as e:
            error("connect: " + str(e)[:40]); continue
        count("sent")
        try:
            if kind > 0.85:
                # Client disconnect midway: send, read one token, close.
                c.send("generate", {"prompt": prompt, "max_tokens": 64, "stream": True, "temperature": 0.8, "seed": rng.randrange(1 << 30)})
                m = c.read()
                count("disconnected_by_client") if m is not None else count("lost")
            else:
                tally(c.call("generate", {"prompt": prompt, "max_tokens": rng.choice([8, 16, 32]), "stream": kind < 0.6,
                                           "temperature": 0.7, "seed": rng.randrange(1 << 30)}))
        except (OSError, ValueError) as e:
            count("lost"); error("socket: " + str(e)[:40])
        finally:
            c.close()


def served_model(port):
    """The id /v1/models gives (the loaded model's), so requests name the model the server serves."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/v1/models")
        return json.loads(conn.getresponse().read())["data"][0]["id"]
    finally:
        conn.close()


# HTTP statuses a correct server may answer under this load: 200, 429 (admission full: retry) and 503
# (model switching dtype: Retry-After). Anything else is an unexpected error and fails the soak.
HTTP_EXPECTED = {200, 429, 503}


def http_client(port, stop, rng):
    model = served_model(port)
    while not stop.is_set():
        prompt = rng.choice(PROMPTS)
        stream = rng.random() < 0.5
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": rng.choice([8, 16, 32]), "stream": stream,
                           "temperature": 0.7, "seed": rng.randrange(1 << 30)})
        count("sent")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            if r.status != 200:
                data = r.read()
                error(f"http {r.status}")
                if r.status not in HTTP_EXPECTED:
                    count("unexpected")
                continue
            if stream and rng.random() < 0.2:
                r.fp.readline()   # one chunk, then hang up
                count("disconnected_by_client")
                continue
            data = r.read().decode()
            if stream:
                ok = data.rstrip().endswith("data: [DONE]")
            else:
                ok = "choices" in json.loads(data)
            count("completed") if ok else count("lost")
        except (OSError, http.client.HTTPException, ValueError) as e:
            count("lost"); error("http: " + type(e).__name__)
        finally:
            conn.close()


def admin(path, stop, scales_good, scales_bad, rng):
    dtypes = [("int8_pertensor", scales_good), ("int8_pertoken", None), ("fp16", None)]
    i = 0
    while not stop.is_set():
        try:
            c = Conn(path)
            if i % 7 == 6:
                dtype, qpath = dtypes[(i // 7) % len(dtypes)]
                p = {"kv_cache_dtype": dtype}
                if qpath:
                    p["quantization_param_path"] = qpath
                r = c.call("set-kv-dtype", p)
                count("admin_set_kv_dtype")
            else:
                f = scales_good if i % 2 == 0 else rng.choice(scales_bad)
                r = c.call("reload-scales", {"path": f})
                count("admin_reload_ok" if r and "result" in r else "admin_reload_refused")
                if r and "error" in r:
                    reason = r["error"].get("data", {}).get("reason", "?")
                    count("admin_refused_" + ("broken file" if f != scales_good else "no static dtype in force")
                          + " (" + reason + ")")
            if r is None:
                count("admin_lost")
            c.close()
        except OSError as e:
            error("admin: " + str(e)[:40])
        i += 1
        stop.wait(0.2)


def rss_kb(pid, field="VmRSS"):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None


def main():
    if not os.path.exists(MODEL):
        print(f"soak: model {MODEL} missing (make model)"); return 2
    run = tempfile.mkdtemp(prefix="kvant-soak.")
    sock = os.path.join(run, "kvantd.sock")
    port = int(os.environ.get("SOAK_HTTP_PORT", "18431"))
    args = [os.path.join(BIN, "kvantd"), "--socket", sock, "--allowed-dir", os.path.dirname(MODEL), "--allowed-dir", run,
            "--kv-cache-bytes", str(64 << 20), "--threads", "2", "--log-level", "warning"]
    help_text = subprocess.run([args[0], "--help"], capture_output=True, text=True).stdout
    has_http = "--port" in help_text
    if has_http:
        args += ["--port", str(port)]
    log = open(os.path.join(run, "kvantd.log"), "w")
    daemon = subprocess.Popen(args, stderr=log)
    for _ in range(300):
        if os.path.exists(sock):
            break
        time.sleep(0.1)
    c = Conn(sock)
    r = c.call("load-model", {"path": MODEL, "kv_cache_dtype": "int8_pertoken"})
    assert r and "result" in r, r
    # A good scale file (calibrated) and broken ones.
    good = os.path.join(run, "good.json")
    r = c.call("calibrate", {"output": good, "num_tokens": 256})
    assert r and "result" in r, r
    bad = []
    for name, text in [("truncated.json", open(good).read()[:100]),
                       ("negative.json", open(good).read().replace('"0": 0.', '"0": -0.', 1)),
                       ("layers.json", json.dumps({"model_type": "gemma3", "kv_cache": {"dtype": "int8", "scaling_factor": {"0": {"0": 0.5}}}}))]:
        p = os.path.join(run, name); open(p, "w").write(text); bad.append(p)
    c.close()

    stop = threading.Event()
    rng = random.Random(7)
    threads = [threading.Thread(target=socket_client, args=(sock, stop, random.Random(rng.random()))) for _ in range(SOCKET_CLIENTS)]
    if has_http:
        threads += [threading.Thread(target=http_client, args=(port, stop, random.Random(rng.random()))) for _ in range(HTTP_CLIENTS)]
    threads.append(threading.Thread(target=admin, args=(sock, stop, good, bad, random.Random(3))))
    t0 = time.time()
    for t in threads:
        t.start()
    rss_samples = []
    while time.time() - t0 < SECONDS:
        time.sleep(2)
        rss_samples.append((time.time() - t0, rss_kb(daemon.pid)))
        if daemon.poll() is not None:
            break
    stop.set()
    for t in threads:
        t.join()
    crashed = daemon.poll() is not None
    blocks_used = None
    if not crashed:
        c = Conn(sock)
        s = c.call("stats")
        c.close()
        kv = (s or {}).get("result", {}).get("kv_cache") or {}
        blocks_used = kv.get("num_blocks_used")
        # SIGTERM while a last batch of requests runs: each must still get a reply (completed or unavailable).
        finals = []
        def final_request(i):
            try:
                fc = Conn(sock)
                count("sent")
                tally(fc.call("generate", {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 24, "stream": True}))
                fc.close()
            except OSError as e:
                count("lost"); error("final: " + str(e)[:40])
        finals = [threading.Thread(target=final_request, args=(i,)) for i in range(4)]
        for t in finals:
            t.start()
        time.sleep(0.3)
        peak = rss_kb(daemon.pid, "VmHWM")
        daemon.send_signal(signal.SIGTERM)
        for t in finals:
            t.join()
        rc = daemon.wait(timeout=120)
    else:
        peak, rc = None, daemon.returncode
    warm = [kb for t, kb in rss_samples if kb and t >= SECONDS / 4]
    print("soak: %.0f s, %d socket clients, %d HTTP clients%s, reload storm and set-kv-dtype switches"
          % (time.time() - t0, SOCKET_CLIENTS, HTTP_CLIENTS if has_http else 0, "" if has_http else " (no HTTP API in this build)"))
    print("requests: sent %d, completed %d, disconnected by the client %d, lost %d"
          % (counts["sent"], counts["completed"], counts["disconnected_by_client"], counts["lost"]))
    print("admin: reloads ok %d, refused %d, set-kv-dtype %d, lost %d"
          % (counts.get("admin_reload_ok", 0), counts.get("admin_reload_refused", 0), counts.get("admin_set_kv_dtype", 0), counts.get("admin_lost", 0)))
    for key in sorted(k for k in counts if k.startswith("admin_refused_")):
        print(f"  reload refused: {counts[key]} × {key[len('admin_refused_'):]}")
    for reason, n in sorted(errors.items(), key=lambda kv: -kv[1]):
        print(f"  errored: {n} × {reason}")
    if warm:
        print("rss: peak %s MiB; after warm-up %.0f MiB, at the end %.0f MiB" % (peak and peak // 1024, warm[0] / 1024, warm[-1] / 1024))
    print("kv blocks in use at the end:", blocks_used, "; kvantd exit status:", rc, "(crashed)" if crashed else "")
    if counts.get("unexpected", 0):
        print("unexpected HTTP errors (not 200/429/503):", counts["unexpected"])
    failed = crashed or counts["lost"] > 0 or counts.get("unexpected", 0) > 0 or counts.get("admin_lost", 0) > 0 or (blocks_used or 0) != 0 or rc != 0
    print("soak:", "FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
