// Layer: its weights packed once; every method hands chunks of sequences to
// the scheduler (pipeline/job.h) or a tape to the backward (train/backward.h).
#include "dsv4/layer.h"

#include <bit>

#include "common/finite.h"
#include "ops/fp4_dot.h"
#include "pipeline/job.h"
#include "train/backward.h"

namespace dsv4 {

static_assert(Layer::kPrefillChunk == kPrefillChunk);

Layer::Layer(Config config, LayerType type, LayerWeights weights, LayerOptions options)
    : config_(std::move(config)), type_(type), weights_(std::move(weights)) {
  config_.validate();
  validate_weights(weights_, config_, type_);
  const int64_t di = config_.index_head_dim;
  if (options.numerics == Numerics::deployment && type_ == LayerType::csa &&
      !std::has_single_bit(static_cast<uint64_t>(di)))
    fail("deployment numerics: index_head_dim must be a power of two for the indexer's Hadamard transform (got " +
         std::to_string(di) + ")");
  if (options.numerics == Numerics::deployment && type_ == LayerType::csa && di > fp4dot::kMaxDim)
    fail("deployment numerics: index_head_dim must be at most " + std::to_string(fp4dot::kMaxDim) +
         " for the FP4 indexer (its blocks of 32 per head; got " + std::to_string(di) + ")");
  if (options.weights != WeightFormat::native) {  // f32 / bf16: from the dequantised values
    for (auto& [name, m] : weights_.stored) weight(weights_, find_weight(name)->id) = m.dequantised();
    weights_.stored.clear();
  }
  packed_ = std::make_unique<PackedLayer>(pack_layer(config_, type_, weights_, options.weights == WeightFormat::bf16));
  packed_->numerics = options.numerics;
  weights_.stored.clear();
  // The packed matrices are the only copy: release the originals.
  for_each_weight(weights_, config_, type_, [](const WeightSpec& s, Tensor& x) {
    if (is_projection(s.role)) x = Tensor();
  });
}

size_t Layer::weight_bytes() const {
  size_t n = 0;  // the small tensors; the projection matrices are counted packed
  for_each_weight(weights_, config_, type_, [&](const WeightSpec& s, const Tensor& x) {
    if (!is_projection(s.role)) n += x.data.size();
  });
  return n * sizeof(float) + packed_->bytes();
}

Layer::~Layer() = default;
Layer::Layer(Layer&& o) noexcept
    : config_(std::move(o.config_)), type_(o.type_), weights_(std::move(o.weights_)), packed_(std::move(o.packed_)) {
  if (packed_) packed_->w = &weights_;
}
Layer& Layer::operator=(Layer&& o) noexcept {
  config_ = std::move(o.config_);
  type_ = o.type_;
  weights_ = std::move(o.weights_);
  packed_ = std::move(o.packed_);
  if (packed_) packed_->w = &weights_;
  return *this;
}

LayerState Layer::new_state() const { return LayerState(config_, type_, packed_->numerics); }
Numerics Layer::numerics() const { return packed_->numerics; }

namespace {

// One-shot input: [B, S, d], or [S, d] for one sequence. Returns it as [B, S, d].
Shape batch_shape(const TensorView& x, int64_t d) {
  const size_t n = x.shape.size();
  if ((n != 2 && n != 3) || x.shape.back() != d)
    fail("input hidden_states: expected shape [B, S, " + std::to_string(d) + "] or [S, " + std::to_string(d) +
         "], got " + shape_str(x.shape));
  return n == 3 ? x.shape : Shape{1, x.dim(0), d};
}

// A batch [B, S, d] is B documents of S tokens: boundaries {0, S, ..., B·S}.
std::vector<int64_t> batch_documents(const TensorView& x, int64_t d) {
  const Shape shape = batch_shape(x, d);
  std::vector<int64_t> cu(static_cast<size_t>(shape[0] + 1));
  for (size_t i = 0; i < cu.size(); ++i) cu[i] = static_cast<int64_t>(i) * shape[1];
  return cu;
}

// A packed buffer: [T, d] or [1, T, d], its boundaries checked against T.
void check_packed(const TensorView& x, int64_t d, std::span<const int64_t> cu) {
  const size_t n = x.shape.size();
  if (!((n == 2 || (n == 3 && x.dim(0) == 1)) && x.shape.back() == d))
    fail("packed input hidden_states: expected shape [T, " + std::to_string(d) + "] or [1, T, " + std::to_string(d) +
         "], got " + shape_str(x.shape));
  check_cu_seqlens(cu, x.numel() / d);
}

// Every document (rows [cu_i, cu_i+1) of x) through a fresh state, positions
// from 0, all in one run_jobs call: document i's rows of out, its debug and its
// tape are those of a call with it alone.
void forward_documents(const PackedLayer& p, const float* x, std::span<const int64_t> cu, float* out,
                       std::vector<Intermediates>* debug, StageTimes* times, TapeData* tape) {
  const int64_t d = p.c.hidden_size;
  const size_t n = cu.size() - 1;
  std::vector<LayerState> states(n, LayerState(p.c, p.type, p.numerics));
  if (debug) debug->assign(n, {});
  if (tape) tape->seqs.resize(n), tape->cu.assign(cu.begin(), cu.end());
  std::vector<Job> jobs;
  for (size_t i = 0; i < n; ++i) {
    const int64_t len = cu[i + 1] - cu[i];
    if (tape) size_seq_tape(p, len, tape->seqs[i]);
    if (len == 0) continue;
    jobs.emplace_back(x + cu[i] * d, len, &states[i], out + cu[i] * d, debug ? &(*debug)[i] : nullptr);
    if (tape) jobs.back().tape = &tape->seqs[i];
  }
  if (!jobs.empty()) run_jobs(p, jobs, times);
  for (size_t i = 0; tape && p.rate && i < n; ++i) tape->seqs[i].entries = states[i].compressor().entries;
}

// One map per document, each document in a call of its own: a map needs its
// document whole, and one document's activations bound the memory.
std::vector<AttentionMap> map_documents(const PackedLayer& p, const float* x, std::span<const int64_t> cu, bool dense) {
  const int64_t d = p.c.hidden_size;
  std::vector<AttentionMap> maps(cu.size() - 1);
  Tensor out;  // per document, overwritten: only the maps are kept
  std::vector<Job> jobs(1);
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    const int64_t len = cu[i + 1] - cu[i];
    if (len == 0) {  // no queries: the map's shapes with S = 0
      maps[i].mass = Tensor({p.c.num_attention_heads, 0, 3});
      if (p.type == LayerType::csa) maps[i].selected.shape = {0, 0};
      if (dense) maps[i].dense = Tensor({p.c.num_attention_heads, 0, 0});
      continue;
    }
    LayerState state(p.c, p.type, p.numerics);
    if (out.numel() < len * d) out = Tensor({len, d});
    jobs[0] = Job(x + cu[i] * d, len, &state, out.ptr(), nullptr);
    jobs[0].map = &maps[i], jobs[0].dense_map = dense;
    run_jobs(p, jobs, nullptr);
  }
  return maps;
}

}  // namespace

