#!/usr/bin/env bash
# KV-cache memory and peak RSS at 32 768 tokens of capacity (issue 15's benchmark), Kvant next to
# llama.cpp's own llama-server on the same GGUF:
#   - Kvant: kvantd with an int8_pertoken pool sized to hold one 32 768-token sequence (its sliding-window
#     layers keep only their window); `stats` gives capacity_tokens and the bytes; then one long
#     generate (a ~32 000-token GPL-3 prompt, 32 greedy tokens) and the daemon's VmHWM.
#   - llama.cpp: llama-server -c 32768 with a q8_0 K and V cache (flash attention, which its quantized V
#     needs; default SWA cache), its KV buffer sizes from its log, the same prompt text, its VmHWM.
# Optional: KVANTD_BEFORE=/path/to/an/older/kvantd adds a row for a build without sliding-window freeing
# (its pool sized to 32 768 tokens of every layer).
# Env: KVANT_MODEL, THREADS (2), CAPACITY (32768; a multiple of 16, >= 2048, for a quicker run), LLAMA_BIN (directory of llama-server; default ~/.cache/kvant/llama.cpp-0.3.36/build/bin).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
model=${KVANT_MODEL:-$here/models/gemma-3-270m-q4_k_m.gguf}
model=$(readlink -f "$model")
threads=${THREADS:-2}
llama_bin=${LLAMA_BIN:-$HOME/.cache/kvant/llama.cpp-0.3.36/build/bin}
kvantd=.build/release/kvantd
[ -x "$kvantd" ] || scripts/swiftw build -c release --product kvantd
exec python3 - "$model" "$threads" "$llama_bin" "$here/$kvantd" "${KVANTD_BEFORE:-}" "${CAPACITY:-32768}" <<'PY'
import json, os, re, signal, socket, subprocess, sys, tempfile, time, urllib.request

model, threads, llama_bin, kvantd, before = sys.argv[1:6]
CAPACITY = int(sys.argv[6])
text = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()
tmp = tempfile.mkdtemp(prefix="kvant-bench-memory.")

