// The weight table (dsv4/weights.h): shapes from the config, lookups, and
// where LayerWeights holds each tensor.
#include <string>

#include "dsv4/weights.h"
#include "io/stored_weights.h"

namespace dsv4 {

bool layer_has(LayerType t, WeightPart p) {
  switch (p) {
    case WeightPart::attention: return true;
    case WeightPart::compressor: return t != LayerType::sliding;
    case WeightPart::indexer: return t == LayerType::csa;
  }
  return false;
}

const WeightEntry* find_weight(std::string_view spec_name) {
  const std::string name = canonical_name(std::string(spec_name));
  for (const WeightEntry& e : kWeightTable)
    if (e.name == name) return &e;
  return nullptr;
}

Shape weight_shape(const Config& c, LayerType t, WeightId id) {
  const int64_t d = c.hidden_size, hd = c.head_dim, h = c.num_attention_heads, g = c.o_groups;
  const int64_t rate = c.compress_rate(t), in_w = t == LayerType::csa ? 2 * hd : hd;  // CSA: two series
  const int64_t di = c.index_head_dim, hi = c.index_n_heads;
  switch (id) {
    case WeightId::q_a_proj: return {c.q_lora_rank, d};
    case WeightId::q_a_norm: return {c.q_lora_rank};
    case WeightId::q_b_proj: return {h * hd, c.q_lora_rank};
    case WeightId::kv_proj: return {hd, d};
    case WeightId::kv_norm: return {hd};
    case WeightId::o_a_proj: return {g * c.o_lora_rank, h * hd / g};
    case WeightId::o_b_proj: return {d, g * c.o_lora_rank};
    case WeightId::sinks: return {h};
    case WeightId::compressor_kv_proj: return {in_w, d};
    case WeightId::compressor_gate_proj: return {in_w, d};
    case WeightId::compressor_position_bias: return {rate, in_w};
    case WeightId::compressor_kv_norm: return {hd};
    case WeightId::indexer_kv_proj: return {2 * di, d};  // the indexer's compressor is always overlapping
    case WeightId::indexer_gate_proj: return {2 * di, d};
    case WeightId::indexer_position_bias: return {rate, 2 * di};
    case WeightId::indexer_kv_norm: return {di};
    case WeightId::indexer_q_b_proj: return {hi * di, c.q_lora_rank};
    case WeightId::indexer_weights_proj: return {hi, d};
  }
  fail("weight_shape: invalid WeightId " + std::to_string(static_cast<int>(id)));
}

std::vector<WeightSpec> weight_specs(const Config& c, LayerType t) {
  std::vector<WeightSpec> out;
  for (const WeightEntry& e : kWeightTable)
    if (layer_has(t, e.part))
      out.push_back(
          {e.id, std::string(e.name), std::string(e.deepseek), weight_shape(c, t, e.id), e.part, e.role, e.released});
  return out;
}

std::vector<std::string> projection_names(LayerType t) {
  std::vector<std::string> n;
  for (const WeightEntry& e : kWeightTable)
    if (layer_has(t, e.part) && is_projection(e.role)) n.emplace_back(e.name);
  return n;
}

namespace {

// The member of w (or of its compressor / indexer, null if absent) that holds id.
template <class W>
auto slot(W& w, WeightId id) -> decltype(&w.q_a_proj) {
  switch (id) {
    case WeightId::q_a_proj: return &w.q_a_proj;
    case WeightId::q_a_norm: return &w.q_a_norm;
    case WeightId::q_b_proj: return &w.q_b_proj;
    case WeightId::kv_proj: return &w.kv_proj;
    case WeightId::kv_norm: return &w.kv_norm;
    case WeightId::o_a_proj: return &w.o_a_proj;
    case WeightId::o_b_proj: return &w.o_b_proj;
    case WeightId::sinks: return &w.sinks;
    default: break;
  }
  const WeightPart part = weight_entry(id).part;
  auto* c = part == WeightPart::compressor ? (w.compressor ? &*w.compressor : nullptr)
                                           : (w.indexer ? &w.indexer->compressor : nullptr);
  if (!c) return nullptr;
  switch (id) {
    case WeightId::compressor_kv_proj:
    case WeightId::indexer_kv_proj: return &c->kv_proj;
    case WeightId::compressor_gate_proj:
    case WeightId::indexer_gate_proj: return &c->gate_proj;
    case WeightId::compressor_position_bias:
    case WeightId::indexer_position_bias: return &c->position_bias;
    case WeightId::compressor_kv_norm:
    case WeightId::indexer_kv_norm: return &c->kv_norm;
    case WeightId::indexer_q_b_proj: return &w.indexer->q_b_proj;
    case WeightId::indexer_weights_proj: return &w.indexer->weights_proj;
    default: return nullptr;
  }
}

}  // namespace

Tensor& weight(LayerWeights& w, WeightId id) {
  const WeightPart part = weight_entry(id).part;
  if (part == WeightPart::compressor && !w.compressor) w.compressor.emplace();
  if (part == WeightPart::indexer && !w.indexer) w.indexer.emplace();
  return *slot(w, id);
}

const Tensor& weight(const LayerWeights& w, WeightId id) {
  const Tensor* t = slot(w, id);
  if (!t)
    fail("weight '" + std::string(weight_entry(id).name) + "': the layer's weights have no " +
         (weight_entry(id).part == WeightPart::indexer ? "indexer" : "compressor"));
  return *t;
}

LayerWeights empty_weights(LayerType t) {
  LayerWeights w;
  if (layer_has(t, WeightPart::compressor)) w.compressor.emplace();
  if (layer_has(t, WeightPart::indexer)) w.indexer.emplace();
  return w;
}

LayerWeights zero_weights(const Config& c, LayerType t) {
  LayerWeights w = empty_weights(t);
  for_each_weight(w, c, t, [](const WeightSpec& s, Tensor& x) { x = Tensor(s.shape); });
  return w;
}

}  // namespace dsv4
