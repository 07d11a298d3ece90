#include "dsv4/conformance.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "dsv4/layer.h"
#include "dsv4/safetensors.h"
#include "ops/rope.h"

namespace dsv4 {

void compare(CaseReport& rep, const std::string& what, const Tensor& ref, const float* ours, int64_t n, Tolerance tol) {
  if (ref.numel() != n) {
    rep.failures.push_back(what + ": " + std::to_string(n) + " values, reference has " + shape_str(ref.shape));
    return;
  }
  int64_t bad = 0, worst = -1;
  double worst_excess = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double r = ref.data[i], d = std::fabs(static_cast<double>(ours[i]) - r);
    rep.max_abs = std::max(rep.max_abs, d);
    if (std::fabs(r) >= 1e-3) rep.max_rel = std::max(rep.max_rel, d / std::fabs(r));
    const double excess = d - (tol.atol + tol.rtol * std::fabs(r));
    if (!(excess <= 0)) {  // also catches NaN
      ++bad;
      if (worst < 0 || excess > worst_excess) worst = i, worst_excess = excess;
    }
  }
  rep.compared += n;
  if (bad) {
    std::ostringstream s;
    s << what << ": " << bad << " of " << n << " values out of tolerance, worst at " << worst << " (ours "
      << ours[worst] << ", ref " << ref.data[worst] << ")";
    rep.failures.push_back(s.str());
  }
}

namespace {

// Reference tensor for batch row b of a [B, ...] tensor, checked against our per-sequence layout.
Tensor batch_row(const Tensor& t, int64_t b) {
  const int64_t per = t.shape.empty() || t.dim(0) == 0 ? 0 : t.numel() / t.dim(0);
  Shape s(t.shape.begin() + 1, t.shape.end());
  return Tensor(s, std::vector<float>(t.data.begin() + b * per, t.data.begin() + (b + 1) * per));
}

std::string set_str(const std::set<int64_t>& v) {
  std::string s;
  for (int64_t i : v) s += (s.empty() ? "{" : ", ") + std::to_string(i);
  return s.empty() ? "{}" : s + "}";
}

void compare_topk(CaseReport& rep, const std::string& what, const TensorI64& ref, int64_t b, const TensorI64& ours) {
  const int64_t s = ref.shape.at(1), w = ref.shape.at(2);
  if (ours.shape != Shape{s, w}) {
    rep.failures.push_back(what + ": shape " + shape_str(ours.shape) + ", reference row has [" + std::to_string(s) +
                           ", " + std::to_string(w) + "]");
    return;
  }
  for (int64_t t = 0; t < s; ++t) {
    const std::set<int64_t> a = topk_set(ours, t), r = topk_set(ref, b * s + t);
    if (a != r) {
      rep.failures.push_back(what + ": query " + std::to_string(t) + " selects " + set_str(a) + ", reference " +
                             set_str(r));
      return;
    }
  }
}

// The sliding-window key axis a chunk of s tokens attends over from state st:
// the cached positions (the last min(pos, W-1)), then the chunk's own.
void compare_window_positions(CaseReport& rep, const std::string& what, const TensorI64& ref, const LayerState& st,
                              int64_t s) {
  const int64_t p0 = st.position(), first = p0 - std::min(p0, st.window_slots());
  std::vector<int64_t> ours(static_cast<size_t>(p0 + s - first));
  std::iota(ours.begin(), ours.end(), first);
  if (ref.shape == Shape{static_cast<int64_t>(ours.size())} && ref.data == ours) return;
  std::ostringstream m;
  m << what << ": reference has " << shape_str(ref.shape);
  if (!ref.data.empty()) m << " from " << ref.data.front() << " to " << ref.data.back();
  m << ", ours positions " << first << " to " << p0 + s - 1 << " (" << ours.size() << " keys)";
  rep.failures.push_back(m.str());
}

// The RoPE frequencies a file stores (debug tensors; checked when present), to fp32 rounding.
void compare_rope(const SafeTensors& f, CaseReport& rep, const Config& c) {
  const std::pair<const char*, LayerType> kinds[] = {{"rope.main_inv_freq", LayerType::sliding},
                                                     {"rope.compress_inv_freq", LayerType::csa}};
  for (const auto& [name, t] : kinds) {
    if (!f.contains(name)) continue;
    const std::vector<float> ours = layer_inv_freq(c, t);
    compare(rep, name, f.f32(name), ours.data(), static_cast<int64_t>(ours.size()), Tolerance{0, 1e-6});
  }
}

// The chunk lengths from metadata 'chunks'. Every tensor named chunkN.* must
// belong to one of them, so a file that lost a chunk's tensors fails.
std::vector<int64_t> chunk_lengths(const SafeTensors& f) {
  const std::string where = f.label() + ": metadata 'chunks'";
  std::vector<int64_t> out;
  try {
    out = nlohmann::json::parse(f.meta("chunks")).get<std::vector<int64_t>>();
  } catch (const nlohmann::json::exception&) {
    fail(where + " must be a JSON list of chunk lengths");
  }
  if (out.empty()) fail(where + " lists no chunk");
  for (const std::string& name : f.names()) {
    if (name.rfind("chunk", 0) != 0) continue;
    const size_t dot = name.find('.');
    const std::string n = dot == std::string::npos ? "" : name.substr(5, dot - 5);
    if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos) continue;
    if (n.size() > 9 || std::stoll(n) >= static_cast<int64_t>(out.size()))
      fail(f.label() + ": tensor '" + name + "' belongs to no chunk (metadata 'chunks' lists " +
           std::to_string(out.size()) + ")");
  }
  return out;
}

