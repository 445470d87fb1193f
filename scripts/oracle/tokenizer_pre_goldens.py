#!/usr/bin/env python3
"""Oracle for TokenizersTests' pre-tokenizer checks: llama.cpp's own `llama-tokenize` ids

1. for every regex family of llama.cpp's `tokenizer.ggml.pre` table that Kvant implements, on a tiny GPT-2
   byte-level BPE vocabulary written with gguf.GGUFWriter carrying that `tokenizer.ggml.pre` value
   (Tests/TokenizersTests/Fixtures/pre/<pre>.gguf). The merges are trained on raw text *without* any
   pre-splitting (they cross spaces, digits, punctuation, newlines and scripts), so a word boundary placed
   differently from llama.cpp changes the ids; the script checks that the goldens of every two families differ
   on some string (the strings discriminate between them). No add_bos_token key: llama.cpp's default for the
   value applies (true for llama3/tekken);
2. for SmolLM2-135M-Instruct (pre-tokenizer `smollm`, 49 152 tokens): hand-picked strings, ChatML renderings
   and seeded random strings.

Writes Tests/TokenizersTests/Fixtures/pre/*.gguf, tokenizer_pre_goldens.json, tokenizer_smollm2_goldens.json.
Usage: python3 scripts/oracle/tokenizer_pre_goldens.py [SmolLM2.gguf]   (needs llama.cpp's binaries: llama_bin.py)
"""
import collections, json, os, sys
import gguf
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_bin
from tokenizer_random_strings import random_strings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIX = os.path.join(ROOT, "Tests", "TokenizersTests", "Fixtures")
SMOLLM = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# One value per regex family (the aliases of a family share its code in llama.cpp and in Kvant).
PRES = ["default", "gpt-2", "llama-bpe", "dbrx", "smollm", "qwen2", "qwen35", "falcon", "deepseek-llm",
        "deepseek-coder", "gpt-4o", "tekken", "bloom", "viking"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away!",
    "It's a test: we'll see what they've done, and I'm sure you'd like it. DON'T SHOUT, they'RE here.",
    "Numbers 12345 and 3.14159 or 2024-11-30, 1,000,000 and 42nd; version v2.0.1-beta, x1y2z3.",
    "def tokenize(text):\n    return [t for t in text.split()]  # comment\n\n\nclass A:\n\tpass\n",
    "fn main() { let v: Vec<i32> = vec![1, 2, 3]; println!(\"{:?}\", v); } // $100 + 5% <= x^2 ~ |y| `code`",
    "Café, naïve, résumé — über straße. cafe\u0301 nai\u0308ve. Ελληνικά κείμενο. Здравствуй, мир!",
    "你好世界。中文分词，测试、文本！日本語のテキストです。カタカナとひらがな。한국어 텍스트입니다.",
    "नमस्ते। दुनिया मरहबा، بالعالم۔ ١٢٣٤ ٥٦٧ and Ⅻ ² ³ ½",
    "HelloWorld camelCaseString iPhone McDonald's URLs ABCdef ÀÉÎõü ÑandúÑU ＡＢＣ！ｘｙｚ？",
    "    indented line\n\ttabbed line\r\nwindows line\r\n\r\n  \n \n(a|b), hello? yes! wait... ok…",
    "a/b//c !\n/path <|im_start|> 😀👍🏽 👨‍👩‍👧 µ Ω K ℎ ʔ ƻ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈",
]

STRINGS = [
    "", " ", "Hello world", " Hello  world  ", "The quick brown fox jumps over the lazy dog.",
    "It's a don't we'll I'M they've THEY'VE x'Ve 's ' 'll'd",
    "Numbers 1234567890 3.14159 -42 1,000,000 0x1F 12 345 6789 a1b22c333d4444",
    "١٢٣٤٥ Ⅻ ² ³ ½ ௰ 𝟙𝟚𝟛",
    "   leading spaces", "trailing spaces   ", "a\n\nb", "a \n b", "\r\n\r\n", "x \n\n y", " \n", "\n\n\n\n",
    "tabs\t\tand\ttabs\t", "a\u00a0b\u2003c\u3000d\u2009e", "\u3000\u3000全角", "a          b (ten spaces)",
    "$100 + 5% <= x^2 ~ |y| `code` @user #tag", "!!!???...--->", "a/b//c !\n/path\r\n//x", "(a|b), hello? yes! wait... ok…",
    "你好世界。中文分词测试：你好，世界！", "日本語のテキストです。カタカナとひらがな。", "한국어 텍스트 안녕하세요",
    "नमस्ते। दुनिया", "مرحبا، بالعالم۔", "Ελληνικά κείμενο", "Привет, мир!",
    "café naïve résumé Ångström", "cafe\u0301 nai\u0308ve e\u0301\u0301x", "HelloWorld camelCaseString iPhone",
    "ABCdef ÀÉÎõü ÑandúÑU McDonald's URLs", "ＡＢＣ！ｘｙｚ？１２３",
    "def f(x):\n    return x**2  # square\n\tif x != 0: print(f'{x}')\n",
    "fn main() { let v: Vec<i32> = vec![1, 2, 3]; println!(\"{:?}\", v); }",
    "Emoji 😀👍🏽 and ZWJ 👨‍👩‍👧‍👦 and a flag 🇺🇸",
    "zero\u200bwidth\u200djoiner\ufeffbom \u0007bell a\u0000b",
    "µ Ω K ℎ ʔ ƻ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 𓀀 \U0010FFFD \ue000",
    "<|begin_of_text|>user: hi<|eot_id|><tool>call</tool>",
    "https://example.com/path?query=1&b=2#frag",
    "line1\rline2\n\rline3",
]


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
    """Plain BPE pair counting over whole lines (no pre-split), most frequent pair first, ties by the pair."""
    seqs = collections.Counter(tuple(B2U[b] for b in line.encode("utf-8")) for line in CORPUS)
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
            out, i = [], 0
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


