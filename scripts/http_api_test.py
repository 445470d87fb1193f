#!/usr/bin/env python3
"""The HTTP API against a real kvantd on the real model, with the official `openai` client (PyPI)
as the client and `prometheus_client`'s parser for /metrics; an independent SSE parser (raw
sockets) checks the framing. Prints TAP lines (`ok N - name`, `not ok N - name`); scripts/test.sh
counts them. Exits 0 when every check passed.

    scripts/http_api_test.py --kvantd .build/release/kvantd --model models/gemma-3-270m-q4_k_m.gguf \
        [--chat-model models/SmolLM2-135M-Instruct.Q4_1.gguf]

Without the Python packages or the model it prints `1..0 # SKIP <reason>` and exits 0.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback

try:
    import openai
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:  # pragma: no cover
    print(f"1..0 # SKIP python package missing ({e.name}): pip install openai prometheus_client")
    sys.exit(0)

PROMPT = "The capital of France is"


class Control:
    """JSON-RPC client of the control socket (one line per message)."""

    def __init__(self, path):
        self.path = path
        self.next_id = 1

    def call(self, method, params=None):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(300)
        s.connect(self.path)
        rid = self.next_id
        self.next_id += 1
        s.sendall((json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}) + "\n").encode())
        f = s.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    raise RuntimeError(f"control socket closed during {method}")
                msg = json.loads(line)
                if msg.get("id") == rid:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg["result"]
        finally:
            f.close()
            s.close()


def raw_http(port, method, path, body=None, read_all=True):
    """One HTTP/1.1 request on a raw socket; returns (status, headers, body bytes) with the chunked
    body decoded by hand, or the open socket and file after the head when read_all is False."""
    s = socket.create_connection(("127.0.0.1", port), timeout=300)
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    s.sendall(head.encode() + data)
    f = s.makefile("rb")
    status = int(f.readline().split()[1])
    headers = {}
    while True:
        line = f.readline().decode().rstrip("\r\n")
        if not line:
            break
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    if not read_all:
        return status, headers, (s, f)
    out = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                break
            out += f.read(size)
            f.readline()
    else:
        out = f.read(int(headers.get("content-length", "0")))
    f.close()
    s.close()
    return status, headers, out


def parse_sse(body):
    """Independent SSE parser: events separated by a blank line, each line `data: …`; returns payloads."""
    text = body.decode()
    assert text.endswith("\n\n"), f"stream does not end with a blank line: {text[-40:]!r}"
    events = []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        for line in lines:
            assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        events.append("\n".join(line[6:] for line in lines))
    return events


def metric(text, family, sample=None, labels=None):
    """A sample's value from the Prometheus text, parsed by prometheus_client."""
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            for s in fam.samples:
                if (sample is None or s.name == sample) and (labels is None or all(s.labels.get(k) == v for k, v in labels.items())):
                    return s.value
    return None


