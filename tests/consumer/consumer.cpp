// Runs the layer of a conformance file and compares its output with the file's:
// what a project that links dsv4 does. Exit 0 iff every value is within
// 1e-5 + 1e-5·|ref|. Usage: consumer FILE.safetensors
#include <cmath>
#include <cstdio>

#include <dsv4/layer.h>
#include <dsv4/safetensors.h>
#include <dsv4/version.h>

int main(int argc, char** argv) try {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CONFORMANCE_FILE.safetensors\n", argv[0]);
    return 2;
  }
  const dsv4::SafeTensors file = dsv4::SafeTensors::open(argv[1]);
  const dsv4::LayerSpec spec = dsv4::layer_spec_from_json_text(file.meta("config"), "config");
  const dsv4::Layer layer(spec.config, spec.type, dsv4::load_layer_weights(file, spec.config, spec.type));
  const dsv4::Tensor y = layer.forward(file.f32("chunk0.hidden_states"));
  const dsv4::Tensor ref = file.f32("chunk0.output");
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.data.size(); ++i) {
    const double err = std::fabs(static_cast<double>(y.data[i]) - ref.data[i]);
    worst = std::max(worst, err);
    bad += !(err <= 1e-5 + 1e-5 * std::fabs(ref.data[i]));
  }
  std::printf("dsv4 %s (headers %s), %s: %s layer, max |ours - ref| = %.3g, %d out of tolerance\n",
              dsv4::version().c_str(), DSV4_VERSION, argv[1], std::string(dsv4::layer_type_name(spec.type)).c_str(),
              worst, bad);
  return bad == 0 && y.shape == ref.shape ? 0 : 1;
} catch (const dsv4::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
