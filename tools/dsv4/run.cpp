// dsv4 run: one attention layer of a model folder over `hidden_states`
// [B, S, d] (F32 or BF16) -> `output` [B, S, d] F32; or packed documents
// [T, d] with their boundaries (--cu-seqlens NAME, an I64 tensor of the file).
#include <omp.h>

#include <chrono>
#include <cstdio>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "bench_model.h"
#include "commands.h"
#include "dsv4/model.h"

namespace dsv4::cli {
namespace {

struct RunArgs {
  std::string model, input, output, input_name = "hidden_states", cu_name;
  int64_t layer = 0, chunk = 0;
  int threads = 0;
  std::string weights = "f32", numerics = "reference";
  bool compare_f32 = false, json = false;
};

void run(const RunArgs& a) {
  if (a.threads > 0) omp_set_num_threads(a.threads);
  const Model m = Model::open(a.model);
  const Layer layer = m.layer(a.layer, LayerOptions{parse_weight_format(a.weights), parse_numerics(a.numerics)});
  const SafeTensors in = SafeTensors::open(a.input);
  const Tensor x = in.f32(a.input_name);
  const int64_t d = m.config().hidden_size;
  std::vector<int64_t> cu;  // packed documents' boundaries (--cu-seqlens)
  const bool packed = !a.cu_name.empty();
  if (packed) {
    const TensorI64 c = in.i64(a.cu_name);
    if (c.shape.size() != 1)
      fail(a.input + ": tensor '" + a.cu_name + "': expected 1-D boundaries, got " + shape_str(c.shape));
    if (a.chunk > 0) fail("--cu-seqlens: packed documents run one-shot (not with --chunk)");
    cu = c.data;
  } else if (x.shape.size() != 3 || x.dim(2) != d) {
    fail(a.input + ": tensor '" + a.input_name + "': shape " + shape_str(x.shape) + ", expected [B, S, " +
         std::to_string(d) + "]");
  }
  const auto compute = [&](const Layer& l) { return packed ? l.forward(x, cu) : run_layer(l, x, a.chunk); };
  const auto t0 = std::chrono::steady_clock::now();
  const Tensor y = compute(layer);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_safetensors(a.output, {named("output", y)},
                    {{"model", a.model},
                     {"layer", std::to_string(a.layer)},
                     {"layer_type", std::string(layer_type_name(layer.type()))},
                     {"chunk", std::to_string(a.chunk)},
                     {"cu_seqlens", a.cu_name},
                     {"numerics", a.numerics}});
  std::FILE* out = report_stream(a.json);
  nlohmann::json j = {{"model", a.model},
                      {"layer", a.layer},
                      {"layer_type", std::string(layer_type_name(layer.type()))},
                      {"input", a.input},
                      {"input_shape", x.shape},
                      {"output", a.output},
                      {"chunk", a.chunk},
                      {"weights", a.weights},
                      {"numerics", a.numerics},
                      {"weight_bytes", layer.weight_bytes()},
                      {"seconds", secs}};
  std::fprintf(out, "layer %lld (%s): %s -> %s  (%.3f s%s)\n", static_cast<long long>(a.layer),
               std::string(layer_type_name(layer.type())).c_str(), shape_str(x.shape).c_str(), a.output.c_str(), secs,
               a.chunk > 0 ? (", chunks of " + std::to_string(a.chunk)).c_str() : "");
  if (a.compare_f32) {  // what bf16/native weights cost in accuracy and save in memory
    const Layer ref = m.layer(a.layer, LayerOptions{WeightFormat::f32, layer.numerics()});
    const Tensor y32 = compute(ref);
    double max_abs = 0, max_ref = 0;
    for (size_t i = 0; i < y.data.size(); ++i) {
      max_abs = std::max(max_abs, std::fabs(static_cast<double>(y.data[i]) - y32.data[i]));
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(y32.data[i])));
    }
    j["compare_f32"] = {{"f32_weight_bytes", ref.weight_bytes()}, {"max_abs", max_abs}, {"max_abs_output", max_ref}};
    std::fprintf(out,
                 "weights %s: %.2f MB in memory vs %.2f MB as f32 (%.0f%% saved); output vs f32 weights: max abs %.3e "
                 "(max |output| %.3e)\n",
                 a.weights.c_str(), layer.weight_bytes() / 1e6, ref.weight_bytes() / 1e6,
                 100.0 * (1.0 - static_cast<double>(layer.weight_bytes()) / static_cast<double>(ref.weight_bytes())),
                 max_abs, max_ref);
  }
  if (a.json) std::printf("%s\n", j.dump().c_str());
}

}  // namespace

void add_run(CLI::App& app, int& rc) {
  auto* cmd = app.add_subcommand("run", "Run one attention layer of a model folder over an input file");
  auto a = std::make_shared<RunArgs>();
  cmd->add_option("-m,--model", a->model, "model folder (config.json + safetensors)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--layer", a->layer, "layer index")->required()->check(layer_index());
  cmd->add_option("--input", a->input, "safetensors file with 'hidden_states' [B, S, d] (F32 or BF16)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--input-name", a->input_name, "name of the input tensor")->capture_default_str();
  cmd->add_option("--cu-seqlens", a->cu_name,
                  "packed documents: name of an I64 tensor of the input file holding the boundaries [0, ..., T] of "
                  "the documents packed in the input [T, d] (docs/packing.md); each is run as if alone");
  cmd->add_option("--output", a->output, "safetensors file to write 'output' [B, S, d] F32 to")->required();
  cmd->add_option("--chunk", a->chunk, "feed each batch row through a decode state in chunks of N tokens")
      ->check(CLI::PositiveNumber);
  cmd->add_option("-t,--threads", a->threads, "OpenMP threads (default: all)")->check(CLI::PositiveNumber);
  cmd->add_option("--weights", a->weights,
                  "projection matrices in memory: f32, bf16, or native (as the checkpoint stores them: FP8 + scales, "
                  "BF16, ...); "
                  "all widened inside the GEMMs")
      ->capture_default_str();
  cmd->add_option("--numerics", a->numerics,
                  "reference (fp32 math) or deployment (FP8 caches, Hadamard + FP4 indexer; docs/numerics.md)")
      ->check(CLI::IsMember({"reference", "deployment"}))
      ->capture_default_str();
  cmd->add_flag("--compare-f32", a->compare_f32, "also run with f32 weights; report the memory saved and the error");
  cmd->add_flag("--json", a->json, "stdout: one JSON object (the report goes to stderr)");
  cmd->callback([&rc, a] {
    run(*a);
    rc = 0;
  });
}

}  // namespace dsv4::cli
