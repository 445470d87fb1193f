#!/usr/bin/env python3
"""HTTP-path benchmark: Kvant (kvantd's OpenAI API) next to llama.cpp's own llama-server on the same
GGUF, threads and KV type. Streaming /v1/completions clients at 1, 4, 8 and 16 concurrent streams
report aggregate generated tokens/s and time to first token (median over clients and repeats); each
request generates exactly max_tokens (ignore_eos, greedy). Servers run one at a time, interleaved per
repeat (kvant, llama, kvant, llama, …), on a quiet machine. Also: the HTTP layer's own overhead, the
mean inter-token gap of one stream over HTTP minus the same request over the control socket.

    scripts/bench_http.py [--model M] [--threads 2] [--levels 1,4,8,16] [--repeats 2]
                          [--prompt-tokens 128] [--max-tokens 64] [--kv fp16|int8]

llama-server comes from --llama-server, else from where scripts/llama-cpp.sh builds it
($KVANT_CACHE, default ~/.cache/kvant, /llama.cpp-0.3.36/build/bin); without it only Kvant is measured.
Prints a Markdown table (paste into BENCHMARKS.md with the command line and machine conditions).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def common_arguments(ap):
    """The options every server benchmark takes: --model, --kvantd, --llama-server, --threads."""
    ap.add_argument("--model", default=os.path.join(HERE, "models/gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--kvantd", default=os.path.join(HERE, ".build/release/kvantd"))
    ap.add_argument("--llama-server")
    ap.add_argument("--threads", default="2")


def find_llama_server(path, who):
    """`path` (--llama-server), else the llama-server scripts/llama-cpp.sh builds ($KVANT_CACHE, default
    ~/.cache/kvant); None, after saying so on stderr, when it is missing (only Kvant is measured then)."""
    if not path:
        cache = os.environ.get("KVANT_CACHE", os.path.expanduser("~/.cache/kvant"))
        path = os.path.join(cache, "llama.cpp-0.3.36", "build", "bin", "llama-server")
    if not os.path.exists(path):
        print(f"{who}: {path} not found; measuring Kvant only", file=sys.stderr)
        return None
    return path


def wait_healthy(port, proc, what, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).split()[1] == b"200":
                s.close()
                return
            s.close()
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not healthy after {timeout} s")


def stream_request(port, body):
    """One streamed completion; returns (seconds to first text, generated tokens, token arrival times)."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=600)
    t0 = time.perf_counter()
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    f = s.makefile("rb")
    status = f.readline()
    assert b" 200 " in status, status
    while f.readline() not in (b"\r\n", b""):
        pass
    first, tokens, times = None, 0, []
    buf = b""
    while True:
        line = f.readline()
        if not line:
            break
        buf += line
        if not buf.startswith(b"data: "):
            buf = b""   # chunk-size lines of the chunked encoding
            continue
        if not buf.endswith(b"\n"):
            continue
        payload = buf[6:].strip()
        buf = b""
        if payload == b"[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            continue
        for choice in chunk.get("choices", []):
            if choice.get("text"):
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                times.append(now)
        usage = chunk.get("usage")
        if usage:
            tokens = usage.get("completion_tokens", tokens)
    f.close()
    s.close()
    return first, tokens or len(times), times


def run_level(port, prompt, clients, max_tokens, requests_per_client):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    ttfts, totals = [], []
    lock = threading.Lock()

    def client():
        for _ in range(requests_per_client):
            first, tokens, _ = stream_request(port, body)
            with lock:
                ttfts.append(first)
                totals.append(tokens)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(totals) / wall, statistics.median(ttfts)