Tensor Layer::forward(TensorView x, std::vector<Intermediates>* debug, StageTimes* times) const {
  const std::vector<int64_t> cu = batch_documents(x, config_.hidden_size);
  Tensor out(x.shape);
  forward_documents(*packed_, x.data, cu, out.ptr(), debug, times, nullptr);
  return out;
}

Tensor Layer::forward(TensorView x, std::span<const int64_t> cu_seqlens, std::vector<Intermediates>* debug,
                      StageTimes* times) const {
  check_packed(x, config_.hidden_size, cu_seqlens);
  Tensor out(x.shape);
  forward_documents(*packed_, x.data, cu_seqlens, out.ptr(), debug, times, nullptr);
  return out;
}

namespace {

// forward_train's common part: the tape (reusing an earlier one's memory) and the forward.
Tensor train_documents(const PackedLayer& p, const TensorView& x, std::span<const int64_t> cu,
                       std::unique_ptr<TapeData>& slot) {
  std::unique_ptr<TapeData> data = std::move(slot);
  if (!data) data = std::make_unique<TapeData>();
  data->layer = &p;
  data->block = false, data->rows_first = 0, data->rows.clear();
  data->x_shape = x.shape;
  data->x.assign(x.data, x.data + x.numel());
  Tensor out(x.shape);
  forward_documents(p, x.data, cu, out.ptr(), nullptr, nullptr, data.get());
  slot = std::move(data);
  return out;
}

}  // namespace

Tensor Layer::forward_train(TensorView x, Tape& tape) const {
  check_trainable(*packed_, "forward_train");
  return train_documents(*packed_, x, batch_documents(x, config_.hidden_size), tape.d_);
}

Tensor Layer::forward_train(TensorView x, std::span<const int64_t> cu_seqlens, Tape& tape) const {
  check_trainable(*packed_, "forward_train");
  check_packed(x, config_.hidden_size, cu_seqlens);
  return train_documents(*packed_, x, cu_seqlens, tape.d_);
}

std::vector<AttentionMap> Layer::attention_map(TensorView x, bool dense) const {
  return map_documents(*packed_, x.data, batch_documents(x, config_.hidden_size), dense);
}

std::vector<AttentionMap> Layer::attention_map(TensorView x, std::span<const int64_t> cu_seqlens, bool dense) const {
  check_packed(x, config_.hidden_size, cu_seqlens);
  return map_documents(*packed_, x.data, cu_seqlens, dense);
}

