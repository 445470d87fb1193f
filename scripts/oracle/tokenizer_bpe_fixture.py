#!/usr/bin/env python3
"""Oracle for TokenizersTests (GPT-2 byte-level BPE): builds tiny BPE vocabularies with gguf.GGUFWriter
and records llama.cpp's token ids for them (llama-cpp-python, vocab_only=True).

The vocabulary: GPT-2's 256 byte-level characters, then the merges of a small byte-level BPE trained
here on a short corpus (plain pair counting, most frequent pair first), then special tokens
(<|begin_of_text|>, <|end_of_text|>, <|eot_id|> as control; <tool> user-defined).
One file per pre-tokenizer: llama-bpe (llama3 regex), gpt-2, default.

Writes Tests/TokenizersTests/Fixtures/tokenizer_bpe_<pre>.gguf and tokenizer_bpe_goldens.json.
"""
import collections, ctypes, json, os, re
import gguf
import llama_cpp
from llama_cpp import Llama
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_random_strings import random_strings

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "..", "Tests", "TokenizersTests", "Fixtures")

CORPUS = """The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away!
It's a test: we'll see what they've done, and I'm sure you'd like it. Numbers 12345 and 3.14 or 2024-11-30.
def tokenize(text):\n    return [t for t in text.split()]  # comment\n
Café, naïve, résumé — über straße. Здравствуй мир. 你好世界。こんにちは。
    indented line\n\ttabbed line\r\nwindows line
""" * 3


def bytes_to_unicode():
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


B2U = bytes_to_unicode()


def train_merges(n_merges):
    words = re.findall(r"\s?\w+|\s?[^\w\s]+|\s+", CORPUS)
    seqs = collections.Counter(tuple(B2U[b] for b in w.encode("utf-8")) for w in words)
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for seq, c in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), cnt = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if cnt < 2:
            break
        merges.append((a, b))
        new = collections.Counter()
        for seq, c in seqs.items():
            out = []
            i = 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            new[tuple(out)] += c
        seqs = new
    return merges


def write_vocab(path, pre):
    merges = train_merges(300)
    tokens = [B2U[b] for b in range(256)]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    types = [1] * len(tokens)
    specials = [("<|begin_of_text|>", 3), ("<|end_of_text|>", 3), ("<|eot_id|>", 3), ("<tool>", 4)]
    for t, ty in specials:
        tokens.append(t)
        types.append(ty)
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_context_length(128)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    w.add_eos_token_id(tokens.index("<|end_of_text|>"))
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(tokens), len(merges)


STRINGS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "Hello world",
    "It's a test: we'll see what THEY'VE done, I'M sure you'D like it.",
    "Numbers 1234567 and 3.14159, 2024-11-30 and ١٢٣ (arabic-indic)",
    "def tokenize(text):\n    return [t for t in text.split()]  # comment\n",
    "   leading spaces, trailing spaces   ",
    "line one\n\n\nline two\r\nwindows\tand\ttabs",
    "Café naïve résumé — über straße.",
    "Здравствуй мир. 你好世界。こんにちは。",
    "Emoji 😀👍🏽 and ZWJ 👨‍👩‍👧‍👦",
    "<|begin_of_text|>user: hi<|eot_id|><tool>call</tool>",
    "symbols $100 + 5% <= x^2 ~ |y| `code` @user #tag",
    "a\u00a0b\u2003c\u3000d",
]


def detokenize(llm, ids):
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    cap = 16 * len(ids) + 64
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, cap, False, False)
    assert 0 <= n <= cap
    return buf.raw[:n]


def main():
    out = {"oracle": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp): Llama(vocab_only=True).tokenize(text, add_bos, special)", "files": []}
    for pre in ["llama-bpe", "gpt-2", "default"]:
        name = f"tokenizer_bpe_{pre}.gguf"
        path = os.path.join(FIX, name)
        n_tokens, n_merges = write_vocab(path, pre)
        llm = Llama(model_path=path, vocab_only=True, verbose=False)
        cases = []
        for s in STRINGS:
            for add, special in [(True, True), (False, False)]:
                ids = llm.tokenize(s.encode("utf-8"), add_bos=add, special=special)
                cases.append({"text": s, "add_special": add, "parse_special": special, "ids": ids,
                              "detokenized_hex": detokenize(llm, ids).hex()})
        for s in random_strings(100, 4321, re.findall(r"\\s?\\w+", CORPUS)):
            ids = llm.tokenize(s.encode("utf-8"), add_bos=True, special=True)
            cases.append({"text": s, "add_special": True, "parse_special": True, "ids": ids,
                          "detokenized_hex": detokenize(llm, ids).hex()})
        out["files"].append({"file": name, "pre": pre, "n_vocab": llm.n_vocab(), "n_merges": n_merges,
                             "bos": llm.token_bos(), "eos": llm.token_eos(), "cases": cases})
        print(name, os.path.getsize(path), "bytes", n_tokens, "tokens", n_merges, "merges")
    with open(os.path.join(FIX, "tokenizer_bpe_goldens.json"), "w") as fh:
        json.dump(out, fh, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
