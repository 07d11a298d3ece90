// The README's API example, built with the project so it stays true.
// Run from the repository root: build/examples/dsv4_quickstart
#include <cstdio>

#include <dsv4/layer.h>
#include <dsv4/safetensors.h>

using namespace dsv4;

int main() try {
  SafeTensors file = SafeTensors::open("tests/data/conformance/small_csa_stateless_s37.safetensors");
  LayerSpec spec = layer_spec_from_json_text(file.meta("config"), "config");  // or Config::preset("v4-flash")
  Layer layer(spec.config, spec.type, load_layer_weights(file, spec.config, spec.type));

  Tensor x = file.f32("chunk0.hidden_states");  // [B, S, d]
  std::vector<Intermediates> debug;             // optional: q, kv, entries, scores, top-k
  Tensor y = layer.forward(x, &debug);          // one-shot, positions 0..S-1 -> [B, S, d]

  LayerState state = layer.new_state();          // decode: one state per sequence
  Tensor prompt({12, spec.config.hidden_size});  // [S, d]
  Tensor out = layer.forward(prompt, state);     // prefill a chunk ...
  Tensor tok({1, spec.config.hidden_size});
  Tensor next = layer.forward(tok, state);  // ... then one token at a time
  std::printf("one-shot %s, decode step %s at position %lld\n", shape_str(y.shape).c_str(),
              shape_str(next.shape).c_str(), static_cast<long long>(state.position()));
} catch (const dsv4::Error& e) {  // bad files, shapes, configs: the message names the file, tensor or key
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
