#!/usr/bin/env python3
"""Oracle for TokenizersTests: token ids from llama.cpp (through llama-cpp-python, vocab_only=True)
for the default model (Gemma 3 270M, SentencePiece-style vocabulary).

  Llama.tokenize(text, add_bos, special) calls llama_tokenize(add_special=add_bos, parse_special=special),
  so (add_bos=True, special=True) corresponds to Kvant's encode(text, addSpecial: true, parseSpecial: true).

Writes Tests/TokenizersTests/Fixtures/tokenizer_gemma3_goldens.json.
Usage: scripts/oracle/tokenizer_goldens.py [model.gguf]  (default $KVANT_MODEL or /work/models/gemma-3-270m-q4_k_m.gguf)
"""
import ctypes, json, os, sys
import llama_cpp
from llama_cpp import Llama
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_random_strings import random_strings

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "Tests", "TokenizersTests", "Fixtures", "tokenizer_gemma3_goldens.json")

STRINGS = [
    "Hello world",
    "",
    " ",
    "   leading and trailing spaces   ",
    "Tabs\tand\nnewlines\n\n\nmore\r\nCRLF",
    "\t\t\tindented\ttabs\t",
    "\n\n\n\n",
    "a          b (ten spaces)",
    "中文分词测试：你好，世界！",
    "日本語のテキストです。カタカナとひらがな。",
    "안녕하세요 세계",
    "नमस्ते दुनिया",
    "مرحبا بالعالم",
    "Mixed русский текст and Ελληνικά",
    "Emoji 😀👍🏽 and a ZWJ family 👨‍👩‍👧‍👦, a flag 🇺🇸 and 🏳️‍🌈",
    "Numbers 1234567890 3.14159 -42 1,000,000 and 0x1F",
    "def f(x):\n    return x**2  # square\n\tif x != 0: print(f'{x}')\n",
    "fn main() { let v: Vec<i32> = vec![1, 2, 3]; println!(\"{:?}\", v); }",
    "Café naïve résumé Ångström façade",
    "cafe\u0301 nai\u0308ve (decomposed accents)",
    "It's a don't we'll I'M they've",
    "https://example.com/path?query=1&b=2#frag",
    "<table><tr><td>cell</td></tr></table>",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text with bos inside<eos> and </s>",
    "[multimodal] <unused0> <start_of_turn",
    "rare: 𐍈 ᚠᛇᚻ 𓀀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010FFFD \ue000",
    "zero\u200dwidth\u200bspace nb\u00a0sp bom\ufeff",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "▁ already escaped ▁▁",
]

# Variants: (text, add_bos, special)
VARIANTS = [
    ("<start_of_turn>user\nHi<end_of_turn>", False, False),
    ("<start_of_turn>user\nHi<end_of_turn>", True, False),
    ("[multimodal] </s> <eos>", False, False),
    ("Hello world", False, True),
    ("", False, True),
]


def detokenize(llm, ids):
    """llama.cpp's own llama_detokenize(remove_special=False, unparse_special=False); llama-cpp-python's
    Llama.detokenize strips a leading space after BOS itself, which llama.cpp does not do."""
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    cap = 16 * len(ids) + 64
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, cap, False, False)
    assert 0 <= n <= cap, n
    return buf.raw[:n]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("KVANT_MODEL", "/work/models/gemma-3-270m-q4_k_m.gguf")
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    cases = []
    for s in STRINGS:
        ids = llm.tokenize(s.encode("utf-8"), add_bos=True, special=True)
        cases.append({"text": s, "add_special": True, "parse_special": True, "ids": ids,
                      "detokenized_hex": detokenize(llm, ids).hex()})
    for s, add, special in VARIANTS:
        ids = llm.tokenize(s.encode("utf-8"), add_bos=add, special=special)
        cases.append({"text": s, "add_special": add, "parse_special": special, "ids": ids,
                      "detokenized_hex": detokenize(llm, ids).hex()})
    # seeded random strings built from vocabulary pieces, special-token texts and many scripts
    rng_pieces = []
    import random
    r = random.Random(99)
    for _ in range(400):
        tid = r.randrange(llm.n_vocab())
        piece = llm._model.token_get_text(tid) if hasattr(llm._model, "token_get_text") else None
        if piece is None:
            piece = llama_cpp.llama_token_get_text(llm._model.vocab, tid).decode("utf-8", errors="ignore")
        rng_pieces.append(piece.replace("\u2581", " "))
    for s in random_strings(200, 1234, rng_pieces):
        ids = llm.tokenize(s.encode("utf-8"), add_bos=True, special=True)
        cases.append({"text": s, "add_special": True, "parse_special": True, "ids": ids,
                      "detokenized_hex": detokenize(llm, ids).hex(), "random": True})
    gpl = "/usr/share/common-licenses/GPL-3"
    long_text = open(gpl, encoding="utf-8").read()[:6000] if os.path.exists(gpl) else None
    if long_text:
        ids = llm.tokenize(long_text.encode("utf-8"), add_bos=True, special=True)
        cases.append({"text": long_text, "add_special": True, "parse_special": True, "ids": ids,
                      "detokenized_hex": detokenize(llm, ids).hex()})
    out = {
        "oracle": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp): Llama(vocab_only=True).tokenize(text, add_bos, special); llama_detokenize(remove_special=False, unparse_special=False)",
        "model": os.path.basename(path),
        "n_vocab": llm.n_vocab(),
        "bos": llm.token_bos(),
        "eos": llm.token_eos(),
        "cases": cases,
    }
    with open(OUT, "w") as fh:
        json.dump(out, fh, ensure_ascii=False, indent=0)
    print("wrote", os.path.normpath(OUT), len(cases), "cases")


if __name__ == "__main__":
    main()
