#!/usr/bin/env python3
"""Chunked prefill benchmark: while a long prompt is admitted, how long does an already running stream
stall? One streaming client (A) generates (greedy, ignore_eos); once it has produced 16 tokens, a second
client (B) sends a ~4000-token prompt (GPL-3 text, max_tokens 1). Reported per server configuration:
the longest gap between two of A's tokens from B's arrival until B's answer (median over repeats), A's
median gap before B arrived, and B's time to answer (its prefill). Configurations run interleaved per
repeat: kvantd at several --max-num-batched-tokens (8192 = the whole prompt in one step, as before
chunked prefill) and llama.cpp's llama-server with 2 slots (-np 2: continuous batching), same GGUF,
threads and KV type (int8_pertoken / q8_0).

    scripts/bench_chunked_prefill.py [--model M] [--threads 2] [--budgets 64,128,256,512,8192]
                                     [--repeats 3] [--prompt-tokens 4000] [--llama-server PATH]

Timing depends on the machine's load (recorded in the output); run it in `make bench`, not in tests.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_http import common_arguments, find_llama_server, free_port, wait_healthy  # noqa: E402


class Stream(threading.Thread):
    """A streamed /v1/completions request whose token arrival times are recorded until stopped."""

    def __init__(self, port, body):
        super().__init__(daemon=True)
        self.port, self.body = port, body
        self.times = []
        self.sock = None
        self.stopped = False

    def run(self):
        data = json.dumps(self.body).encode()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=600)
        self.sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        f = self.sock.makefile("rb")
        try:
            while not self.stopped:
                line = f.readline()
                if not line:
                    break
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    continue
                if any(c.get("text") for c in chunk.get("choices", [])):
                    self.times.append(time.perf_counter())
        except OSError:
            pass

    def stop(self):
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def post(port, body):
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=900)
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    raw = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        raw += b
    s.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head[:200]
    return json.loads(body[body.index(b"{"):body.rindex(b"}") + 1])


def measure(port, long_prompt, short_prompt):
    a = Stream(port, {"prompt": short_prompt, "max_tokens": 4000, "temperature": 0, "ignore_eos": True, "stream": True})
    a.start()
    while len(a.times) < 16:
        if not a.is_alive():
            raise RuntimeError("stream A ended early")
        time.sleep(0.005)
    before = [y - x for x, y in zip(a.times, a.times[1:])]
    t_b = time.perf_counter()
    answer = post(port, {"prompt": long_prompt, "max_tokens": 1, "temperature": 0})
    t_done = time.perf_counter()
    n = len(a.times)
    while len(a.times) < n + 3 and a.is_alive():   # A's first token after B's answer closes the last gap
        time.sleep(0.005)
    a.stop()
    times = list(a.times)
    during = [t for t in times if t >= t_b]
    last_before = max((t for t in times if t < t_b), default=t_b)
    points = [last_before] + [t for t in during if t <= t_done] + [t for t in during if t > t_done][:1]
    gaps = [y - x for x, y in zip(points, points[1:])]
    return {"max_gap": max(gaps) if gaps else float("nan"), "gap_before": statistics.median(before),
            "b_seconds": t_done - t_b, "prompt_tokens": answer["usage"]["prompt_tokens"],
            "tokens_during": len([t for t in during if t <= t_done])}


def main():
    ap = argparse.ArgumentParser()
    common_arguments(ap)
    ap.add_argument("--budgets", default="64,128,256,512,8192")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=4000)
    args = ap.parse_args()
    model = os.path.realpath(args.model)
    llama = find_llama_server(args.llama_server, "bench-chunked-prefill")
    text = open("/usr/share/common-licenses/GPL-3").read()
    long_prompt = (text * 2)[:int(args.prompt_tokens * 4.75)]   # ≈ 4.75 characters per Gemma token on this text
    short_prompt = "The GNU General Public License is"
    configs = [("kvant", int(b)) for b in args.budgets.split(",")] + ([("llama", 0)] if llama else [])

    def start(which, budget):
        port = free_port()
        log = tempfile.NamedTemporaryFile("w", prefix=f"bench-chunk-{which}-", suffix=".log", delete=False)
        if which == "kvant":
            work = tempfile.mkdtemp(prefix="bench-chunk-")
            cmd = [args.kvantd, "--socket", os.path.join(work, "kvantd.sock"), "--port", str(port), "--model", model,
                   "--allowed-dir", os.path.dirname(model), "--threads", args.threads, "--kv-cache-dtype", "int8_pertoken",
                   "--max-num-batched-tokens", str(budget), "--log-level", "warning"]
        else:
            cmd = [llama, "-m", model, "-t", args.threads, "--host", "127.0.0.1", "--port", str(port), "-np", "2",
                   "-c", "16384", "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        wait_healthy(port, proc, which)
        post(port, {"prompt": short_prompt, "max_tokens": 4, "temperature": 0})   # warm-up
        return proc, port

    results = {c: [] for c in configs}
    loads = []
    for _ in range(args.repeats):
        for which, budget in configs:
            proc, port = start(which, budget)
            try:
                loads.append(os.getloadavg()[0])
                results[(which, budget)].append(measure(port, long_prompt, short_prompt))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    load = f"{min(loads):.1f}–{max(loads):.1f}"
    tokens = results[configs[0]][0]["prompt_tokens"]
    print(f"Chunked prefill: a running stream's longest gap between two tokens while a {tokens}-token prompt is "
          f"admitted; {os.path.basename(model)}, {args.threads} threads, KV int8_pertoken / q8_0, median of "
          f"{args.repeats} interleaved repeats (min–max); {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
          f"load {load}")
    print()
    print("| server | longest gap ms | stream's gap before ms | tokens of the stream during the prefill | long prompt answered s |")
    print("|---|---:|---:|---:|---:|")
    for which, budget in configs:
        rs = results[(which, budget)]
        name = (f"kvantd --max-num-batched-tokens {budget}" + (" (whole prompt in one step, as before)" if budget >= tokens else "")
                if which == "kvant" else "llama-server -np 2 (defaults: -b 2048 -ub 512)")
        def cell(key, scale=1000.0, fmt="{:.0f}"):
            v = sorted(r[key] * scale for r in rs)
            return f"{fmt.format(statistics.median(v))} ({fmt.format(v[0])}–{fmt.format(v[-1])})"
        print(f"| {name} | {cell('max_gap')} | {cell('gap_before')} | {cell('tokens_during', 1, '{:.0f}')} | "
              f"{cell('b_seconds', 1, '{:.1f}')} |")


if __name__ == "__main__":
    main()