MERGES = train_merges(500)


def write_vocab(path, pre):
    tokens = [B2U[b] for b in range(256)]
    seen = set(tokens)
    for a, b in MERGES:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    types = [1] * len(tokens)
    for t, ty in [("<|begin_of_text|>", 3), ("<|end_of_text|>", 3), ("<|eot_id|>", 3), ("<tool>", 4)]:
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
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    w.add_eos_token_id(tokens.index("<|end_of_text|>"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(tokens)


def dump(path, obj):
    """JSON with one case per line (readable diffs, small files)."""
    def enc(o, depth=0):
        if isinstance(o, dict) and "ids" in o:
            return json.dumps(o, ensure_ascii=False)
        if isinstance(o, dict):
            return "{\n" + ",\n".join(json.dumps(k) + ": " + enc(v, depth + 1) for k, v in o.items()) + "\n}"
        if isinstance(o, list) and o and isinstance(o[0], dict):
            return "[\n" + ",\n".join(enc(v, depth + 1) for v in o) + "\n]"
        return json.dumps(o, ensure_ascii=False)
    with open(path, "w") as fh:
        fh.write(enc(obj) + "\n")


def cases_for(model, strings, variants=((True, True), (False, False))):
    out = []
    for s in strings:
        for add, special in variants:
            out.append({"text": s, "add_special": add, "parse_special": special,
                        "ids": llama_bin.tokenize(model, s, add, special)})
    return out


def main():
    os.makedirs(os.path.join(FIX, "pre"), exist_ok=True)
    pieces = [p for line in CORPUS for p in line.split(" ") if p]
    rnd = random_strings(60, 20261207, pieces)
    files = []
    for pre in PRES:
        name = f"pre/{pre}.gguf"
        path = os.path.join(FIX, name)
        n = write_vocab(path, pre)
        cases = cases_for(path, STRINGS) + cases_for(path, rnd, variants=((True, True),))
        files.append({"file": name, "pre": pre, "n_vocab": n, "n_merges": len(MERGES), "cases": cases})
        print(name, os.path.getsize(path), "bytes,", n, "tokens,", len(MERGES), "merges,", len(cases), "cases", flush=True)
    # every two families must disagree somewhere, or the strings would not tell them apart
    for i in range(len(files)):
        for j in range(i + 1, len(files)):
            a, b = files[i], files[j]
            if all(x["ids"] == y["ids"] for x, y in zip(a["cases"], b["cases"])):
                print(f"WARNING: {a['pre']} and {b['pre']} give the same ids on every string", flush=True)
    # the strings once, the ids per file (row k of "ids" is string k)
    strings = [{"text": c["text"], "add_special": c["add_special"], "parse_special": c["parse_special"]} for c in files[0]["cases"]]
    for f in files:
        assert [c["text"] for c in f["cases"]] == [c["text"] for c in strings]
        f["ids"] = [c["ids"] for c in f.pop("cases")]
    with open(os.path.join(FIX, "tokenizer_pre_goldens.json"), "w") as fh:
        fh.write("{\n" + f'"oracle": {json.dumps(llama_bin.VERSION + ": llama-tokenize -f TEXT --no-escape --ids [--no-bos] [--no-parse-special]")},\n'
                 + '"generator": "scripts/oracle/tokenizer_pre_goldens.py",\n"strings": [\n'
                 + ",\n".join(json.dumps(x, ensure_ascii=False) for x in strings) + "\n],\n\"files\": [\n"
                 + ",\n".join("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in f.items() if k != "ids")
                              + ', "ids": [\n' + ",\n".join(json.dumps(r) for r in f["ids"]) + "\n]}" for f in files)
                 + "\n]\n}\n")

    if os.path.exists(SMOLLM):
        chat = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
        smol = STRINGS + [chat, "<|endoftext|>text after<|im_end|>", "<jupyter_code>print(1)<jupyter_output>",
                          open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()[:4000]]
        pieces = []
        import random
        r = random.Random(7)
        toks = gguf.GGUFReader(SMOLLM).fields["tokenizer.ggml.tokens"]
        vocab = [bytes(toks.parts[i]).decode("utf-8", "replace") for i in toks.data]
        u2b = {u: b for b, u in B2U.items()}
        for _ in range(300):
            t = vocab[r.randrange(len(vocab))]
            try:
                pieces.append(bytes(u2b[c] for c in t).decode("utf-8"))
            except (KeyError, UnicodeDecodeError):
                pieces.append(t)
        cases = cases_for(SMOLLM, smol) + cases_for(SMOLLM, random_strings(120, 4242, pieces), variants=((True, True),))
        dump(os.path.join(FIX, "tokenizer_smollm2_goldens.json"),
             {"oracle": f"{llama_bin.VERSION}: llama-tokenize -f TEXT --no-escape --ids [--no-bos] [--no-parse-special]",
              "generator": "scripts/oracle/tokenizer_pre_goldens.py", "model": os.path.basename(SMOLLM),
              "n_vocab": len(vocab), "cases": cases})
        print("SmolLM2:", len(cases), "cases")
    else:
        print("SmolLM2 model not found at", SMOLLM, "- its goldens were not written")


if __name__ == "__main__":
    main()