def control_gaps(sock, prompt, max_tokens):
    """Mean gap between generate.token notifications of one streamed generate on the control socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall((json.dumps({"jsonrpc": "2.0", "id": 1, "method": "generate", "params": {
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}}) + "\n").encode())
    f = s.makefile("rb")
    times = []
    while True:
        msg = json.loads(f.readline())
        if msg.get("method") == "generate.token":
            times.append(time.perf_counter())
        elif msg.get("id") == 1:
            break
    s.close()
    return statistics.mean(b - a for a, b in zip(times, times[1:]))


def main():
    ap = argparse.ArgumentParser()
    common_arguments(ap)
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--kv", choices=["fp16", "int8"], default="fp16")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    model = os.path.realpath(args.model)
    llama = find_llama_server(args.llama_server, "bench-http")
    # A prompt of about --prompt-tokens tokens of GPL-3 (≈ 4 characters per token).
    text = open("/usr/share/common-licenses/GPL-3").read()
    prompt = text[:args.prompt_tokens * 4]
    n_par = max(levels)
    ctx_per_seq = args.prompt_tokens * 2 + args.max_tokens + 64
    kv_dtype = {"fp16": "fp16", "int8": "int8_pertoken"}[args.kv]
    llama_kv = {"fp16": "f16", "int8": "q8_0"}[args.kv]

    def start(which):
        port = free_port()
        log = tempfile.NamedTemporaryFile("w", prefix=f"bench-{which}-", suffix=".log", delete=False)
        if which == "kvant":
            work = tempfile.mkdtemp(prefix="bench-kvant-")
            sock = os.path.join(work, "kvantd.sock")
            cmd = [args.kvantd, "--socket", sock, "--port", str(port), "--model", model, "--allowed-dir", os.path.dirname(model),
                   "--threads", args.threads, "--kv-cache-dtype", kv_dtype,
                   "--kv-cache-bytes", str(512 << 20), "--log-level", "warning"]
            cfg = os.path.join(work, "kvantd.toml")
            with open(cfg, "w") as c:
                c.write(f"max_num_seqs = {n_par}\nmax_queued_requests = 256\n")
            cmd += ["--config", cfg]
        else:
            sock = None
            cmd = [llama, "-m", model, "-t", args.threads, "--host", "127.0.0.1", "--port", str(port), "-np", str(n_par),
                   "-c", str(ctx_per_seq * n_par), "-ctk", llama_kv, "-ctv", llama_kv, "-fa", "on"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        wait_healthy(port, proc, which)
        return proc, port, sock

    servers = ["kvant"] + (["llama"] if llama else [])
    results = {(s, c): [] for s in servers for c in levels}
    overhead = []
    for rep in range(args.repeats):
        for which in servers:
            proc, port, sock = start(which)
            try:
                run_level(port, prompt, 1, 4, 1)   # warm-up
                for c in levels:
                    results[(which, c)].append(run_level(port, prompt, c, args.max_tokens, args.requests_per_client))
                if which == "kvant":
                    _, _, times = stream_request(port, {"prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
                                                        "stream": True, "ignore_eos": True})
                    http_gap = statistics.mean(b - a for a, b in zip(times, times[1:]))
                    overhead.append((http_gap, control_gaps(sock, prompt, args.max_tokens)))
            finally:
                proc.terminate()
                proc.wait(60)

    load = open("/proc/loadavg").read().split()[0]
    print(f"HTTP path, {os.path.basename(model)}, {args.threads} threads, KV {kv_dtype} / {llama_kv}, prompt ≈{args.prompt_tokens} tokens, "
          f"{args.max_tokens} generated per request (ignore_eos, greedy), {args.requests_per_client} requests per client, "
          f"median of {args.repeats} interleaved repeats; {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load {load}")
    print()
    head = "| concurrent streams | Kvant tok/s | Kvant TTFT ms |"
    sep = "|---:|---:|---:|"
    if llama:
        head += " llama-server tok/s | llama-server TTFT ms | tok/s ratio |"
        sep += "---:|---:|---:|"
    print(head)
    print(sep)
    for c in levels:
        k_tps = statistics.median(r[0] for r in results[("kvant", c)])
        k_ttft = statistics.median(r[1] for r in results[("kvant", c)]) * 1000
        row = f"| {c} | {k_tps:.1f} | {k_ttft:.0f} |"
        if llama:
            l_tps = statistics.median(r[0] for r in results[("llama", c)])
            l_ttft = statistics.median(r[1] for r in results[("llama", c)]) * 1000
            row += f" {l_tps:.1f} | {l_ttft:.0f} | {k_tps / l_tps:.2f}× |"
        print(row)
    http = statistics.median(o[0] for o in overhead) * 1000
    ctl = statistics.median(o[1] for o in overhead) * 1000
    print()
    print(f"HTTP layer overhead, one stream: mean inter-token gap {http:.2f} ms over HTTP vs {ctl:.2f} ms over the control socket "
          f"({http - ctl:+.2f} ms per token)")


if __name__ == "__main__":
    main()
