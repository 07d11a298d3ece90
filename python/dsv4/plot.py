"""Where a DeepSeek-V4 attention layer attends: python3 -m dsv4.plot.

    python3 -m dsv4.plot --model DIR --layer N --input FILE --out fig.png [--title TEXT]

FILE is a safetensors file with `hidden_states` [B, S, d] or [S, d] (batch row 0
is drawn). Three panels: the CSA selection pattern (query position x compressed
entry; for sliding/HCA layers the head-averaged attention over keys), the
softmax mass split by query position (window / compressed / sink, mean over
heads), and the sink's share per head. The maps are computed block by block of
queries through a decode state and binned to at most `bins` pixels per axis, so
memory does not grow with S^2. Needs matplotlib (python3-matplotlib, dsv4[plot]).
"""
import argparse
import io
import os
import sys

import numpy as np

from . import Error, Layer, _core, load_safetensors

_COLORS = {"window": "#4c72b0", "compressed": "#dd8452", "sink": "#8c8c8c"}
_PARTS = ("window", "compressed", "sink")
_MAX_BLOCK = 1024  # queries per attention_map call (the core's prefill chunk)


def _edges(n, bins):
    """Bin edges over 0..n: at most `bins` bins of (nearly) equal width, one per item when n <= bins."""
    return np.unique(np.linspace(0, n, min(n, bins) + 1).round().astype(np.int64))


def _add_binned(out, a, lo, edges):
    """out[:, b] += sum of a's columns in bin b; a's columns are the global columns lo, lo+1, ..."""
    if a.shape[1] == 0:
        return
    b0 = np.searchsorted(edges, lo, side="right") - 1
    b1 = np.searchsorted(edges, lo + a.shape[1] - 1, side="right") - 1
    starts = np.maximum(edges[b0:b1 + 1] - lo, 0)
    out[:, b0:b1 + 1] += np.add.reduceat(a, starts, axis=1)