void run_case(const SafeTensors& f, CaseReport& rep, Tolerance tol) {
  const LayerSpec spec = layer_spec_from_json_text(f.meta("config"), f.label() + " metadata 'config'");
  const Layer layer(spec.config, spec.type, load_layer_weights(f, spec.config, spec.type));
  const std::vector<int64_t> chunks = chunk_lengths(f);
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  const Tensor x0 = f.f32("chunk0.hidden_states");
  if (x0.shape.size() != 3) fail(f.label() + ": 'chunk0.hidden_states' must be [B, S, d], got " + shape_str(x0.shape));
  const int64_t batch = x0.dim(0), d = spec.config.hidden_size;
  std::vector<LayerState> states(static_cast<size_t>(batch), layer.new_state());
  compare_rope(f, rep, spec.config);

  for (int64_t c = 0; c < n_chunks; ++c) {
    const std::string k = "chunk" + std::to_string(c) + ".";
    const Tensor x = f.f32(k + "hidden_states");
    if (x.shape.size() != 3 || x.dim(0) != batch || x.dim(2) != d)
      fail(f.label() + ": '" + k + "hidden_states' has shape " + shape_str(x.shape));
    const int64_t s = x.dim(1);
    if (s != chunks[c])
      fail(f.label() + ": '" + k + "hidden_states' has " + std::to_string(s) + " tokens, metadata 'chunks' says " +
           std::to_string(chunks[c]));
    const TensorI64 pos = f.i64(k + "position_ids");
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < s; ++i)
        if (pos.data.at(b * s + i) != states[b].position() + i)
          fail(f.label() + ": '" + k + "position_ids' do not continue the sequence at row " + std::to_string(b));
    compare_window_positions(rep, k + "window_key_positions", f.i64(k + "window_key_positions"), states[0], s);
    const Tensor out_ref = f.f32(k + "output");
    for (int64_t b = 0; b < batch; ++b) {
      Tensor xb({s, d}, std::vector<float>(x.data.begin() + b * s * d, x.data.begin() + (b + 1) * s * d));
      Intermediates dbg;
      const Tensor y = layer.forward(xb, states[b], &dbg);
      const std::string at = k + "[" + std::to_string(b) + "]";  // e.g. chunk0.[1]output: batch row 1
      compare(rep, at + "output", batch_row(out_ref, b), y.ptr(), y.numel(), tol);
      compare(rep, at + "q", batch_row(f.f32(k + "q"), b), dbg.q.ptr(), dbg.q.numel(), tol);
      compare(rep, at + "kv", batch_row(f.f32(k + "kv"), b), dbg.kv.ptr(), dbg.kv.numel(), tol);
      if (spec.type == LayerType::sliding) continue;
      compare(rep, at + "compressed_kv", batch_row(f.f32(k + "compressed_kv"), b), dbg.compressed_kv.ptr(),
              dbg.compressed_kv.numel(), tol);
      if (spec.type != LayerType::csa) continue;
      compare(rep, at + "indexer_q", batch_row(f.f32(k + "indexer_q"), b), dbg.indexer_q.ptr(), dbg.indexer_q.numel(),
              tol);
      compare(rep, at + "indexer_kv", batch_row(f.f32(k + "indexer_kv"), b), dbg.indexer_kv.ptr(),
              dbg.indexer_kv.numel(), tol);
      compare(rep, at + "index_scores", batch_row(f.f32(k + "index_scores"), b), dbg.index_scores.ptr(),
              dbg.index_scores.numel(), tol);
      compare_topk(rep, at + "topk_indices", f.i64(k + "topk_indices"), b, dbg.topk);
    }
  }
}

}  // namespace

std::set<int64_t> topk_set(std::span<const int64_t> row) {
  std::set<int64_t> s(row.begin(), row.end());
  s.erase(-1);
  return s;
}

std::set<int64_t> topk_set(const TensorI64& topk, int64_t row) {
  const int64_t w = topk.shape.empty() ? 0 : topk.shape.back();
  if (row < 0 || (row + 1) * w > static_cast<int64_t>(topk.data.size()))
    fail("topk_set: row " + std::to_string(row) + " outside " + shape_str(topk.shape));
  return topk_set(std::span<const int64_t>(topk.data.data() + row * w, static_cast<size_t>(w)));
}

CaseReport verify_case(const std::filesystem::path& file, Tolerance tol) {
  CaseReport rep;
  rep.name = file.stem().string();
  try {
    const SafeTensors f = SafeTensors::open(file);
    run_case(f, rep, tol);
  } catch (const std::exception& e) {
    rep.failures.push_back(e.what());
  }
  rep.passed = rep.failures.empty() && rep.compared > 0;
  if (rep.failures.empty() && rep.compared == 0) rep.failures.push_back("nothing was compared");
  return rep;
}

}  // namespace dsv4
