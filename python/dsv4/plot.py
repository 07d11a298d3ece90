"""Where a DeepSeek-V4 attention layer attends: python3 -m dsv4.plot.

    python3 -m dsv4.plot --model DIR --layer N --input FILE --out fig.png

FILE is a safetensors file with `hidden_states` [B, S, d] or [S, d] (batch row 0
is drawn). Three panels: the CSA selection pattern (query position x compressed
entry; for sliding/HCA layers the head-averaged attention over keys), the
softmax mass split by query position (window / compressed / sink, mean over
heads), and the sink's share per head. Needs matplotlib (python3-matplotlib).
"""
import argparse
import io
import os
import sys

import numpy as np

from . import Layer, _core, load_safetensors

_COLORS = {"window": "#4c72b0", "compressed": "#dd8452", "sink": "#8c8c8c"}


def attention_figure(layer, x, title=None):
    """A matplotlib Figure of layer.attention_map(x) for one sequence x [S, d]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(x, dtype=np.float32)
    s = x.shape[0]
    csa = layer.layer_type == "compressed_sparse_attention"
    m = layer.attention_map(x, dense=not csa)
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.4), gridspec_kw={"width_ratios": [1.1, 1.3, 1.0]})
    fig.suptitle(title or f"{layer.layer_type}, {s} tokens")

    if csa:  # selection pattern: which compressed entries each query reads
        sel = m["selected"]
        n_t = int(sel.max()) + 1 if sel.size and sel.max() >= 0 else 1
        img = np.zeros((s, n_t))
        rows, cols = np.nonzero(sel >= 0)
        img[rows, sel[rows, cols]] = 1
        ax[0].imshow(img, aspect="auto", interpolation="nearest", cmap="Greys", origin="upper")
        ax[0].set(title=f"CSA top-{layer.config.index_topk} selection", xlabel="compressed entry",
                  ylabel="query position")
    else:  # dense map averaged over heads, log scale
        dense = m["dense"].mean(axis=0)
        ax[0].imshow(np.log10(dense + 1e-6), aspect="auto", interpolation="nearest", cmap="viridis")
        ax[0].axvline(s - 0.5, color="w", lw=0.8)
        ax[0].set(title="attention (mean over heads, log10): positions | entries", xlabel="key",
                  ylabel="query position")

    pos = np.arange(s)
    parts = [(k, m[k].mean(axis=0)) for k in ("window", "compressed", "sink")]
    ax[1].stackplot(pos, *[v for _, v in parts], labels=[k for k, _ in parts], colors=[_COLORS[k] for k, _ in parts])
    ax[1].set(title="softmax mass by query position (mean over heads)", xlabel="query position", ylabel="mass",
              xlim=(0, max(s - 1, 1)), ylim=(0, 1))
    ax[1].legend(loc="lower left", fontsize=8)

    sink = m["sink"].mean(axis=1)
    ax[2].bar(np.arange(sink.size), sink, color=_COLORS["sink"])
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
    ap.add_argument("--weights", default="f32", choices=["f32", "bf16"], help="weights format")
    a = ap.parse_args(argv)

    layer = Layer.from_model(a.model, a.layer, weights_format=a.weights)
    tensors = load_safetensors(a.input)
    if a.input_name not in tensors:
        raise SystemExit(f"{a.input}: no tensor '{a.input_name}' (has: {', '.join(sorted(tensors))})")
    x = tensors[a.input_name]
    x = x[0] if x.ndim == 3 else x
    fig = attention_figure(layer, x, title=f"{os.path.basename(os.path.normpath(a.model))} layer {a.layer}: {layer.layer_type}, {x.shape[0]} tokens")
    buf = io.BytesIO()  # then written as every dsv4 file is: never a torn file (dsv4/atomic_file.h)
    fig.savefig(buf, format=os.path.splitext(a.out)[1][1:].lower() or "png", dpi=110)
    _core.write_file_atomic(a.out, buf.getvalue())
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
