"""dsv4: the attention layers of DeepSeek-V4 (sliding window, CSA, HCA) on CPU.

A thin layer over the C++ library: the same numbers as `dsv4 verify`, NumPy or
torch tensors in, the same kind out, the GIL released while computing.

    import dsv4
    layer = dsv4.Layer(dsv4.Config.preset("v4-flash"), "csa", state_dict)
    y = layer(x)                                  # x [B, S, d] or [S, d]
    state = layer.new_state()                     # decode
    y1 = layer(x[:100], state=state); y2 = layer(x[100:101], state=state)
    dx, dweights = layer.backward(x, dy)          # gradients of sum(layer(x) * dy)
    y = layer(x_packed, cu_seqlens=[0, 100, 350])  # packed documents [T, d], each as if alone
    y = dsv4.context_parallel_forward(layer, x_mine, S, MPI.COMM_WORLD)  # under mpirun: this rank's blocks

Every failure is a dsv4.Error (a ValueError) naming the tensor, key, shape or file.
See docs/python.md.
"""
from ._core import (Config, Error, RopeScaling, __version__, build_info, get_num_threads, safetensors_metadata,
                    set_num_threads)
from ._layer import Gradients, Layer, State, Tape, cu_seqlens_from_segment_ids
from ._arrays import load_safetensors, save_safetensors
from ._parallel import context_parallel_forward, rank_blocks

LAYER_TYPES = ("sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention")

__all__ = ["Config", "Error", "Gradients", "Layer", "RopeScaling", "State", "Tape", "LAYER_TYPES", "build_info",
           "context_parallel_forward", "cu_seqlens_from_segment_ids", "get_num_threads", "load_safetensors",
           "rank_blocks", "safetensors_metadata", "save_safetensors", "set_num_threads"]


def __getattr__(name):
    """dsv4.torch is imported on first use (it imports torch; the rest of dsv4 does not)."""
    if name == "torch":
        import importlib
        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'dsv4' has no attribute '{name}'")
