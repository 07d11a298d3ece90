// dsv4 verify --context-parallel: a conformance file's sequences split over
// the ranks. A cached case's chunks are one sequence (its outputs are the
// outputs of that sequence at those positions), so every file is one check.
#include <algorithm>
#include <cstring>
#include <sstream>

#include "dsv4/context_parallel.h"
#include "dsv4/safetensors.h"

namespace dsv4 {
namespace {

// Rows [from, from + n) of batch row b of a [B, S, d] tensor, appended to out.
void append_rows(const Tensor& t, int64_t b, std::vector<float>& out) {
  const int64_t per = t.numel() / t.dim(0);
  out.insert(out.end(), t.data.begin() + b * per, t.data.begin() + (b + 1) * per);
}

// Every chunk of the file, batch row b, concatenated: [S, d] inputs and reference outputs.
void sequence(const SafeTensors& f, int64_t b, int64_t d, std::vector<float>& x, std::vector<float>& y) {
  x.clear(), y.clear();
  for (int c = 0; f.contains("chunk" + std::to_string(c) + ".hidden_states"); ++c) {
    const std::string k = "chunk" + std::to_string(c) + ".";
    const Tensor xc = f.f32(k + "hidden_states"), yc = f.f32(k + "output");
    if (xc.shape.size() != 3 || xc.dim(2) != d || yc.shape != xc.shape || b >= xc.dim(0))
      fail(f.label() + ": '" + k + "hidden_states' " + shape_str(xc.shape) + " and '" + k + "output' " +
           shape_str(yc.shape) + " are not [B, S, d] of the same shape");
    append_rows(xc, b, x);
    append_rows(yc, b, y);
  }
}

void run(const std::filesystem::path& file, MPI_Comm comm, ContextLayout layout, Tolerance tol, CaseReport& rep) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  const SafeTensors f = SafeTensors::open(file);
  const LayerSpec spec = layer_spec_from_json_text(f.meta("config"), f.label() + " metadata 'config'");
  const Layer layer(spec.config, spec.type, load_layer_weights(f, spec.config, spec.type));
  const int64_t d = spec.config.hidden_size, batch = f.f32("chunk0.hidden_states").dim(0);
  std::vector<float> x, y;
  for (int64_t b = 0; b < batch; ++b) {
    sequence(f, b, d, x, y);
    const int64_t seq = static_cast<int64_t>(x.size()) / d;
    const std::vector<TokenBlock> blocks = rank_blocks(seq, ranks, rank, layout);
    std::vector<float> mine;
    for (const TokenBlock& k : blocks) mine.insert(mine.end(), &x[k.begin * d], &x[k.end * d]);
    const auto n = static_cast<int64_t>(mine.size()) / d;
    const Tensor out = context_parallel_forward(layer, TensorView(mine.data(), {n, d}), seq, comm, {layout});
    int64_t row = 0;
    for (const TokenBlock& k : blocks) {
      const int64_t len = k.end - k.begin;
      const Tensor ref({len, d}, std::vector<float>(&y[k.begin * d], &y[k.end * d]));
      std::ostringstream what;
      what << "[" << b << "]output rows " << k.begin << ".." << k.end << " (rank " << rank << ")";
      compare(rep, what.str(), ref, out.ptr() + row * d, len * d, tol);
      row += len;
    }
  }
}

// Every rank's failure lines, on every rank in rank order.
std::vector<std::string> gather_lines(const std::vector<std::string>& lines, MPI_Comm comm, int ranks) {
  std::string joined;
  for (const std::string& l : lines) joined += l + '\n';
  int n = static_cast<int>(joined.size());
  std::vector<int> counts(ranks), disps(ranks);
  MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, comm);
  int total = 0;
  for (int q = 0; q < ranks; ++q) disps[q] = total, total += counts[q];
  std::string all(static_cast<size_t>(total), '\0');
  MPI_Allgatherv(joined.data(), n, MPI_CHAR, all.data(), counts.data(), disps.data(), MPI_CHAR, comm);
  std::vector<std::string> out;
  std::istringstream in(all);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

}  // namespace

CaseReport verify_case_context_parallel(const std::filesystem::path& file, MPI_Comm comm, ContextLayout layout,
                                        Tolerance tol) {
  int ranks = 1;
  MPI_Comm_size(comm, &ranks);
  CaseReport rep;
  rep.name = file.stem().string();
  try {  // a bad file fails alike on every rank, before any collective call
    run(file, comm, layout, tol, rep);
  } catch (const std::exception& e) {
    rep.failures.push_back(e.what());
  }
  double worst[2] = {rep.max_abs, rep.max_rel}, all_worst[2] = {0, 0};
  long long compared = rep.compared, all_compared = 0;
  MPI_Allreduce(worst, all_worst, 2, MPI_DOUBLE, MPI_MAX, comm);
  MPI_Allreduce(&compared, &all_compared, 1, MPI_LONG_LONG, MPI_SUM, comm);
  rep.failures = gather_lines(rep.failures, comm, ranks);
  rep.max_abs = all_worst[0], rep.max_rel = all_worst[1], rep.compared = all_compared;
  rep.passed = rep.failures.empty() && rep.compared > 0;
  if (rep.failures.empty() && rep.compared == 0) rep.failures.push_back("nothing was compared");
  return rep;
}

}  // namespace dsv4
