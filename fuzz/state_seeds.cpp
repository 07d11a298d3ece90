#include "state_seeds.h"

#include <fstream>
#include <iterator>

#include "dsv4/layer.h"
#include "dsv4/random.h"
#include "state_fuzz_input.h"

namespace dsv4::fuzz {

std::vector<StateSeed> state_seeds(const std::filesystem::path& scratch) {
  const Config c = state_fuzz_config();
  // W = 4, m = 2, m' = 4: 0 empty, 3 a full window ring, 6 entries of both rates with
  // tokens pending, 13 a wrapped ring, odd CSA pending and HCA pending.
  const int64_t positions[] = {0, 3, 6, 13};
  std::vector<StateSeed> out;
  for (LayerType t : {LayerType::sliding, LayerType::csa, LayerType::hca})
    for (Numerics n : {Numerics::reference, Numerics::deployment}) {
      const Layer layer(c, t, random_layer_weights(c, t, 7), LayerOptions{WeightFormat::f32, n});
      for (int64_t pos : positions) {
        LayerState s = layer.new_state();
        const Tensor x = random_uniform({pos, c.hidden_size}, 1.0f, 11 + static_cast<uint64_t>(pos));
        for (int64_t p = 0; p < pos;) {  // in chunks of up to 5 tokens, as a server would feed them
          const int64_t len = std::min<int64_t>(5, pos - p);
          layer.forward(TensorView{x.ptr() + p * c.hidden_size, {len, c.hidden_size}}, s);
          p += len;
        }
        const std::string name =
            std::string(layer_type_name(t)) + "_" + std::string(numerics_name(n)) + "_pos" + std::to_string(pos);
        const std::filesystem::path file = scratch / (name + ".state");
        save_state(s, c, file);
        std::ifstream in(file, std::ios::binary);
        const std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
        std::filesystem::remove(file);
        out.push_back({name, state_fuzz_seed(t, n, bytes)});
      }
    }
  return out;
}

}  // namespace dsv4::fuzz
