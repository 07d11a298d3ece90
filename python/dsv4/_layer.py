"""dsv4.Layer, dsv4.State, dsv4.Tape and dsv4.Gradients: the Pythonic face of the C++ Layer.

Shapes and array kinds are handled here; every number is computed by the core.
"""
import operator
import os
import warnings
from typing import Any, Dict, NamedTuple

import numpy as np

from . import _core
from ._arrays import _is_torch, as_f32, as_stored, like
from ._core import Error


def _stored_arrays(weights):
    """(name, safetensors dtype, array) per weight: the dtype as given (the core widens or keeps it)."""
    if not hasattr(weights, "items"):
        raise Error("weights: expected a mapping name -> array (e.g. a state_dict())")
    return [(str(k), *as_stored(v, f"weight '{k}'")) for k, v in weights.items()]


_warned_no_graph = False


def _warn_if_grad(x):
    """Once per process: a torch input that requires grad gets an output without a graph."""
    global _warned_no_graph
    if _warned_no_graph or not getattr(x, "requires_grad", False) or not _is_torch(x):
        return
    import torch
    if torch.is_grad_enabled():
        _warned_no_graph = True
        warnings.warn("dsv4.Layer: the input requires grad, but the output has no autograd graph (dsv4.Layer runs "
                      "outside torch's autograd); for gradients use dsv4.torch.Attention, an nn.Module with a "
                      "backward pass", stacklevel=3)


def _stack(dicts):
    """One dict of [B, ...] arrays from B per-sequence dicts of equal shapes."""
    return {k: np.stack([d[k] for d in dicts]) for k in dicts[0]} if dicts else {}