AttentionMap Layer::attention_map(TensorView x, LayerState& state, bool dense) const {
  const int64_t d = config_.hidden_size;
  if (!((x.shape.size() == 2 && x.dim(1) == d) || (x.shape.size() == 3 && x.dim(0) == 1 && x.dim(2) == d)))
    fail("attention_map: expected a chunk [S, " + std::to_string(d) + "] or [1, S, " + std::to_string(d) + "], got " +
         shape_str(x.shape));
  if (!state.fits(config_, type_, numerics()))
    fail("attention_map: the state was made for another layer (type, dimensions or numerics)");
  AttentionMap map;
  Tensor out({x.numel() / d, d});  // only the map is kept
  std::vector<Job> jobs{Job(x.data, x.numel() / d, &state, out.ptr(), nullptr)};
  jobs[0].map = &map, jobs[0].dense_map = dense;
  if (jobs[0].len > 0) run_jobs(*packed_, jobs, nullptr);
  return map;
}

Tensor Layer::forward(TensorView x, LayerState& state, Intermediates* debug, StageTimes* times) const {
  const TensorView xs[] = {x};
  LayerState* sts[] = {&state};
  std::vector<Intermediates> dbg;
  std::vector<Tensor> out = forward_batch(xs, sts, debug ? &dbg : nullptr, times);
  if (debug) *debug = std::move(dbg[0]);
  return std::move(out[0]);
}

std::vector<Tensor> Layer::forward_batch(std::span<const Tensor* const> xs, std::span<LayerState* const> states,
                                         std::vector<Intermediates>* debug, StageTimes* times) const {
  std::vector<TensorView> views;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!xs[i]) fail("forward_batch: input " + std::to_string(i) + " is null");
    views.emplace_back(*xs[i]);
  }
  return forward_batch(std::span<const TensorView>(views), states, debug, times);
}

std::vector<Tensor> Layer::forward_batch(std::span<const TensorView> xs, std::span<LayerState* const> states,
                                         std::vector<Intermediates>* debug, StageTimes* times) const {
  if (xs.size() != states.size())
    fail("forward_batch: " + std::to_string(xs.size()) + " inputs but " + std::to_string(states.size()) + " states");
  const int64_t d = config_.hidden_size;
  std::vector<Tensor> outs(xs.size());
  std::vector<Job> jobs;
  if (debug) debug->assign(xs.size(), {});
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!states[i]) fail("forward_batch: state " + std::to_string(i) + " is null");
    const TensorView& x = xs[i];
    const bool ok = (x.shape.size() == 2 && x.dim(1) == d) || (x.shape.size() == 3 && x.dim(0) == 1 && x.dim(2) == d);
    if (!ok)
      fail("chunk " + std::to_string(i) + ": expected shape [S, " + std::to_string(d) + "] or [1, S, " +
           std::to_string(d) + "], got " + shape_str(x.shape));
    if (states[i]->numerics() != numerics())
      fail("chunk " + std::to_string(i) + ": state has " + std::string(numerics_name(states[i]->numerics())) +
           " numerics, the layer " + std::string(numerics_name(numerics())));
    if (!states[i]->fits(config_, type_, numerics()))
      fail("chunk " + std::to_string(i) + ": state was made for another layer (type " +
           std::string(layer_type_name(states[i]->type())) + " or other dimensions)");
    for (size_t k = 0; k < i; ++k)
      if (states[k] == states[i]) fail("forward_batch: the same state is given twice");
    const int64_t s = x.numel() / d;
    outs[i] = Tensor({s, d});
    if (s > 0) jobs.emplace_back(x.data, s, states[i], outs[i].ptr(), debug ? &(*debug)[i] : nullptr);
  }
  if (!jobs.empty()) run_jobs(*packed_, jobs, times);
  return outs;
}

LayerGradients Layer::zero_gradients() const {
  LayerGradients g;
  g.weights = zero_weights(config_, type_);
  return g;
}

void Layer::backward(const Tape& tape, TensorView dy, LayerGradients& grads) const {
  const TapeData* td = tape.data();
  if (!td) fail("backward: the tape is empty (fill it with forward_train first)");
  if (td->layer != packed_.get()) fail("backward: the tape was recorded by another layer");
  if (td->block) fail("backward: the tape is a context-parallel block's (Layer::block_backward_* read it)");
  if (dy.shape != td->x_shape)
    fail("backward: dy has shape " + shape_str(dy.shape) + ", the forward's output " + shape_str(td->x_shape));
  check_finite(dy.data, dy.numel(), "backward: dy");
  check_gradient_shapes(*packed_, grads.weights, "backward");
  if (grads.dx.shape != td->x_shape) grads.dx = Tensor(td->x_shape);
  backward_sequences(*packed_, *td, dy.data, grads);
}

LayerGradients Layer::backward(const Tape& tape, TensorView dy) const {
  LayerGradients g = zero_gradients();
  backward(tape, dy, g);
  return g;
}

LayerGradients Layer::backward(TensorView x, TensorView dy) const {
  Tape tape;
  forward_train(x, tape);
  return backward(tape, dy);
}

LayerGradients Layer::backward(TensorView x, std::span<const int64_t> cu_seqlens, TensorView dy) const {
  Tape tape;
  forward_train(x, cu_seqlens, tape);
  return backward(tape, dy);
}

}  // namespace dsv4