class AttentionSummary:
    """What the figure draws, accumulated block by block of queries over one sequence x [S, d].

    image [row bins, column bins]: per query (mean over the queries of a row bin), CSA: the number
    of selected entries in each column bin; sliding/HCA: the attention mass (mean over heads) on the
    keys of each column bin, columns = key positions 0..S-1, then the compressed entries.
    mass [row bins, 3]: window / compressed / sink mass (mean over heads and the bin's queries).
    sink_per_head [H]: the sink's mass, mean over queries.
    """

    def __init__(self, layer, x, bins=512, block_bytes=256 << 20):
        c = layer.config
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise Error(f"attention figure: expected one sequence [S, d] with S > 0, got shape {list(x.shape)}")
        self.layer_type, self.tokens, heads = layer.layer_type, x.shape[0], c.num_attention_heads
        self.csa = self.layer_type == "compressed_sparse_attention"
        rate = {"compressed_sparse_attention": c.compress_rate_csa,
                "heavily_compressed_attention": c.compress_rate_hca}.get(self.layer_type, 0)
        self.rate, self.index_topk = rate, c.index_topk
        s, n_entries = self.tokens, (self.tokens // rate if rate else 0)
        self.columns = n_entries if self.csa else s + n_entries
        self.row_edges, self.col_edges = _edges(s, bins), _edges(max(self.columns, 1), bins)
        rows_per_bin = np.diff(self.row_edges)[:, None]
        image = np.zeros((len(self.row_edges) - 1, len(self.col_edges) - 1))
        mass = np.zeros((len(self.row_edges) - 1, 3))
        self.sink_per_head = np.zeros(heads)
        # The dense map of a block is [H, block, S + T] floats: the block's size bounds the memory.
        block = _MAX_BLOCK if self.csa else int(np.clip(block_bytes // (4 * heads * (s + n_entries)), 1, _MAX_BLOCK))
        state = layer.new_state()
        for q0 in range(0, s, block):
            m = layer.attention_map(x[q0:q0 + block], dense=not self.csa, state=state)
            n = m["sink"].shape[1]
            rows = np.zeros((n, image.shape[1]))
            if self.csa:
                sel = m["selected"]
                query, slot = np.nonzero(sel >= 0)
                np.add.at(rows, (query, np.searchsorted(self.col_edges, sel[query, slot], side="right") - 1), 1.0)
            else:
                dense = m["dense"].mean(axis=0)  # [n, positions so far + entries so far]
                seen = q0 + n
                _add_binned(rows, dense[:, :seen], 0, self.col_edges)
                _add_binned(rows, dense[:, seen:], s, self.col_edges)
            parts = np.stack([m[k].mean(axis=0) for k in _PARTS], axis=1)  # [n, 3]
            _add_binned(image.T, rows.T, q0, self.row_edges)
            _add_binned(mass.T, parts.T, q0, self.row_edges)
            self.sink_per_head += m["sink"].sum(axis=1)
        self.image, self.mass = image / rows_per_bin, mass / rows_per_bin
        self.sink_per_head /= max(s, 1)


def attention_figure(layer, x, title=None, bins=512):
    """A matplotlib Figure of where `layer` attends over one sequence x [S, d] (AttentionSummary)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    a = AttentionSummary(layer, x, bins)
    s = a.tokens
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1.25, 1.3, 1.0]})
    fig.suptitle(title or f"{a.layer_type}, {s} tokens")
    extent = (0, max(a.columns, 1), s, 0)  # axes in entries/keys and query positions, whatever the binning
    if a.csa:  # selection pattern: which compressed entries each query reads
        img = ax[0].imshow(a.image, aspect="auto", interpolation="nearest", cmap="Greys", extent=extent,
                           vmin=0, vmax=max(1.0, float(a.image.max())))
        t = np.arange(s + 1)
        ax[0].plot(np.minimum((t + 1) // a.rate, a.columns), t, color="#c44e52", lw=1)
        ax[0].legend(handles=[Patch(color="black", label=f"selected (top-{a.index_topk} of the indexer)"),
                              Line2D([], [], color="#c44e52", label="causal limit: entry w < (t+1)/m")],
                     loc="upper right", fontsize=8)
        ax[0].set(title="CSA selection", xlabel="compressed entry", ylabel="query position t")
        label = "selected entries per query" + (" (binned)" if a.image.shape != (s, a.columns) else "")
    else:  # dense map averaged over heads, log scale
        img = ax[0].imshow(np.log10(a.image + 1e-6), aspect="auto", interpolation="nearest", cmap="viridis",
                           extent=extent)
        if a.columns > s:
            ax[0].axvline(s, color="w", lw=0.8)
            ax[0].legend(handles=[Line2D([], [], color="w", label="key positions | compressed entries")],
                         loc="upper right", fontsize=8, facecolor="#444444", labelcolor="w")
        ax[0].set(title="attention mass, mean over heads", xlabel="key position, then compressed entry",
                  ylabel="query position t")
        label = "log10 mass per query"
    fig.colorbar(img, ax=ax[0], label=label)

    pos = (a.row_edges[:-1] + a.row_edges[1:] - 1) / 2
    ax[1].stackplot(pos, *a.mass.T, labels=_PARTS, colors=[_COLORS[k] for k in _PARTS])
    ax[1].set(title="softmax mass by query position (mean over heads)", xlabel="query position", ylabel="mass",
              xlim=(0, max(s - 1, 1)), ylim=(0, 1))
    ax[1].legend(loc="lower left", fontsize=8)

    ax[2].bar(np.arange(a.sink_per_head.size), a.sink_per_head, color=_COLORS["sink"])
    ax[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    ax[2].set(title="sink share per head (mean over queries)", xlabel="head", ylabel="mass", ylim=(0, 1))
    fig.tight_layout()
    return fig


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m dsv4.plot", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="checkpoint folder (config.json + safetensors)")
    ap.add_argument("--layer", type=int, required=True, help="layer index")
    ap.add_argument("--input", required=True, help="safetensors file with the hidden states")
    ap.add_argument("--input-name", default="hidden_states", help="tensor name in --input")
    ap.add_argument("--out", required=True, help="image file (png, pdf, svg)")
    ap.add_argument("--title", help="figure title (default: the model folder's name, layer, type and tokens)")
    ap.add_argument("--weights", default="f32", choices=["f32", "bf16", "native"], help="weights format")
    ap.add_argument("--bins", type=int, default=512, help="at most this many pixels per map axis")
    a = ap.parse_args(argv)
    try:
        if a.layer < 0:
            raise Error(f"--layer {a.layer}: layers are numbered from 0")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise Error("needs matplotlib (Debian: python3-matplotlib; pip: dsv4[plot])") from None
        layer = Layer.from_model(a.model, a.layer, weights_format=a.weights)
        tensors = load_safetensors(a.input)
        if a.input_name not in tensors:
            raise Error(f"{a.input}: no tensor '{a.input_name}' (has: {', '.join(sorted(tensors))})")
        x = tensors.pop(a.input_name)
        x = x[0] if x.ndim == 3 else x
        title = a.title or (f"{os.path.basename(os.path.normpath(a.model))} layer {a.layer}: {layer.layer_type}, "
                            f"{x.shape[0]} tokens")
        fig = attention_figure(layer, x, title=title, bins=a.bins)
        buf = io.BytesIO()  # then written as every dsv4 file is: never a torn file (dsv4/atomic_file.h)
        fig.savefig(buf, format=os.path.splitext(a.out)[1][1:].lower() or "png", dpi=110)
        _core.write_file_atomic(a.out, buf.getvalue())
    except (Error, OSError) as e:  # one line, no traceback
        print(f"python3 -m dsv4.plot: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
