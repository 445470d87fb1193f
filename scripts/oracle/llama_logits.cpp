// A small driver over llama.cpp's C API (libllama from the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp) for
// the golden scripts: the logits llama.cpp computes for a token sequence, and its greedy continuations.
// Never part of the product. Built by scripts/oracle/llama_driver.py (c++ -O2 against build/bin/libllama.so).
//
//   llama_logits MODEL TOKENS.txt OUT.bin [--ctx N] [--batch N] [--ubatch N] [--threads N] [--flash 0|1]
//                [--type-kv f32|f16|q8_0|q4_0] [--greedy N] [--rows all|last]
//
// TOKENS.txt: whitespace-separated token ids. Evaluation: the tokens in micro-batches of --batch (default 512,
// llama-cpp-python's Llama.eval), logits for every position (--rows all) or the last one.
// --greedy N: after the tokens, N greedy steps (argmax of the last logits, decoded one token at a time).
// OUT.bin: int32 n_rows, int32 n_vocab, float32 logits[n_rows][n_vocab]; with --greedy also int32 N, int32 tokens[N]
// (the logit rows of the greedy steps follow the evaluated rows: row k+1.. is the step after token k).
//
//   llama_logits MODEL --tokenize TEXT OUT.txt ADD_SPECIAL(0|1) PARSE_SPECIAL(0|1)
// llama_tokenize of the file's bytes (vocabulary only), the ids written whitespace-separated.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static bool no_progress(float, void *) { return true; }

static ggml_type kv_type(const std::string & s) {
    if (s == "f32") return GGML_TYPE_F32;
    if (s == "f16") return GGML_TYPE_F16;
    if (s == "q8_0") return GGML_TYPE_Q8_0;
    if (s == "q4_0") return GGML_TYPE_Q4_0;
    fprintf(stderr, "unknown --type-kv %s\n", s.c_str());
    exit(2);
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL TOKENS.txt OUT.bin [options]\n", argv[0]);
        return 2;
    }
    const char * model_path = argv[1];
    if (std::string(argv[2]) == "--tokenize") {
        if (argc < 7) { fprintf(stderr, "usage: %s MODEL --tokenize TEXT OUT.txt ADD_SPECIAL PARSE_SPECIAL\n", argv[0]); return 2; }
        std::ifstream in(argv[3], std::ios::binary);
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        llama_log_set(quiet, nullptr);
        llama_backend_init();
        llama_model_params mp = llama_model_default_params();
        mp.vocab_only = true;
        llama_model * model = llama_model_load_from_file(model_path, mp);
        if (!model) { fprintf(stderr, "cannot load %s\n", model_path); return 1; }
        const llama_vocab * vocab = llama_model_get_vocab(model);
        std::vector<llama_token> ids(text.size() + 16);
        int n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), ids.data(), (int32_t) ids.size(),
                               atoi(argv[5]) != 0, atoi(argv[6]) != 0);
        if (n < 0) { ids.resize(-n); n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), ids.data(), (int32_t) ids.size(), atoi(argv[5]) != 0, atoi(argv[6]) != 0); }
        FILE * f = fopen(argv[4], "w");
        for (int i = 0; i < n; i++) fprintf(f, "%d ", ids[i]);
        fclose(f);
        llama_model_free(model);
        return 0;
    }
    std::vector<llama_token> tokens;
    {
        std::ifstream in(argv[2]);
        long t;
        while (in >> t) tokens.push_back((llama_token) t);
    }
    int n_ctx = 0, n_batch = 512, n_ubatch = 512, threads = 2, flash = 0, greedy = 0;
    bool all_rows = true;
    std::string tkv = "f16";
    for (int i = 4; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--ctx") n_ctx = atoi(v.c_str());
        else if (k == "--batch") n_batch = atoi(v.c_str());
        else if (k == "--ubatch") n_ubatch = atoi(v.c_str());
        else if (k == "--threads") threads = atoi(v.c_str());
        else if (k == "--flash") flash = atoi(v.c_str());
        else if (k == "--type-kv") tkv = v;
        else if (k == "--greedy") greedy = atoi(v.c_str());
        else if (k == "--rows") all_rows = v == "all";
        else { fprintf(stderr, "unknown option %s\n", k.c_str()); return 2; }
    }
    if (n_ctx == 0) n_ctx = (int) tokens.size() + greedy;
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.progress_callback = no_progress;
    llama_model * model = llama_model_load_from_file(model_path, mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", model_path); return 1; }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_ubatch = n_ubatch;
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = kv_type(tkv);
    cp.type_v = kv_type(tkv);
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    std::vector<float> rows;
    llama_batch batch = llama_batch_init(n_batch, 0, 1);
    int pos = 0;
    auto run = [&](const std::vector<llama_token> & toks, bool want_all) {
        for (size_t b0 = 0; b0 < toks.size(); b0 += n_batch) {
            const size_t b1 = std::min(toks.size(), b0 + (size_t) n_batch);
            batch.n_tokens = 0;
            for (size_t i = b0; i < b1; i++) {
                const int j = batch.n_tokens++;
                batch.token[j] = toks[i];
                batch.pos[j] = pos++;
                batch.n_seq_id[j] = 1;
                batch.seq_id[j][0] = 0;
                batch.logits[j] = want_all || i + 1 == toks.size();
            }
            if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "llama_decode failed at %zu\n", b0); exit(1); }
            for (int j = 0; j < batch.n_tokens; j++) {
                if (!batch.logits[j]) continue;
                const float * l = llama_get_logits_ith(ctx, j);
                rows.insert(rows.end(), l, l + n_vocab);
            }
        }
    };
    run(tokens, all_rows);
    std::vector<llama_token> gen;
    for (int s = 0; s < greedy; s++) {
        const float * last = rows.data() + rows.size() - n_vocab;
        int best = 0;
        for (int k = 1; k < n_vocab; k++) if (last[k] > last[best]) best = k;
        gen.push_back(best);
        if (s + 1 < greedy) run({best}, true);
    }
    FILE * f = fopen(argv[3], "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", argv[3]); return 1; }
    const int32_t hdr[2] = {(int32_t) (rows.size() / n_vocab), n_vocab};
    fwrite(hdr, sizeof hdr, 1, f);
    fwrite(rows.data(), sizeof(float), rows.size(), f);
    if (greedy > 0) {
        const int32_t n = (int32_t) gen.size();
        fwrite(&n, sizeof n, 1, f);
        fwrite(gen.data(), sizeof(int32_t), gen.size(), f);
    }
    fclose(f);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
