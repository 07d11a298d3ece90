// random_state: a synthetic decode state has the structure of a prefilled
// state of the same length (rows, pending tokens, series A, formats, bytes),
// passes load_state's checks after a save, does not depend on the thread
// count, and decodes (the selection reads as many entries as after a prefill).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "dsv4/layer.h"
#include "dsv4/random.h"
#include "state_util.h"

namespace dsv4 {
namespace {

using namespace state_test;

void same_structure(const CompressorState& a, const CompressorState& b) {
  EXPECT_EQ(a.emitted, b.emitted);
  EXPECT_EQ(a.pending, b.pending);
  EXPECT_EQ(a.has_prev, b.has_prev);
  EXPECT_EQ(a.entries.rows(), b.entries.rows());
  EXPECT_EQ(a.entries.format(), b.entries.format());
  EXPECT_EQ(a.entries.row_bytes(), b.entries.row_bytes());
  EXPECT_EQ(a.pend_c.size(), b.pend_c.size());
  EXPECT_EQ(a.prev_c.size(), b.prev_c.size());
}

bool same_values(const LayerState& a, const LayerState& b) {
  return a.position() == b.position() && a.window() == b.window() && a.compressor().entries == b.compressor().entries &&
         a.indexer().entries == b.indexer().entries && a.compressor().pend_c == b.compressor().pend_c &&
         a.indexer().prev_zb == b.indexer().prev_zb;
}

TEST(RandomState, HasThePrefilledStructureAndLoads) {
  const Config c = test::small_config();
  for (Numerics n : {Numerics::reference, Numerics::deployment})
    for (LayerType t : kTypes)
      for (int64_t tokens : {0, 3, 4, 37}) {
        SCOPED_TRACE(std::string(layer_type_name(t)) + " tokens " + std::to_string(tokens) +
                     (n == Numerics::deployment ? " deployment" : " reference"));
        std::mt19937 rng(7);
        const Layer layer(c, t, test::random_weights(c, t, rng), with(n));
        LayerState pre = layer.new_state();
        if (tokens > 0) layer.forward(random_uniform({tokens, c.hidden_size}, 1.0f, 3), pre);
        const LayerState syn = random_state(c, t, tokens, 11, n);
        ASSERT_TRUE(syn.fits(c, t, n));
        EXPECT_EQ(syn.position(), tokens);
        same_structure(syn.compressor(), pre.compressor());
        same_structure(syn.indexer(), pre.indexer());
        EXPECT_EQ(syn.bytes(), pre.clone().bytes());
        EXPECT_EQ(syn.bytes(), state_bytes(c, t, tokens, n));

        const auto dir = scratch_dir("random");
        save_state(syn, c, dir / "s.state");
        const LayerState back = load_state(c, t, dir / "s.state", n);  // consistency and finiteness checks
        EXPECT_TRUE(same_values(back, syn));

        LayerState a = syn.clone(), b = pre.clone();  // one decode step from each: finite, same work
        Intermediates da, db;
        const Tensor tok = random_uniform({1, c.hidden_size}, 1.0f, 5);
        const Tensor ya = layer.forward(tok, a, &da), yb = layer.forward(tok, b, &db);
        for (float v : ya.data) ASSERT_TRUE(std::isfinite(v));
        EXPECT_EQ(da.topk.shape, db.topk.shape);
        const auto valid = [](const TensorI64& k) {
          return std::count_if(k.data.begin(), k.data.end(), [](int64_t e) { return e >= 0; });
        };
        EXPECT_EQ(valid(da.topk), valid(db.topk));
      }
}

TEST(RandomState, SameForAnyThreadCountAndSeeded) {
  const Config c = test::small_config();
  for (Numerics n : {Numerics::reference, Numerics::deployment}) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const LayerState one = random_state(c, LayerType::csa, 4099, 21, n);
    omp_set_num_threads(2);
    const LayerState two = random_state(c, LayerType::csa, 4099, 21, n);
    omp_set_num_threads(saved);
    EXPECT_TRUE(same_values(one, two));
    EXPECT_FALSE(same_values(one, random_state(c, LayerType::csa, 4099, 22, n)));
    EXPECT_EQ(one.indexer().emitted, 4099 / c.compress_rate_csa);
  }
}

TEST(RandomState, RefusesNegativeLength) {
  EXPECT_THROW(random_state(test::small_config(), LayerType::csa, -1, 1), Error);
}

}  // namespace
}  // namespace dsv4
