#!/usr/bin/env python3
"""`make bench`: Kvant's speed next to llama.cpp's own binaries, interleaved runs, medians, ratios.

Every comparison runs Kvant (`kvant-eval speed`, which measures exactly what the llama.cpp tool beside it
measures) and llama.cpp's own tool (`llama-bench`, `llama-batched-bench`, built by scripts/llama-cpp.sh) on the
same GGUF with the same threads, alternating A B A B (one process per run, each with its own warm-up), RUNS runs
each. Reported: median and min–max tokens/s of the runs, the ratio of the medians (Kvant / llama.cpp; above 1 =
Kvant faster), the 1-minute load average before each case, the CPU model.

Cases (llama.cpp with flash attention, `-fa 1`, its fastest setting and the one its q8_0 V cache needs):
  tg128, tg128 @ d512, tg128 @ d4096, tg128 @ d8192
                                         for Kvant fp16 / llama.cpp f16 and Kvant int8_pertoken / llama.cpp q8_0
                                         (@ d512 and @ d8192 also Kvant int4_pertoken / llama.cpp q4_0)
  pp512, pp4096                          fp16 / f16
  batched decode, 1 and 8 streams        llama-batched-bench -npp 512 -ntg 128 -npl 1 / -npl 8
  tg128 with one core busy               another process spinning a core (a Python busy loop), fp16 / f16
and the decode bound: bytes read per generated token (every weight tensor of the GGUF once, the output head
included, plus the K/V cells attended at that depth) against a measured memory read bandwidth
(scripts/bench/membw.c, the engines' thread count, 512 MiB).

llama-bench semantics, which kvant-eval's `speed` reproduces: `-p 512 -n 128` are two separate tests, pp512 (a
512-token prompt from an empty cache) and tg128 (128 one-token decode steps from an EMPTY cache: positions
0..127, not after the prompt); `-d D` first fills the cache with D tokens, untimed, and times the test after them.
Tokens are BOS then random ids. Each test starts with a warm-up (the prompt run for pp, one token for tg).
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))


def loadavg():
    return open("/proc/loadavg").read().split()[:3]


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run(cmd, env=None, timeout=1800):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {p.returncode}:\n{p.stderr[-2000:]}")
    return p.stdout, p.stderr


def json_lines(text, key):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and key in line:
            out.append(json.loads(line))
    return out


class Case:
    """One comparison: a Kvant command and a llama.cpp command, each yielding tokens/s for one run."""

    def __init__(self, name, kvant_kv, llama_kv, kvant_cmd, llama_cmd, kvant_parse, llama_parse, kind, depth=0, busy=False):
        self.name, self.kvant_kv, self.llama_kv = name, kvant_kv, llama_kv
        self.kvant_cmd, self.llama_cmd = kvant_cmd, llama_cmd
        self.kvant_parse, self.llama_parse = kvant_parse, llama_parse
        self.kind, self.depth, self.busy = kind, depth, busy
        self.kvant, self.llama, self.load = [], [], []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--kvant-eval", required=True)
    ap.add_argument("--llama-bin", required=True, help="bin dir of llama.cpp's tools (scripts/llama-cpp.sh)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gen", type=int, default=128, help="decode steps per tg test")
    ap.add_argument("--only", default="", help="comma-separated case-name substrings to run, or =NAME for exactly "
                    "that case, e.g. '=tg128,pp' (default: all)")
    ap.add_argument("--out", required=True, help="results file (Markdown); raw samples go to OUT.jsonl")
    a = ap.parse_args()
    if a.runs < 1:
        sys.exit("--runs must be ≥ 1")
    T, n = a.threads, a.gen
    kv = [a.kvant_eval, "speed", "--model", a.model, "--threads", str(T)]
    lb = [os.path.join(a.llama_bin, "llama-bench"), "-m", a.model, "-t", str(T), "-fa", "1", "-r", "1", "-o", "jsonl"]
    lbb = [os.path.join(a.llama_bin, "llama-batched-bench"), "-m", a.model, "-t", str(T), "-tb", str(T), "-fa", "on",
           "-c", "8192", "-b", "2048", "-ub", "512", "--output-format", "jsonl"]

    def p_kvant(out, err):
        return json_lines(out, "avg_ts")[-1]["avg_ts"]

    def p_llama(out, err):
        return json_lines(out, "avg_ts")[-1]["avg_ts"]

    def p_kvant_b(out, err):
        return json_lines(out, "speed_tg")[-1]["speed_tg"]

    def p_llama_b(out, err):
        return json_lines(out + "\n" + err, "speed_tg")[-1]["speed_tg"]

    pairs = [("fp16", "f16"), ("int8_pertoken", "q8_0"), ("int4_pertoken", "q4_0")]
    cases = []
    for d in (0, 512, 4096, 8192):
        for kd, ld in pairs:
            if kd == "int4_pertoken" and d not in (512, 8192):
                continue   # issue 16's goal is at depth 8192
            name = f"tg{n}" + (f" @ d{d}" if d else "")
            cases.append(Case(name, kd, ld,
                              kv + ["--kv-cache-dtype", kd, "--n-prompt", "0", "--n-gen", str(n), "--n-depth", str(d)],
                              lb + ["-ctk", ld, "-ctv", ld, "-p", "0", "-n", str(n), "-d", str(d)],
                              p_kvant, p_llama, "tg", depth=d))
    for p in (512, 4096):
        cases.append(Case(f"pp{p}", "fp16", "f16",
                          kv + ["--kv-cache-dtype", "fp16", "--n-prompt", str(p), "--n-gen", "0"],
                          lb + ["-ctk", "f16", "-ctv", "f16", "-p", str(p), "-n", "0"],
                          p_kvant, p_llama, "pp"))
    for pl in (1, 8):
        cases.append(Case(f"batched decode, {pl} stream{'s' if pl > 1 else ''} (pp512 + tg128 each)", "fp16", "f16",
                          kv + ["--kv-cache-dtype", "fp16", "--batched", "--parallel", str(pl), "--n-prompt", "512", "--n-gen", "128"],
                          lbb + ["-ctk", "f16", "-ctv", "f16", "-npp", "512", "-ntg", "128", "-npl", str(pl)],
                          p_kvant_b, p_llama_b, "batched"))
    cases.append(Case(f"tg{n}, one core busy", "fp16", "f16",
                      kv + ["--kv-cache-dtype", "fp16", "--n-prompt", "0", "--n-gen", str(n)],
                      lb + ["-ctk", "f16", "-ctv", "f16", "-p", "0", "-n", str(n)],
                      p_kvant, p_llama, "tg", busy=True))
    if a.only:
        keys = [k.strip() for k in a.only.split(",") if k.strip()]
        cases = [c for c in cases if any(c.name == k[1:] if k.startswith("=") else k in c.name for k in keys)]

    started = datetime.datetime.now(datetime.timezone.utc)
    load0 = loadavg()
    commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    stamp = {}
    try:
        for line in open(os.path.join(os.path.dirname(a.llama_bin), "kvant-stamp")):
            k, _, v = line.strip().partition("=")
            stamp[k] = v
    except OSError:
        pass
    raw = open(a.out + ".jsonl", "w")

    # Memory read bandwidth (C, the engines' thread count) and bytes per token.
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "membw")
        run(["gcc", "-O3", "-march=native", "-pthread", "-o", exe, os.path.join(here, "membw.c")])
        bw_runs = [json.loads(run([exe, str(T), "512", "12"])[0]) for _ in range(3)]
    bw = statistics.median(r["median_gbs"] for r in bw_runs)
    bw_best = max(r["best_gbs"] for r in bw_runs)
    bytes_info = model_bytes(a.model)

    log = lambda *x: print(*x, file=sys.stderr, flush=True)
    log(f"bench: {len(cases)} cases × {a.runs} runs × 2 engines; memory read bandwidth {bw:.1f} GB/s ({T} threads)")
    for c in cases:
        spinner = None
        if c.busy:
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1)
        try:
            c.load.append(loadavg()[0])
            for i in range(a.runs):
                for engine, cmd, parse, dst in (("kvant", c.kvant_cmd, c.kvant_parse, c.kvant),
                                                 ("llama.cpp", c.llama_cmd, c.llama_parse, c.llama)):
                    out, err = run(cmd)
                    v = parse(out, err)
                    dst.append(v)
                    raw.write(json.dumps({"case": c.name, "engine": engine, "run": i, "tps": v, "load1": loadavg()[0],
                                          "cmd": shlex.join(cmd)}) + "\n")
                    raw.flush()
                    log(f"  {c.name:<40} {engine:<9} run {i + 1}/{a.runs}: {v:8.2f} tok/s (load {loadavg()[0]})")
            c.load.append(loadavg()[0])
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    load1 = loadavg()

    # Report.
    def med(xs):
        return statistics.median(xs)

    def cell(xs):
        return f"{med(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})"

    L = []
    L.append(f"Kvant {commit}{' (uncommitted changes)' if dirty else ''} vs llama.cpp (llama-cpp-python "
             f"{stamp.get('version', '?')} sdist, cmake {stamp.get('cmake', '')}{', AMX off' if stamp.get('amx_off') == '1' else ''}), "
             f"{os.path.basename(a.model)}, {T} threads, {a.runs} interleaved runs each")
    L.append("")
    L.append(f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.release()}; "
             f"{started:%Y-%m-%d %H:%M} UTC; load average (1/5/15 min) {'/'.join(load0)} at the start, "
             f"{'/'.join(load1)} at the end.")
    L.append("")
    L.append("| test | Kvant KV | llama.cpp KV | Kvant tok/s, median (min–max) | llama.cpp tok/s, median (min–max) | Kvant / llama.cpp | load 1 min (start–end) |")
    L.append("|---|---|---|---:|---:|---:|---|")
    quiet = {}
    for c in cases:
        if not c.kvant:
            continue
        r = med(c.kvant) / med(c.llama)
        L.append(f"| {c.name} | {c.kvant_kv} | {c.llama_kv}{' (flash attn)'} | {cell(c.kvant)} | {cell(c.llama)} | **{r:.2f}×** | {c.load[0]}–{c.load[-1]} |")
        if c.kind == "tg" and not c.busy and c.depth == 0 and c.kvant_kv == "fp16":
            quiet = {"kvant": med(c.kvant), "llama": med(c.llama)}
    L.append("")

    # Batched scaling.
    b1 = next((c for c in cases if c.kind == "batched" and "1 stream" in c.name and c.kvant), None)
    b8 = next((c for c in cases if c.kind == "batched" and "8 streams" in c.name and c.kvant), None)
    if b1 and b8:
        L.append(f"Aggregate decode, 8 streams / 1 stream (llama-batched-bench's S_TG, both engines): Kvant "
                 f"{med(b8.kvant) / med(b1.kvant):.2f}×, llama.cpp {med(b8.llama) / med(b1.llama):.2f}×.")
        L.append("")

    # Busy core.
    busy = next((c for c in cases if c.busy and c.kvant), None)
    if busy and quiet:
        L.append(f"One core busy (a Python busy loop on the side), tg{n} fp16/f16 as a fraction of the quiet tg{n} median above: "
                 f"Kvant {med(busy.kvant) / quiet['kvant']:.2f}, llama.cpp {med(busy.llama) / quiet['llama']:.2f}.")
        L.append("")

    # Bandwidth bound.
    L.append(f"Decode bound: measured memory read bandwidth {bw:.1f} GB/s (median of 3×12 passes of "
             f"scripts/bench/membw.c, {T} threads reading 512 MiB; best pass {bw_best:.1f} GB/s). Bytes read per generated "
             f"token = every weight tensor once ({bytes_info['weights'] / 1e6:.1f} MB, of which the output head / tied "
             f"embedding {bytes_info['head'] / 1e6:.1f} MB) + the K/V cells attended at that depth.")
    L.append("")
    L.append("| test | KV | MB read / token | bound tok/s | Kvant % of bound | llama.cpp % of bound |")
    L.append("|---|---|---:|---:|---:|---:|")
    for c in cases:
        if c.kind != "tg" or c.busy or not c.kvant:
            continue
        b = bytes_info["weights"] + kv_bytes(bytes_info, c.depth + n / 2, c.kvant_kv)
        bound = bw * 1e9 / b
        L.append(f"| {c.name} | {c.kvant_kv} / {c.llama_kv} | {b / 1e6:.1f} | {bound:.0f} | "
                 f"{100 * med(c.kvant) / bound:.0f} % | {100 * med(c.llama) / bound:.0f} % |")
    L.append("")
    L.append("Commands (one run each; `-r 1` / `--reps 1`, runs alternate Kvant, llama.cpp, Kvant, …):")
    L.append("")
    L.append("```")
    for c in cases:
        note = " (with python3 -c 'while True: pass' running)" if c.busy else ""
        L.append(f"# {c.name}, {c.kvant_kv} / {c.llama_kv}{note}")
        L.append(shlex.join(c.kvant_cmd))
        L.append(shlex.join(c.llama_cmd))
    L.append("```")
    text = "\n".join(L) + "\n"
    print(text)
    with open(a.out, "w") as f:
        f.write(text)
    log(f"bench: results in {a.out} (raw samples: {a.out}.jsonl)")


def model_bytes(path):
    """Weight bytes read per token and the KV geometry, from the GGUF (gguf's reader)."""
    import gguf
    r = gguf.GGUFReader(path)
    arch = r.fields["general.architecture"].contents()
    f = lambda k, d=None: r.fields[f"{arch}.{k}"].contents() if f"{arch}.{k}" in r.fields else d
    names = {t.name: t for t in r.tensors}
    weights = sum(int(t.n_bytes) for t in r.tensors)
    head = int(names["output.weight"].n_bytes) if "output.weight" in names else int(names["token_embd.weight"].n_bytes)
    if "output.weight" in names:
        # A separate output head: the embedding table is only looked up (one row per token).
        e = names["token_embd.weight"]
        weights -= int(e.n_bytes) - int(e.n_bytes) // int(e.shape[-1])
    layers = int(f("block_count"))
    heads_kv = int(f("attention.head_count_kv"))
    head_dim = int(f("attention.key_length", int(f("embedding_length")) // int(f("attention.head_count"))))
    window = f("attention.sliding_window")
    # Gemma 3: every 6th layer (5, 11, 17, …) attends globally, the others over the sliding window.
    windows = [None if (arch != "gemma3" or not window or l % 6 == 5) else int(window) for l in range(layers)]
    return {"weights": weights, "head": head, "heads_kv": heads_kv, "head_dim": head_dim, "windows": windows}


def kv_bytes(info, ctx, kvant_dtype):
    """K+V bytes attended per token at `ctx` cached tokens (fp16: 2 bytes a value; int8: 1 byte + a 4-byte
    scale per head row, as Kvant's int8_pertoken stores it; int4_pertoken: the mean of its K row (groups of 32, fp16
    scale and min) and V row (groups of 64, fp16 scale); its int8 residual of <= 65 rows per layer is not counted)."""
    d = info["head_dim"]
    per_row = {"fp16": 2 * d, "int8_pertoken": d + 4, "int4_pertoken": (d // 32 * 20 + d // 64 * 34) / 2}[kvant_dtype]
    cells = sum(min(ctx, w) if w else ctx for w in info["windows"])
    return 2 * cells * info["heads_kv"] * per_row


if __name__ == "__main__":
    main()