class Runner:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def check(self, name, fn):
        self.n += 1
        try:
            fn()
            print(f"ok {self.n} - {name}", flush=True)
        except Exception as e:  # noqa: BLE001
            self.failed += 1
            print(f"not ok {self.n} - {name}", flush=True)
            for line in traceback.format_exception(e)[-6:]:
                for sub in line.rstrip().split("\n"):
                    print(f"#   {sub}", flush=True)

    def skip(self, name, reason):
        self.n += 1
        print(f"ok {self.n} - {name} # SKIP {reason}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvantd", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--chat-model")
    ap.add_argument("--threads", default="2")
    args = ap.parse_args()
    if not os.path.exists(args.model):
        print(f"1..0 # SKIP model missing: {args.model} (run: make model)")
        return 0
    if not os.access(args.kvantd, os.X_OK):
        print(f"1..0 # SKIP kvantd not built: {args.kvantd}")
        return 0

    work = tempfile.mkdtemp(prefix="kvant-http-")
    sock = os.path.join(work, "kvantd.sock")
    port = free_port()
    model_dir = os.path.dirname(os.path.realpath(args.model))
    dirs = {model_dir}
    if args.chat_model and os.path.exists(args.chat_model):
        dirs.add(os.path.dirname(os.path.realpath(args.chat_model)))
    cmd = [args.kvantd, "--socket", sock, "--port", str(port), "--model", os.path.realpath(args.model),
           "--threads", args.threads, "--kv-cache-bytes", str(64 << 20), "--log-level", "notice"]
    for d in sorted(dirs):
        cmd += ["--allowed-dir", d]
    log = open(os.path.join(work, "kvantd.log"), "w")
    daemon = subprocess.Popen(cmd, stderr=log, stdout=log)
    r = Runner()
    try:
        # READY: /health answers 200 once the start-up model is loaded (the event we wait for).
        deadline = time.time() + 120
        while True:
            try:
                status, _, body = raw_http(port, "GET", "/health")
                if status == 200:
                    break
            except OSError:
                pass
            if daemon.poll() is not None or time.time() > deadline:
                print("1..0 # SKIP kvantd did not become healthy; its log:")
                print("\n".join("# " + line for line in open(log.name).read().splitlines()[-20:]))
                return 1
            time.sleep(0.1)
        control = Control(sock)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
        run_checks(r, client, control, port, args)
    finally:
        daemon.terminate()
        try:
            rc = daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            rc = -9
        r.check("kvantd exits 0 after SIGTERM", lambda: _eq(rc, 0, open(log.name).read()[-2000:]))
        print(f"1..{r.n}")
        shutil.rmtree(work, ignore_errors=True)
    return 1 if r.failed else 0


def _eq(a, b, what=""):
    assert a == b, f"{a!r} != {b!r} {what}"


def run_checks(r, client, control, port, args):
    name = os.path.basename(args.model)[:-5]
    state = {}

    def models_list():
        models = client.models.list()
        ids = [m.id for m in models.data]
        _eq(ids, [name])
    r.check("models.list() names the served model", models_list)

    def plain_equals_control():
        c = client.completions.create(model=name, prompt=PROMPT, max_tokens=24, temperature=0)
        g = control.call("generate", {"prompt": PROMPT, "max_tokens": 24, "temperature": 0})
        _eq(c.choices[0].text, g["text"])
        _eq(c.choices[0].finish_reason, g["finish_reason"])
        _eq(c.usage.prompt_tokens, g["prompt_tokens"])
        _eq(c.usage.completion_tokens, g["completion_tokens"])
        state["plain"] = c.choices[0].text
    r.check("completion (greedy) equals the control socket's generate", plain_equals_control)

    def streamed():
        stream = client.completions.create(model=name, prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
                                           stream_options={"include_usage": True})
        text, usage, finish = "", None, None
        for chunk in stream:
            for ch in chunk.choices:
                text += ch.text
                finish = ch.finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        _eq(text, state["plain"])
        _eq(finish, "length")
        _eq(usage.completion_tokens, 24)
    r.check("completion streamed (openai client) equals unstreamed, with usage", streamed)

    def sse_framing():
        status, headers, body = raw_http(port, "POST", "/v1/completions",
                                         {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True})
        _eq(status, 200)
        assert headers["content-type"].startswith("text/event-stream"), headers
        events = parse_sse(body)
        _eq(events[-1], "[DONE]")
        _eq(events.count("[DONE]"), 1)
        chunks = [json.loads(e) for e in events[:-1]]
        _eq("".join(c["choices"][0]["text"] for c in chunks), state["plain"][:len("".join(c["choices"][0]["text"] for c in chunks))])
        _eq(chunks[-1]["choices"][0]["finish_reason"], "length")
    r.check("SSE framing by an independent parser: data lines, blank-line separated, [DONE] last", sse_framing)

    def n3():
        c = client.completions.create(model=name, prompt=PROMPT, max_tokens=8, temperature=0.8, seed=7, n=3,
                                      extra_body={"ignore_eos": True})
        _eq(sorted(ch.index for ch in c.choices), [0, 1, 2])
        _eq(c.usage.prompt_tokens, 6)
        _eq(c.usage.completion_tokens, 3 * 8)
        g = client.completions.create(model=name, prompt=PROMPT, max_tokens=8, temperature=0, n=3)
        _eq(len({ch.text for ch in g.choices}), 1)   # greedy: three equal choices
    r.check("n=3: three choices, usage summed, greedy choices equal", n3)

    def n3_prompt_prefilled_once():
        # A prompt no earlier request used; n=3 is parallel sampling: the prompt is prefilled once, and its last
        # chunk forks the sequence into the other two choices (blocks shared, copy-on-write), so the prefix cache
        # sees one query of the prompt and no hit (the choices never look the prompt up).
        prompt = f"Run {time.time_ns()}: " + " ".join(f"item {i} costs {i * 7 % 13} units;" for i in range(40))
        tokens = len(control.call("tokenize", {"text": prompt})["tokens"])
        _, _, before = raw_http(port, "GET", "/metrics")
        s0 = control.call("stats")["kv_cache"]
        c = client.completions.create(model=name, prompt=prompt, max_tokens=4, temperature=0.8, seed=3, n=3)
        _eq(c.usage.prompt_tokens, tokens)   # OpenAI counts the prompt once for all n choices
        _eq(sorted(ch.index for ch in c.choices), [0, 1, 2])
        s1 = control.call("stats")["kv_cache"]
        _, _, after = raw_http(port, "GET", "/metrics")
        before, after = before.decode(), after.decode()
        _eq(s1["prefix_cache_queries"] - s0["prefix_cache_queries"], tokens)
        _eq(s1["prefix_cache_hits"] - s0["prefix_cache_hits"], 0)
        _eq(metric(after, "kvant:prefix_cache_queries") - (metric(before, "kvant:prefix_cache_queries") or 0), tokens)
        _eq(metric(after, "kvant:prefix_cache_hits") - (metric(before, "kvant:prefix_cache_hits") or 0), 0)
        _eq(metric(after, "kvant:prefix_cache_hits"), s1["prefix_cache_hits"])
        # Each choice is the request it would be alone with seed 3 + its index (one choice, same seed).
        for ch in c.choices:
            one = client.completions.create(model=name, prompt=prompt, max_tokens=4, temperature=0.8, seed=3 + ch.index)
            _eq(one.choices[0].text, ch.text)
    r.check("n=3 on a 380-token prompt: prefilled once and forked (one prefix-cache query, no hit; stats, /metrics); "
            "each choice equals a request of its own with seed + index", n3_prompt_prefilled_once)

    def logprobs():
        c = client.completions.create(model=name, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
        lp = c.choices[0].logprobs
        _eq(len(lp.tokens), 6)
        _eq(len(lp.token_logprobs), 6)
        _eq(len(lp.text_offset), 6)
        for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
            assert 1 <= len(top) <= 4, top   # the top 3 and the chosen token (OpenAI: up to logprobs + 1)
            assert all(v <= 0 for v in top.values()), top
            # greedy: the chosen token is the most likely one
            assert abs(chosen - max(top.values())) < 1e-9, (chosen, top)
        _eq("".join(lp.tokens), c.choices[0].text)
    r.check("logprobs=3: one entry per token, top-3 alternatives, greedy = the most likely", logprobs)

    def stop_strings():
        plain = state["plain"]
        words = [w for w in plain.split(" ") if len(w) > 2]
        stop = " " + words[1]
        cut = plain.index(stop)
        c = client.completions.create(model=name, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "\u2603"])
        _eq(c.choices[0].text, plain[:cut])
        _eq(c.choices[0].finish_reason, "stop")
        text = "".join(ch.choices[0].text for ch in client.completions.create(
            model=name, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop, stream=True) if ch.choices)
        _eq(text, plain[:cut])
    r.check("stop strings: text cut before the stop, streamed too", stop_strings)

    def echo():
        c = client.completions.create(model=name, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
        assert c.choices[0].text.startswith(PROMPT), c.choices[0].text
        _eq(c.choices[0].text, PROMPT + state["plain"][:len(c.choices[0].text) - len(PROMPT)])
        e = client.completions.create(model=name, prompt=PROMPT, max_tokens=2, temperature=0, echo=True, logprobs=1)
        lp = e.choices[0].logprobs
        assert lp.token_logprobs[0] is None, lp.token_logprobs[:2]
        _eq(len(lp.token_logprobs), 6 + 2)
        assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    r.check("echo: the prompt before the completion; with logprobs the prompt's first token has none", echo)

    def metrics_move():
        _, _, before = raw_http(port, "GET", "/metrics")
        before = before.decode()
        c = client.completions.create(model=name, prompt=PROMPT, max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True})
        _, headers, after = raw_http(port, "GET", "/metrics")
        after = after.decode()
        assert headers["content-type"].startswith("text/plain"), headers
        d_prompt = metric(after, "kvant:prompt_tokens") - metric(before, "kvant:prompt_tokens")
        d_gen = metric(after, "kvant:generation_tokens") - metric(before, "kvant:generation_tokens")
        _eq(d_prompt, c.usage.prompt_tokens)
        _eq(d_gen, 5)
        _eq(metric(after, "kvant:request_success", labels={"finished_reason": "length"})
            - (metric(before, "kvant:request_success", labels={"finished_reason": "length"}) or 0), 1)
        _eq(metric(after, "kvant:e2e_request_latency_seconds", "kvant:e2e_request_latency_seconds_count")
            - metric(before, "kvant:e2e_request_latency_seconds", "kvant:e2e_request_latency_seconds_count"), 1)
        stats = control.call("stats")
        _eq(stats["engine"]["prompt_tokens"], metric(after, "kvant:prompt_tokens"))
        _eq(stats["engine"]["generated_tokens"], metric(after, "kvant:generation_tokens"))
        _eq(metric(after, "kvant:num_requests_running"), 0)
        assert metric(after, "kvant:cache_config_info", labels={"cache_dtype": "auto"}) == 1
        assert metric(after, "kvant:kv_cache_bytes_per_token") == stats["kv_cache"]["bytes_per_token"]
    r.check("/metrics parses (prometheus_client) and moves by exactly the request's tokens; = stats", metrics_move)

    def errors():
        try:
            client.completions.create(model=name, prompt=PROMPT, max_tokens=10 ** 6)
            raise AssertionError("no error")
        except openai.BadRequestError as e:
            assert "maximum context length" in str(e), e
        try:
            client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=1)
            raise AssertionError("no error")
        except openai.NotFoundError as e:
            assert "does not exist" in str(e), e
        _eq(client.completions.create(model=name, prompt=PROMPT, max_tokens=1).choices[0].finish_reason, "length")
    r.check("errors as openai exceptions (400 context, 404 model); still serving", errors)

    def disconnect():
        status, _, (s, f) = raw_http(port, "POST", "/v1/completions",
                                     {"prompt": PROMPT, "max_tokens": 400, "temperature": 0, "stream": True,
                                      "ignore_eos": True}, read_all=False)
        _eq(status, 200)
        f.readline()            # first chunk size: the sequence runs
        f.close()
        s.close()
        deadline = time.time() + 60
        while True:
            st = control.call("stats")
            if st["engine"]["requests_running"] == 0 and st["kv_cache"]["num_blocks_used"] == 0:
                break
            assert time.time() < deadline, st["kv_cache"]
            time.sleep(0.05)
        assert st["engine"]["generated_tokens"] < 10 ** 6
    r.check("a client disconnecting mid-stream frees its KV blocks (stats)", disconnect)

    def chat_bos_on_base_model():
        # Gemma 3 270M has no chat template (ChatML fallback, which writes no BOS) and its vocabulary adds BOS:
        # the chat prompt must still start with BOS (as llama.cpp's server does), else the model babbles.
        from gguf import GGUFReader
        reader = GGUFReader(args.model)
        bos = reader.fields["tokenizer.ggml.bos_token_id"].contents()
        _, _, tok = raw_http(port, "POST", "/tokenize", {"messages": [{"role": "user", "content": "Hi"}]})
        ids = json.loads(tok)["tokens"]
        _eq(ids[0], bos)
        _eq(ids.count(bos), 1)
    r.check("chat prompt on the base model (ChatML fallback) starts with the model's BOS, once", chat_bos_on_base_model)

    # Chat: on the chat model of record (SmolLM2) when it loads, else on the default model (ChatML).
    chat_name, smol = name, False
    if not args.chat_model or not os.path.exists(args.chat_model):
        print(f"# chat on {name}: chat model missing: {args.chat_model}")
    else:
        try:
            control.call("load-model", {"path": os.path.realpath(args.chat_model)})
            chat_name, smol = os.path.basename(args.chat_model)[:-5], True
        except RuntimeError as e:
            print(f"# chat on {name}: the chat model does not load: {str(e)[:200]}")
    messages = [{"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "What is the capital of France?"}]

    def chat():
        _eq([m.id for m in client.models.list().data], [chat_name])
        c = client.chat.completions.create(model=chat_name, messages=messages, max_tokens=32, temperature=0)
        msg = c.choices[0].message
        _eq(msg.role, "assistant")
        if smol:
            assert "Paris" in msg.content, msg.content
        assert c.usage.completion_tokens > 0
        state["chat"] = c
        _, _, tok = raw_http(port, "POST", "/tokenize", {"messages": messages})
        _eq(c.usage.prompt_tokens, json.loads(tok)["count"])
    r.check(f"chat completion on {chat_name}{' answers (Paris)' if smol else ''}, usage = /tokenize of the messages", chat)

    def chat_template_oracle():
        # The prompt the server renders equals jinja2's rendering (transformers' environment) of the model's own
        # tokenizer.chat_template, read from the GGUF with gguf's reader: same tokens through /tokenize.
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracle"))
        import chat_template_goldens as oracle
        from gguf import GGUFReader
        reader = GGUFReader(args.chat_model if smol else args.model)

        def field(key):
            f = reader.fields.get(key)
            return None if f is None else f.contents()
        template = field("tokenizer.chat_template")
        if template is None:
            print(f"# {chat_name} has no tokenizer.chat_template: the server uses ChatML")
            template = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "ChatTemplatesTests",
                                         "Fixtures", "templates", "chatml-default.jinja")).read()
        tokens = field("tokenizer.ggml.tokens")
        bos_id, eos_id = field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")
        context = oracle.conversation_context({"messages": messages, "add_generation_prompt": True},
                                              tokens[bos_id] if bos_id is not None else None,
                                              tokens[eos_id] if eos_id is not None else None)
        rendered = oracle.render(oracle.make_environment(), template, context)
        assert "output" in rendered, rendered
        # The server's rule: BOS added unless the rendered text starts with it (docs/http.md).
        bos_text = context.get("bos_token")
        add = not (bos_text and rendered["output"].startswith(bos_text))
        _, _, a = raw_http(port, "POST", "/tokenize", {"prompt": rendered["output"], "add_special_tokens": add})
        _, _, b = raw_http(port, "POST", "/tokenize", {"messages": messages})
        _eq(json.loads(b)["tokens"], json.loads(a)["tokens"])
    r.check(f"chat prompt on {chat_name} = jinja2's rendering of its GGUF chat template (same token ids)", chat_template_oracle)

    def chat_streamed():
        stream = client.chat.completions.create(model=chat_name, messages=messages, max_tokens=32, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        content, role, usage = "", None, None
        for chunk in stream:
            for ch in chunk.choices:
                role = ch.delta.role or role
                content += ch.delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        _eq(role, "assistant")
        _eq(content, state["chat"].choices[0].message.content)
        _eq(usage.completion_tokens, state["chat"].usage.completion_tokens)
        _eq(usage.prompt_tokens, state["chat"].usage.prompt_tokens)
    r.check("chat streamed equals unstreamed, usage in the last chunk", chat_streamed)


if __name__ == "__main__":
    sys.exit(main())