def vm(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0

class Daemon:
    def __init__(self, binary, kv_bytes):
        self.sock = os.path.join(tmp, f"kvantd-{time.time_ns()}.sock")
        self.log = open(os.path.join(tmp, "kvantd.log"), "w")
        self.proc = subprocess.Popen([binary, "--socket", self.sock, "--allowed-dir", os.path.dirname(model),
                                      "--kv-cache-bytes", str(kv_bytes), "--threads", threads, "--log-level", "notice"],
                                     stderr=self.log)
        for _ in range(200):
            if os.path.exists(self.sock): break
            time.sleep(0.05)
        self.id = 0

    def call(self, method, params=None):
        self.id += 1
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.sock)
            msg = {"jsonrpc": "2.0", "id": self.id, "method": method}
            if params is not None: msg["params"] = params
            s.sendall((json.dumps(msg) + "\n").encode())
            buf = b""
            while True:
                chunk = s.recv(1 << 20)
                if not chunk: raise RuntimeError(f"{method}: connection closed")
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    reply = json.loads(line)
                    if reply.get("id") != self.id: continue   # notifications
                    if "error" in reply: raise RuntimeError(f"{method}: {reply['error']['message']}")
                    return reply["result"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

def prompt_for(d, target):
    """A prefix of GPL-3 repeated, of at most `target` tokens (Gemma's tokenizer, BOS included)."""
    long_text = text * 5
    ratio = len(d.call("tokenize", {"text": text})["tokens"]) / len(text)
    n = int(target / ratio)
    while True:
        p = long_text[:n]
        count = len(d.call("tokenize", {"text": p})["tokens"])
        if count <= target: return p, count
        n = int(n * target / count * 0.995)

def kvant(binary, kv_bytes, label, prompt=None):
    d = Daemon(binary, kv_bytes)
    try:
        d.call("load-model", {"path": model, "kv_cache_dtype": "int8_pertoken", "max_model_len": CAPACITY})
        kv = d.call("stats")["kv_cache"]
        if prompt is None: prompt = prompt_for(d, CAPACITY - 800)
        rss_loaded = vm(d.proc.pid, "VmRSS")
        t = time.time()
        r = d.call("generate", {"prompt": prompt[0], "max_tokens": 32, "temperature": 0})
        secs = time.time() - t
        hwm = vm(d.proc.pid, "VmHWM")
        return dict(label=label, kv_bytes=kv_bytes, capacity=kv["capacity_tokens"], bpt=kv.get("bytes_per_token"),
                    bpt_all=kv.get("bytes_per_token_all_layers"), blocks=kv["num_blocks"],
                    prompt_tokens=r["prompt_tokens"], completion=r["completion_tokens"], secs=secs,
                    rss_loaded=rss_loaded, hwm=hwm), prompt
    finally:
        d.stop()

def llama(prompt_text):
    log_path = os.path.join(tmp, "llama-server.log")
    port = 18000 + os.getpid() % 1000
    env = dict(os.environ, LD_LIBRARY_PATH=llama_bin)
    with open(log_path, "w") as log:
        p = subprocess.Popen([os.path.join(llama_bin, "llama-server"), "-m", model, "-c", str(CAPACITY), "-np", "1",
                              "-t", threads, "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on", "--host", "127.0.0.1",
                              "--port", str(port), "--no-webui", "-lv", "4"],   # -lv 4: its KV buffer sizes in the log
                             stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read(); break
            except Exception: time.sleep(0.2)
        rss_loaded = vm(p.pid, "VmRSS")
        body = json.dumps({"prompt": prompt_text, "n_predict": 32, "temperature": 0, "cache_prompt": False}).encode()
        t = time.time()
        r = json.loads(urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body,
                       headers={"Content-Type": "application/json"}), timeout=3600).read())
        secs = time.time() - t
        hwm = vm(p.pid, "VmHWM")
    finally:
        p.send_signal(signal.SIGTERM); p.wait(timeout=60)
    log = open(log_path).read()
    # "llama_kv_cache: size =   51.00 MiB ( 32768 cells,   3 layers, ...": one line per cache (non-SWA, SWA).
    caches = [(float(m), int(c), int(l)) for m, c, l in
              re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers", log)]
    full = [c for c in caches if c[1] == CAPACITY]
    return dict(kv_mib=sum(c[0] for c in caches), kv_lines=[l.strip() for l in log.splitlines() if "llama_kv_cache: size" in l],
                bpt=round(full[0][0] * MiB / CAPACITY) if full else None, prompt_tokens=r.get("tokens_evaluated") or r.get("timings", {}).get("prompt_n"),
                completion=r.get("tokens_predicted"), secs=secs, rss_loaded=rss_loaded, hwm=hwm)

MiB = 1 << 20
# Kvant: the pool for one CAPACITY-token sequence. page = 3 layers × 16 positions × 520 bytes (int8_pertoken,
# head_dim 256, 1 KV head); full-attention group CAPACITY / 16 blocks + 5 window groups × 64 blocks (window 512
# plus one 512-token prefill micro-batch): 2368 blocks for 32 768 tokens.
page = 3 * 16 * 520
rows = []
after, prompt = kvant(kvantd, (CAPACITY // 16 + 5 * 64) * page, "Kvant int8_pertoken, sliding-window layers keep their window")
rows.append(after)
if before:
    rows.append(kvant(before, CAPACITY * 18 * 520, "Kvant int8_pertoken, every layer keeps every position (before)", prompt)[0])
ll = llama(prompt[0])

print(f"Model {os.path.basename(model)}, {threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
      f"{os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[0]}")
print()
print(f"| server, KV cache | KV pool for {CAPACITY} tokens | capacity_tokens | bytes_per_token (beyond the windows) | prompt + generated tokens | RSS after load | peak RSS (VmHWM) | request s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['label']} | {r['kv_bytes'] / MiB:.1f} MiB | {r['capacity']} | {r['bpt']} (all layers {r['bpt_all'] or r['bpt']}) | "
          f"{r['prompt_tokens']} + {r['completion']} | {r['rss_loaded'] / 1e6:.0f} MB | {r['hwm'] / 1e6:.0f} MB | {r['secs']:.1f} |")
print(f"| llama-server q8_0 K+V (flash attn, SWA cache) | {ll['kv_mib']:.1f} MiB | {CAPACITY} | {ll['bpt']} (non-SWA layers) | "
      f"{ll['prompt_tokens']} + {ll['completion']} | {ll['rss_loaded'] / 1e6:.0f} MB | {ll['hwm'] / 1e6:.0f} MB | {ll['secs']:.1f} |")
print()
print("llama-server's KV buffers: " + "; ".join(ll["kv_lines"]))
PY
