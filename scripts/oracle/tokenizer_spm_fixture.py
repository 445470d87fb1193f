#!/usr/bin/env python3
"""Oracle for TokenizersTests (SentencePiece-style, add_space_prefix = true as in LLaMA 1/2): builds a
tiny SPM vocabulary with gguf.GGUFWriter and records llama.cpp's token ids (llama-cpp-python,
vocab_only=True).

Vocabulary: <unk> (unknown), <s>, </s> (control), 256 byte tokens <0xNN> (byte), single characters
of a short corpus and its most frequent substrings (normal, score = log frequency), and <tool>
(user-defined). Writes Tests/TokenizersTests/Fixtures/tokenizer_spm_prefix.gguf and
tokenizer_spm_goldens.json.
"""
import collections, ctypes, json, math, os, sys
import gguf
import llama_cpp
from llama_cpp import Llama
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_random_strings import random_strings

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "..", "Tests", "TokenizersTests", "Fixtures")
CORPUS = ("The quick brown fox jumps over the lazy dog. It's a test: we'll see what they've done. "
          "Numbers 12345 and 3.14. Café naïve résumé. Здравствуй мир. 你好世界。 tokenization of words "
          "and sentences, the theory of everything, there and then.")


def build():
    text = "▁" + CORPUS.replace(" ", "▁")
    chars = sorted(set(text))
    counts = collections.Counter()
    for n in range(2, 7):
        for i in range(len(text) - n + 1):
            counts[text[i:i + n]] += 1
    subs = [s for s, c in counts.most_common() if c >= 2][:300]
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>"); scores.append(0.0); types.append(6)
    for c in chars:
        if c not in tokens:
            tokens.append(c); scores.append(-8.0 - 0.01 * len(tokens)); types.append(1)
    for s in subs:
        if s not in tokens:
            tokens.append(s); scores.append(math.log(counts[s]) - len(tokens) * 1e-4); types.append(1)
    tokens.append("<tool>"); scores.append(0.0); types.append(4)
    return tokens, scores, types


STRINGS = [
    "Hello world", "", " ", "The quick brown fox", "  two leading spaces", "trailing  ",
    "<s>inside</s> and <tool>x<tool>", "the theory\nof\teverything", "Café 你好 Здравствуй",
    "bytes: é ß 😀 \u0301", "tokenization, sentences; 12345 3.14",
]


def detokenize(llm, ids):
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    cap = 16 * len(ids) + 64
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, cap, False, False)
    assert 0 <= n <= cap
    return buf.raw[:n]


def main():
    tokens, scores, types = build()
    name = "tokenizer_spm_prefix.gguf"
    path = os.path.join(FIX, name)
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_context_length(128); w.add_embedding_length(8); w.add_block_count(1); w.add_feed_forward_length(16)
    w.add_head_count(1); w.add_head_count_kv(1); w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens); w.add_token_scores(scores); w.add_token_types(types)
    w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
    w.add_add_space_prefix(True)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    cases = []
    for s in STRINGS + random_strings(80, 777, CORPUS.split()):
        for add, special in [(True, True), (False, False)]:
            ids = llm.tokenize(s.encode("utf-8"), add_bos=add, special=special)
            cases.append({"text": s, "add_special": add, "parse_special": special, "ids": ids,
                          "detokenized_hex": detokenize(llm, ids).hex()})
    out = {"oracle": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp): Llama(vocab_only=True).tokenize(text, add_bos, special); llama_detokenize(remove_special=False, unparse_special=False)",
           "file": name, "n_vocab": llm.n_vocab(), "bos": llm.token_bos(), "eos": llm.token_eos(), "cases": cases}
    with open(os.path.join(FIX, "tokenizer_spm_goldens.json"), "w") as fh:
        json.dump(out, fh, ensure_ascii=False, indent=0)
    print(name, os.path.getsize(path), "bytes", len(tokens), "tokens", len(cases), "cases")


if __name__ == "__main__":
    main()