def _integers(v, what):
    """A 1-D int64 ndarray of a list, NumPy array or torch tensor of integers."""
    if _is_torch(v):
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.size == 0 and a.dtype == np.float64:  # [] from a list
        a = a.astype(np.int64)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise Error(f"{what}: expected a 1-D array of integers, got shape {a.shape} dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _index(v, what):
    """A Python int of an integer (int, NumPy integer, 0-d integer tensor)."""
    try:
        return operator.index(v)
    except TypeError:
        raise Error(f"{what}: expected an integer, got {type(v).__name__}") from None


def cu_seqlens_of(cu_seqlens=None, segment_ids=None):
    """Packed documents' boundaries {0, c_1, ..., T} from either form (or None for neither):
    cu_seqlens as given, or per-token segment ids (MaxText's), each run of equal ids one document;
    ids must not decrease."""
    if cu_seqlens is not None and segment_ids is not None:
        raise Error("give cu_seqlens or segment_ids, not both")
    if segment_ids is not None:
        return _core.cu_seqlens_from_segment_ids(_integers(segment_ids, "segment_ids"))
    return None if cu_seqlens is None else _integers(cu_seqlens, "cu_seqlens")


def cu_seqlens_from_segment_ids(segment_ids):
    """Boundaries [0, c_1, ..., T] (int64) of per-token segment ids [T]: each run of equal ids is one
    document; the ids must not decrease (a dsv4.Error names the first token where they do)."""
    return cu_seqlens_of(segment_ids=segment_ids)


class State:
    """Decode state of one sequence for one layer (window, pending windows, compressed entries)."""

    def __init__(self, core_state, owner):
        self._core = core_state
        self._owner = owner  # the token of the Layer that made it

    @property
    def position(self):
        """Tokens consumed so far (the next chunk starts here)."""
        return self._core.position

    @property
    def nbytes(self):
        """Heap bytes held by the state."""
        return self._core.nbytes

    @property
    def layer_type(self):
        return self._core.layer_type

    def clone(self):
        """An independent copy (fork a shared prefix)."""
        return State(self._core.clone(), self._owner)

    def reset(self):
        """Back to position 0, keeping the memory."""
        self._core.reset()

    def save(self, path):
        """Writes the versioned, checksummed state file (docs/decode.md); read it with Layer.load_state."""
        self._core.save(os.fspath(path))

    def __repr__(self):
        return f"dsv4.State({self.layer_type}, position={self.position}, nbytes={self.nbytes})"


class Tape:
    """What Layer.forward_train keeps for Layer.backward: the input, the CSA selection, the
    attention output and what cannot be recomputed cheaply (nothing S x S; docs/python.md)."""

    def __init__(self, core_tape, torch_in):
        self._core = core_tape
        self._torch = torch_in  # the input's kind: the gradients come back as it

    @property
    def nbytes(self):
        """Heap bytes held by the tape."""
        return self._core.nbytes

    def __repr__(self):
        return f"dsv4.Tape(nbytes={self.nbytes})"


class Gradients(NamedTuple):
    """Gradients of sum(y * dy) for y = layer(x), from Layer.backward.

    dx:      like x (its kind: NumPy or torch, and its shape), float32;
    weights: dict {name: array} with exactly the names Layer(...) takes (the reference
             state_dict keys), same shapes, float32, summed over the batch; the CSA
             indexer's (compressor.indexer.*) are zero: the top-k selection is discrete.
    """
    dx: Any
    weights: Dict[str, Any]


def _gradients(r, torch_out):
    dx, weights = r
    return Gradients(like(dx, torch_out), {k: like(v, torch_out) for k, v in weights.items()})


class Layer:
    """One DeepSeek-V4 attention layer.

    Layer(config, layer_type, weights, weights_format="f32"):
      layer_type: "sliding_attention" | "compressed_sparse_attention" | "heavily_compressed_attention"
                  (or "swa" | "csa" | "hca");
      weights: mapping name -> array (NumPy, or torch tensors of any float dtype) under the keys of
               the reference DeepseekV4Attention.state_dict() ("q_a_proj.weight", ...,
               "compressor.indexer.scorer.weights_proj.weight") or full checkpoint names;
      weights_format: "f32", "bf16" (projection matrices held as bf16) or "native" (the projection
               matrices kept in the dtypes given: torch/ml_dtypes bfloat16, float16, float8_e4m3fn or
               uint8 E4M3 codes, an FP8 weight with its block scales under "<name>.scale" or
               "<name>_scale_inv" as a checkpoint stores them, or any weight as a pair
               (safetensors dtype, array of its raw elements), e.g. ("BF16", uint16 array));
      numerics: "reference" (the fp32 math of the PyTorch reference) or "deployment" (FP8 caches,
               Hadamard + FP4 indexer, a 4x smaller decode state; docs/numerics.md).
    """

    def __init__(self, config, layer_type, weights, weights_format="f32", numerics="reference"):
        self._init(_core.Layer(config, str(layer_type), _stored_arrays(weights), weights_format, numerics))

    def _init(self, core, owner=None):
        self._core = core
        self._owner = owner if owner is not None else object()

    @classmethod
    def from_model(cls, path, layer_index, weights_format="f32", numerics="reference"):
        """Layer `layer_index` of a checkpoint folder (config.json + safetensors shards, FP8 included).
        weights_format="native" keeps the matrices as stored (FP8: a quarter of the bytes)."""
        layer = cls.__new__(cls)
        layer._init(_core.Layer.from_model(os.fspath(path), int(layer_index), weights_format, numerics))
        return layer

    @property
    def config(self):
        return self._core.config

    @property
    def layer_type(self):
        return self._core.layer_type

    @property
    def weight_bytes(self):
        return self._core.weight_bytes

    @property
    def numerics(self):
        """ "reference" or "deployment"."""
        return self._core.numerics

    def __repr__(self):
        return f"dsv4.Layer({self.layer_type}, d={self.config.hidden_size}, weight_bytes={self.weight_bytes})"

    def _state(self, state, i=None):
        if not isinstance(state, State):
            raise Error(f"state{'' if i is None else f' {i}'}: expected a dsv4.State, got {type(state).__name__}")
        if state._owner is not self._owner:
            raise Error(f"state{'' if i is None else f' {i}'}: made by another dsv4.Layer "
                        f"(a {state.layer_type} state at position {state.position}); use this layer's new_state()")
        return state._core

    def __call__(self, x, state=None, return_intermediates=False, cu_seqlens=None, segment_ids=None):
        """y = layer(x): x [B, S, d] or [S, d] (one-shot, positions 0..S-1), or a chunk [S, d] of one
        sequence through `state` (positions continue from state.position). y has x's kind and shape,
        dtype float32 (no autograd graph: dsv4.torch.Attention has one). With return_intermediates=True:
        (y, dict of NumPy arrays).

        Packed documents (docs/packing.md): x [T, d] (or [1, T, d]) with cu_seqlens [0, c_1, ..., T]
        (document i is rows c_i..c_{i+1}-1; an empty document is allowed) or segment_ids [T]
        (non-decreasing, one id per document): each document is computed as if alone, bit for bit,
        in one call; the intermediates are then a list, one dict per document."""
        _warn_if_grad(x)
        a, torch_in = as_f32(x, "input hidden_states")
        cu = cu_seqlens_of(cu_seqlens, segment_ids)
        if cu is not None:
            if state is not None:
                raise Error("cu_seqlens / segment_ids: packed documents are one-shot; not with a decode state")
            r = self._core.forward(a, return_intermediates, cu)
            return (like(r[0], torch_in), r[1]) if return_intermediates else like(r, torch_in)
        if state is not None:
            r = self._core.forward_state(a, self._state(state), return_intermediates)
            return (like(r[0], torch_in), r[1]) if return_intermediates else like(r, torch_in)
        if not return_intermediates:
            return like(self._core.forward(a), torch_in)
        y, dbg = self._core.forward(a, True)
        return like(y, torch_in), (dbg[0] if a.ndim == 2 else _stack(dbg))

    forward = __call__

    def forward_batch(self, xs, states, return_intermediates=False):
        """A serving step: chunk xs[i] [S_i, d] of sequence i through states[i], all in one call
        (bit-identical to separate calls). Returns the list of outputs (and of intermediates)."""
        xs, states = list(xs), list(states)
        for x in xs:
            _warn_if_grad(x)
        conv = [as_f32(x, f"chunk {i}") for i, x in enumerate(xs)]
        cores = [self._state(s, i) for i, s in enumerate(states)]
        r = self._core.forward_batch([a for a, _ in conv], cores, return_intermediates)
        ys = r[0] if return_intermediates else r
        ys = [like(y, t) for y, (_, t) in zip(ys, conv)]
        return (ys, r[1]) if return_intermediates else ys

    def forward_train(self, x, cu_seqlens=None, segment_ids=None):
        """(y, tape): the one-shot forward y = layer(x) (the same numbers bit for bit) that also
        keeps what backward needs. x [B, S, d] or [S, d], or packed documents x [T, d] with
        cu_seqlens or segment_ids (as layer(x, cu_seqlens=...)). Reference numerics only."""
        a, torch_in = as_f32(x, "input hidden_states")
        y, tape = self._core.forward_train(a, cu_seqlens_of(cu_seqlens, segment_ids))
        return like(y, torch_in), Tape(tape, torch_in)

    def backward(self, tape_or_x, dy, cu_seqlens=None, segment_ids=None):
        """Gradients of sum(y * dy) for the one-shot y = layer(x): dx and every weight's.

        layer.backward(tape, dy) with the tape of this layer's forward_train(x), or
        layer.backward(x, dy) for both passes in one call (packed documents: with cu_seqlens or
        segment_ids; a tape knows its documents). dy has y's shape. Returns a Gradients (dx, weights)
        in the kind of x (NumPy or torch). Deterministic: the same bits for any thread count. Packed:
        dx row for row as each document's own backward, the weights' gradients summed over the
        documents in order."""
        cu = cu_seqlens_of(cu_seqlens, segment_ids)
        if isinstance(tape_or_x, Tape):
            if cu is not None:
                raise Error("backward(tape, dy): the tape knows its documents; give cu_seqlens to forward_train")
            d, _ = as_f32(dy, "dy")
            return _gradients(self._core.backward(tape_or_x._core, d), tape_or_x._torch)
        a, torch_in = as_f32(tape_or_x, "input hidden_states")
        d, _ = as_f32(dy, "dy")
        return _gradients(self._core.backward_input(a, d, cu), torch_in)

    def new_state(self):
        """An empty decode state for one sequence."""
        return State(self._core.new_state(), self._owner)

    def synthetic_state(self, tokens, seed=0):
        """A decode state as after `tokens` tokens, built without a prefill (a 1M-token CSA state
        in about two seconds): seeded random rows with the shapes, formats and scale of a prefilled
        state in this layer's numerics, so that decode steps from it read and select as much as from
        a real one. For measuring decode at long contexts; its outputs are not any input's."""
        seed = _index(seed, "seed")
        if seed < 0:
            raise Error(f"seed: expected an integer >= 0, got {seed}")
        return State(self._core.synthetic_state(_index(tokens, "tokens"), seed), self._owner)

    def load_state(self, path):
        """A state saved by State.save for a layer of this type and config."""
        return State(self._core.load_state(os.fspath(path)), self._owner)

    def attention_map(self, x, dense=False, state=None, cu_seqlens=None, segment_ids=None):
        """Where each query's softmax mass goes, one-shot over x [B, S, d] or [S, d].

        Returns a dict of NumPy arrays ([B, ...] for a 3-D x):
          window, compressed, sink  [H, S]  mass on the sliding-window keys, the compressed entries
                                           (CSA: the selected ones) and the sink; they sum to 1;
          selected                  [S, k] CSA: the entries attended (-1 = empty slot);
          dense (dense=True only)   [H, S, S + T]  probability of each key position, then entry.
        Costs O(H (W + k)) per query beyond the forward; the dense map is O(H S (S + T)).
        With state=: the maps of one chunk x [S, d] through a decode state (which advances as
        layer(x, state=state) would), so a long sequence can be mapped block by block of queries;
        dense then has columns 0..P-1 (P = state.position afterwards), then the entries so far.
        Packed documents (cu_seqlens or segment_ids, as layer(x, cu_seqlens=...)): a list, one map
        per document (positions from 0 in each).
        """
        a, _ = as_f32(x, "input hidden_states")
        cu = cu_seqlens_of(cu_seqlens, segment_ids)
        if cu is not None and state is not None:
            raise Error("cu_seqlens / segment_ids: packed documents are one-shot; not with a decode state")
        if cu is not None:
            raw = self._core.attention_map(a, bool(dense), cu)
        elif state is not None:
            raw = [self._core.attention_map_state(a, self._state(state), bool(dense))]
        else:
            raw = self._core.attention_map(a, bool(dense))
        maps = []
        for m in raw:
            mass = m.pop("mass")
            m.update(window=mass[..., 0], compressed=mass[..., 1], sink=mass[..., 2])
            maps.append(m)
        if cu is not None:
            return maps
        return maps[0] if a.ndim == 2 or state is not None else _stack(maps)
