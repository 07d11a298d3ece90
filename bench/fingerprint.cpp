// dsv4_fingerprint: a hash of every number the library hands out, for checking
// that a change leaves results bit-identical (refactors, new features that must
// not touch the reference path). Prints one line per case: "<hash> <case>".
// Run it before and after a change with the same build flags and `diff` the
// outputs; results are thread-count independent, so any OMP_NUM_THREADS works.
//
//   dsv4_fingerprint [--quick] [CONFORMANCE_FILE...]
//
// Cases: every conformance file given (one-shot with intermediates, chunked
// prefill + decode through a state, the saved state's bytes, a ragged batch,
// the dense attention map, forward_train + backward), in both numerics and with
// f32 and native (FP8-as-released) weights; then random layers at V4-Flash
// dimensions (prefill across the 1,024-token split, decode, state, backward).
// --quick skips the V4-Flash layers.
#include <unistd.h>

#include <bit>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "dsv4/layer.h"
#include "dsv4/random.h"
#include "dsv4/safetensors.h"

using namespace dsv4;

namespace {

struct Hash {  // FNV-1a over bytes
  uint64_t h = 1469598103934665603ull;
  void add(const void* p, size_t n) {
    auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  void add(const Tensor& t) {
    add(t.shape.data(), t.shape.size() * sizeof(int64_t));
    add(t.data.data(), t.data.size() * sizeof(float));
  }
  void add(const TensorI64& t) {
    add(t.shape.data(), t.shape.size() * sizeof(int64_t));
    add(t.data.data(), t.data.size() * sizeof(int64_t));
  }
};

void print(const std::string& name, const Hash& h) {
  std::printf("%016llx %s\n", (unsigned long long)h.h, name.c_str());
}

void add_weights(Hash& h, const LayerWeights& w) {
  for (const Tensor* t :
       {&w.q_a_proj, &w.q_a_norm, &w.q_b_proj, &w.kv_proj, &w.kv_norm, &w.o_a_proj, &w.o_b_proj, &w.sinks})
    h.add(*t);
  const CompressorWeights* cs[] = {w.compressor ? &*w.compressor : nullptr,
                                   w.indexer ? &w.indexer->compressor : nullptr};
  for (const CompressorWeights* c : cs)
    if (c)
      for (const Tensor* t : {&c->kv_proj, &c->gate_proj, &c->position_bias, &c->kv_norm}) h.add(*t);
  if (w.indexer) h.add(w.indexer->q_b_proj), h.add(w.indexer->weights_proj);
}

Tensor rows(const Tensor& x, int64_t from, int64_t n) {
  const int64_t d = x.shape.back();
  return Tensor({n, d}, std::vector<float>(x.data.begin() + from * d, x.data.begin() + (from + n) * d));
}

std::string state_bytes_of(const LayerState& st, const Config& c) {
  const auto path = std::filesystem::temp_directory_path() / ("dsv4_fingerprint_" + std::to_string(getpid()));
  save_state(st, c, path);
  std::ifstream f(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::filesystem::remove(path);
  return s;
}

// Every result of one layer on one input x [S, d] (S >= 2).
void run_layer(const std::string& tag, const Layer& layer, const Tensor& x, bool train, int64_t chunk) {
  const Config& c = layer.config();
  const int64_t s = x.dim(0), d = c.hidden_size;
  {  // one-shot with intermediates
    Hash h;
    std::vector<Intermediates> dbg;
    h.add(layer.forward(x, &dbg));
    for (const Intermediates& i : dbg) {
      for (const Tensor* t : {&i.q, &i.kv, &i.compressed_kv, &i.indexer_q, &i.indexer_kv, &i.index_scores}) h.add(*t);
      h.add(i.topk);
    }
    print(tag + " forward+debug", h);
  }
  {  // one-shot without debug (the split path for long inputs)
    Hash h;
    h.add(layer.forward(x));
    print(tag + " forward", h);
  }
  {  // chunked prefill of s-3 tokens, then 3 decode steps; the state's bytes
    Hash h, hs;
    LayerState st = layer.new_state();
    for (int64_t p = 0; p < s - 3; p += chunk) h.add(layer.forward(rows(x, p, std::min(chunk, s - 3 - p)), st));
    for (int64_t p = s - 3; p < s; ++p) h.add(layer.forward(rows(x, p, 1), st));
    const std::string bytes = state_bytes_of(st, c);
    hs.add(bytes.data(), bytes.size());
    print(tag + " chunked+decode", h);
    print(tag + " state", hs);
  }
  {  // a ragged serving batch: a prefill and a decode step of two sequences
    Hash h;
    LayerState a = layer.new_state(), b = layer.new_state();
    const int64_t n = s / 2;
    Tensor xa = rows(x, 0, n), xb = rows(x, n, s - n);
    h.add(layer.forward(xb, b));
    const Tensor* xs[] = {&xa, &xb};
    LayerState* sts[] = {&a, &b};
    for (const Tensor& y : layer.forward_batch(std::span<const Tensor* const>(xs), std::span<LayerState* const>(sts)))
      h.add(y);
    Tensor ta = rows(x, 0, 1), tb = rows(x, 1, 1);
    const Tensor* ts[] = {&ta, &tb};
    for (const Tensor& y : layer.forward_batch(std::span<const Tensor* const>(ts), std::span<LayerState* const>(sts)))
      h.add(y);
    print(tag + " batch", h);
  }
  if (s <= 512) {  // the map (dense only where it is small)
    Hash h;
    for (const AttentionMap& m : layer.attention_map(x, s <= 128)) h.add(m.mass), h.add(m.selected), h.add(m.dense);
    print(tag + " attention_map", h);
  }
  if (train) {
    Hash h;
    Tensor dy = random_uniform({s, d}, 1.0f, 99);
    LayerGradients g = layer.backward(x, dy);
    h.add(g.dx);
    add_weights(h, g.weights);
    print(tag + " backward", h);
  }
}

void run_all(const std::string& name, const Config& c, LayerType t, const LayerWeights& w, const Tensor& x,
             int64_t chunk) {
  for (Numerics n : {Numerics::reference, Numerics::deployment}) {
    if (n == Numerics::deployment && t == LayerType::csa && !std::has_single_bit(uint64_t(c.index_head_dim))) continue;
    for (WeightFormat f : {WeightFormat::f32, WeightFormat::native}) {
      LayerWeights lw = w;
      if (f == WeightFormat::native) store_as_released(lw, t);
      Layer layer(c, t, std::move(lw), LayerOptions{f, n});
      const std::string tag = name + " " + std::string(numerics_name(n)) + " " + std::string(weight_format_name(f));
      run_layer(tag, layer, x, n == Numerics::reference, chunk);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0)
      quick = true;
    else
      files.emplace_back(argv[i]);
  }
  try {
    for (const std::string& f : files) {
      SafeTensors file = SafeTensors::open(f);
      LayerSpec spec = layer_spec_from_json_text(file.meta("config"), "config");
      LayerWeights w = load_layer_weights(file, spec.config, spec.type);
      Tensor x = file.f32("chunk0.hidden_states");
      const int64_t d = spec.config.hidden_size, s = x.numel() / d;  // a batch's sequences back to back
      if (s < 4)
        x = random_uniform({16, d}, 1.0f, 5);  // long enough for chunks and decode
      else
        x.shape = {s, d};
      run_all(std::filesystem::path(f).stem().string(), spec.config, spec.type, w, x, 7);
    }
    if (!quick) {
      const Config c = Config::preset("v4-flash");
      const int64_t s = 1100;  // crosses the 1,024-token split of a one-shot prefill
      Tensor x = random_uniform({s, c.hidden_size}, 1.0f, 7);
      for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca}) {
        const std::string name = "v4-flash-" + std::string(layer_type_name(t));
        for (Numerics n : {Numerics::reference, Numerics::deployment})
          for (WeightFormat f : {WeightFormat::f32, WeightFormat::native}) {
            LayerWeights lw = random_layer_weights(c, t, 3);
            if (f == WeightFormat::native) store_as_released(lw, t);
            Layer layer(c, t, std::move(lw), LayerOptions{f, n});
            run_layer(name + " " + std::string(numerics_name(n)) + " " + std::string(weight_format_name(f)), layer, x,
                      false, 500);
          }
        Layer layer(c, t, random_layer_weights(c, t, 3));
        Hash h;
        Tensor xs = rows(x, 0, 192), dy = random_uniform({192, c.hidden_size}, 1.0f, 99);
        LayerGradients g = layer.backward(xs, dy);
        h.add(g.dx);
        add_weights(h, g.weights);
        print(name + " reference f32 backward", h);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv4_fingerprint: %s\n", e.what());
    return 1;
  }
  return 0;
}
