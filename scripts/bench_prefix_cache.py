#!/usr/bin/env python3
"""Prefix-cache benchmark: time to first token (TTFT) of a request whose first ~1000 tokens were seen
before, against the same request cold, Kvant (kvantd's automatic prefix caching, on by default) next to
llama.cpp's own llama-server (one slot, `cache_prompt: true`: it reuses the slot's cached prefix), same
GGUF, threads and KV type.

Each run uses a document never seen before (a run tag first, then ~1000 tokens of GPL-3 from a run-specific
offset): a cold request (document + question A) and then a warm one (the same document + question B). TTFT is
measured as a streaming client sees it (request sent → first chunk with text). Runs alternate Kvant /
llama-server; medians and min–max are reported, and Kvant's `stats` prefix_cache_hits must show the hits.

    scripts/bench_prefix_cache.py [--model M] [--threads 2] [--runs 5] [--prefix-tokens 1000] [--kv fp16|int8|int4]

llama-server comes from ~/.cache/kvant/llama.cpp-0.3.36/build/bin (or --llama-server); without it only Kvant
is measured. Prints a Markdown table (paste into BENCHMARKS.md with the machine conditions).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_http import common_arguments, find_llama_server, free_port, stream_request, wait_healthy  # noqa: E402

QUESTIONS = ["\n\nQuestion: who may copy this program?\nAnswer:", "\n\nQuestion: what must a distributor provide?\nAnswer:"]


def control(sock, method, params=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(sock)
    s.sendall((json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}) + "\n").encode())
    f = s.makefile("rb")
    msg = json.loads(f.readline())
    f.close()
    s.close()
    if "error" in msg:
        raise RuntimeError(f"{method}: {msg['error']}")
    return msg["result"]


def main():
    ap = argparse.ArgumentParser()
    common_arguments(ap)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--kv", choices=["fp16", "int8", "int4"], default="fp16")
    args = ap.parse_args()
    model = os.path.realpath(args.model)
    llama = find_llama_server(args.llama_server, "bench-prefix-cache")
    kv_dtype = {"fp16": "fp16", "int8": "int8_pertoken", "int4": "int4_pertoken"}[args.kv]
    llama_kv = {"fp16": "f16", "int8": "q8_0", "int4": "q4_0"}[args.kv]
    text = open("/usr/share/common-licenses/GPL-3").read()

    # Kvant and llama-server both stay up for the whole benchmark; runs alternate between them.
    work = tempfile.mkdtemp(prefix="bench-prefix-")
    sock = os.path.join(work, "kvantd.sock")
    procs = {}
    ports = {}
    log = open(os.path.join(work, "kvantd.log"), "w")
    ports["kvant"] = free_port()
    procs["kvant"] = subprocess.Popen(
        [args.kvantd, "--socket", sock, "--port", str(ports["kvant"]), "--model", model, "--allowed-dir", os.path.dirname(model),
         "--threads", args.threads, "--kv-cache-dtype", kv_dtype, "--kv-cache-bytes", str(256 << 20),
         "--log-level", "warning"], stdout=log, stderr=log)
    if llama:
        llog = open(os.path.join(work, "llama-server.log"), "w")
        ports["llama"] = free_port()
        procs["llama"] = subprocess.Popen(
            [llama, "-m", model, "-t", args.threads, "--host", "127.0.0.1", "--port", str(ports["llama"]), "-np", "1",
             "-c", "4096", "-ctk", llama_kv, "-ctv", llama_kv, "-fa", "on"], stdout=llog, stderr=llog)
    try:
        for which, proc in procs.items():
            wait_healthy(ports[which], proc, which)

        def document(run):
            # A run tag first, so no block of one run's document is a prefix of another's; then GPL-3 cut to
            # --prefix-tokens tokens (Kvant's tokenizer; llama.cpp's gives the same count for this model).
            start = 3000 + run * 2500
            doc = f"Document {run} of the license corpus ({time.time_ns()}).\n" + text[start:start + args.prefix_tokens * 6]
            ids = control(sock, "tokenize", {"text": doc})["tokens"]
            lo, hi = 0, len(doc)
            while lo + 1 < hi:   # the longest cut with at most prefix_tokens tokens
                mid = (lo + hi) // 2
                if len(control(sock, "tokenize", {"text": doc[:mid]})["tokens"]) <= args.prefix_tokens:
                    lo = mid
                else:
                    hi = mid
            doc = doc[:lo]
            return doc, len(control(sock, "tokenize", {"text": doc})["tokens"]), len(ids)

        def ttft(which, prompt):
            body = {"prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": True, "ignore_eos": True}
            if which == "llama":
                body["cache_prompt"] = True
            first, _, _ = stream_request(ports[which], body)
            return first

        # Warm-up (page in weights, first allocations), not measured.
        for which in procs:
            ttft(which, text[:400])
        cold = {w: [] for w in procs}
        warm = {w: [] for w in procs}
        hits0 = control(sock, "stats")["kv_cache"]["prefix_cache_hits"]
        prefix_lengths = []
        for run in range(args.runs):
            for which in procs:
                doc, n, _ = document(run * 2 + (which == "llama"))
                prefix_lengths.append(n)
                cold[which].append(ttft(which, doc + QUESTIONS[0]))
                warm[which].append(ttft(which, doc + QUESTIONS[1]))
        hits = control(sock, "stats")["kv_cache"]["prefix_cache_hits"] - hits0
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(60)

    load = open("/proc/loadavg").read().split()[0]
    print(f"Prefix cache: TTFT of a request whose first {min(prefix_lengths)}–{max(prefix_lengths)} tokens were seen before "
          f"(same document, another question) vs the same request cold; {os.path.basename(model)}, {args.threads} threads, "
          f"KV {kv_dtype} / {llama_kv}, streamed /v1/completions, {args.runs} runs alternating servers, median (min–max); "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load {load}. Kvant stats: {hits} prefix-cache hit tokens "
          f"over {args.runs} warm requests.")
    print()
    print("| server | cold TTFT ms | warm TTFT ms | cold / warm |")
    print("|---|---:|---:|---:|")
    names = {"kvant": "Kvant (prefix caching, default on)", "llama": "llama-server (-np 1, cache_prompt)"}
    for which in procs:
        c, w = cold[which], warm[which]
        print(f"| {names[which]} | {statistics.median(c) * 1000:.0f} ({min(c) * 1000:.0f}–{max(c) * 1000:.0f}) | "
              f"{statistics.median(w) * 1000:.1f} ({min(w) * 1000:.1f}–{max(w) * 1000:.1f}) | "
              f"{statistics.median(c) / statistics.median(w):.1f}× |")


if __name__ == "__main__":
    main()
