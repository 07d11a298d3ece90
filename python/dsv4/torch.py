"""dsv4.torch.Attention: a DeepSeek-V4 attention layer as a torch.nn.Module, with autograd.

Its parameters are nn.Parameters (float32) named exactly as the reference
DeepseekV4Attention's state_dict() keys, so `dict(module.named_parameters())`
can be compared name by name. A one-shot call attn(x) is differentiable:
`loss.backward()` fills the .grad of x and of every parameter, computed by the
C++ backward (Layer.forward_train / Layer.backward); the CSA indexer's
parameters (compressor.indexer.*) get zero gradients, since the top-k selection
is discrete. Calls through a decode state, and deployment numerics, have no
backward: asking for one raises dsv4.Error. Requires torch (Debian's
python3-torch, or `pip install dsv4[torch]`); the rest of dsv4 imports without
it, and `dsv4.torch` is imported on first use.
"""
import os

try:
    import torch
except ImportError as e:
    raise ImportError("dsv4.torch needs PyTorch (Debian: python3-torch; pip: dsv4[torch]); "
                      "the rest of dsv4 works without it") from e
from torch import nn
from torch.autograd.function import once_differentiable

from . import _core
from ._core import Error
from ._layer import Layer, _stored_arrays, cu_seqlens_of

# Parameter dtypes the module keeps (dsv4 widens them exactly to float32 and computes in float32).
_PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_WIDE = _PARAM_DTYPES + (torch.float64,)  # taken as values; FP8 codes and others go through the core


class _Train(torch.autograd.Function):
    """One-shot forward that keeps the dsv4 Tape; backward is Layer.backward on it."""

    @staticmethod
    def forward(ctx, x, layer, names, cu, *params):
        y, tape = layer.forward_train(x, cu_seqlens=cu)
        ctx.layer, ctx.tape, ctx.names, ctx.x_dtype = layer, tape, names, x.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        grads = ctx.layer.backward(ctx.tape, dy)
        need = ctx.needs_input_grad
        dx = grads.dx.to(ctx.x_dtype) if need[0] else None
        dparams = [grads.weights[n] if need[4 + i] else None for i, n in enumerate(ctx.names)]
        return (dx, None, None, None, *dparams)


class _NoBackward(torch.autograd.Function):
    """Runs the layer; its backward refuses clearly instead of returning wrong gradients."""

    @staticmethod
    def forward(ctx, x, state, layer, why, cu, *params):
        ctx.why = why
        return layer(x, state=state, cu_seqlens=cu)

    @staticmethod
    def backward(ctx, *grads):
        raise Error(ctx.why)


_DECODE = ("dsv4.torch.Attention: a call through a decode state (state=...) has no backward pass; "
           "gradients are one-shot only: call attn(x) on the whole sequence, and decode under torch.no_grad()")
_DEPLOYMENT = ("dsv4.torch.Attention: numerics='deployment' has no backward pass (its FP8/FP4 roundings have "
               "no gradient); train with numerics='reference', or run under torch.no_grad()")


class Attention(nn.Module):
    """Attention(config, layer_type, state_dict, weights_format="f32", numerics="reference").

    state_dict: the reference DeepseekV4Attention.state_dict() keys ("q_a_proj.weight", ...) or
    full checkpoint names of either scheme ("model.layers.3.self_attn.q_a_proj.weight",
    "layers.3.attn.wq_a.weight"; FP8 weights with their scales), as dsv4.Layer takes them; the
    parameters are float32 nn.Parameters under the reference keys. Attention.from_model(dir, i)
    reads layer i of a checkpoint folder.

    forward(hidden_states, state=None, cu_seqlens=None, segment_ids=None): hidden_states [B, S, d]
    or [S, d] (one-shot), or a chunk [S, d] of one sequence through a decode state from new_state(),
    or packed documents [T, d] with cu_seqlens or segment_ids (each document as if alone, positions
    from 0; differentiable like a one-shot call; docs/packing.md). Any float dtype in; the output
    has the input's dtype (dsv4 computes in float32). One-shot calls are differentiable (x and
    every parameter; the indexer's get zeros); calls with a state are not. The dsv4 layer is rebuilt
    when a parameter changes (load_state_dict, optimizer steps, in-place updates); decode states
    made before keep what they cached with the old weights. .to(dtype) / .bfloat16() / .half()
    keep the parameters in that dtype (widened exactly for the computation); float64 and other
    devices than the CPU are refused with a dsv4.Error.
    """

    def __init__(self, config, layer_type, state_dict, weights_format="f32", numerics="reference"):
        super().__init__()
        self.config, self.layer_type, self.weights_format = config, layer_type, weights_format
        self.numerics = numerics
        for key, value in _module_weights(config, layer_type, state_dict).items():
            owner, name = self._owner_module(key)
            owner.register_parameter(name, nn.Parameter(value))
        self._layer, self._key = None, None
        self._sync()  # checks every name and shape now

    @classmethod
    def from_model(cls, path, layer_index, weights_format="f32", numerics="reference"):
        """Layer `layer_index` of a checkpoint folder (config.json + safetensors shards, FP8 included)
        as a module: float32 parameters under the reference keys (FP8 weights times their scales)."""
        config, layer_type, weights = _core.model_weights(os.fspath(path), int(layer_index))
        return cls(config, layer_type, {k: torch.from_numpy(v) for k, v in weights.items()}, weights_format, numerics)

    def _apply(self, fn, *args, **kwargs):
        """.to() / .double() / .cuda() ...: float32, bfloat16 and float16 CPU parameters only."""
        probe = fn(torch.zeros((), dtype=torch.float32))
        if probe.device.type != "cpu":
            raise Error(f"dsv4.torch.Attention: cannot move to {probe.device}; dsv4 computes on the CPU")
        if probe.dtype not in _PARAM_DTYPES:
            raise Error(f"dsv4.torch.Attention: parameters in {probe.dtype} are not supported: dsv4 computes in "
                        "float32 (parameters may be float32, bfloat16 or float16; inputs of any float dtype "
                        "work and the output has the input's dtype)")
        return super()._apply(fn, *args, **kwargs)

    def _owner_module(self, key):
        *path, name = key.split(".")
        m = self
        for p in path:
            if not hasattr(m, p):
                m.add_module(p, nn.Module())
            m = getattr(m, p)
        return m, name

    def _sync(self):
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if key == self._key:
            return self._layer
        weights = {n: p.detach() for n, p in self.named_parameters()}
        fresh = Layer(self.config, self.layer_type, weights, self.weights_format, self.numerics)
        if self._layer is not None:
            fresh._owner = self._layer._owner  # states made before stay usable
        self._layer, self._key = fresh, key
        return fresh

    @property
    def layer(self):
        """The dsv4.Layer holding the current parameters."""
        return self._sync()

    def new_state(self):
        return self._sync().new_state()

    def load_state(self, path):
        return self._sync().load_state(path)

    def synthetic_state(self, tokens, seed=0):
        return self._sync().synthetic_state(tokens, seed)

    def forward(self, hidden_states, state=None, cu_seqlens=None, segment_ids=None):
        layer = self._sync()
        names, params = zip(*self.named_parameters())
        cu = cu_seqlens_of(cu_seqlens, segment_ids)
        if cu is not None and state is not None:
            raise Error("cu_seqlens / segment_ids: packed documents are one-shot; not with a decode state")
        if not (torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in params))):
            y = layer(hidden_states, state=state, cu_seqlens=cu)
        elif state is not None:
            y = _NoBackward.apply(hidden_states, state, layer, _DECODE, None, *params)
        elif layer.numerics != "reference":
            y = _NoBackward.apply(hidden_states, None, layer, _DEPLOYMENT, cu, *params)
        else:
            y = _Train.apply(hidden_states, layer, names, cu, *params)
        dtype = getattr(hidden_states, "dtype", None)  # NumPy input: float32 NumPy output, as dsv4.Layer
        return y.to(dtype) if isinstance(dtype, torch.dtype) and dtype != y.dtype else y

    def extra_repr(self):
        return f"{self._layer.layer_type}, hidden_size={self.config.hidden_size}"


def _module_weights(config, layer_type, state_dict):
    """{reference key: tensor} for the parameters: float tensors under the reference keys are taken as
    float32 copies (in their order); anything else (full checkpoint names, FP8 codes and scales)
    goes through the core, which names every missing, unexpected or mis-shaped tensor."""
    if not hasattr(state_dict, "items"):
        raise Error("state_dict: expected a mapping name -> tensor (e.g. a state_dict())")
    items = [(str(k), torch.as_tensor(v) if not isinstance(v, tuple) else None) for k, v in state_dict.items()]
    if all(t is not None and t.dtype in _WIDE and not k.startswith(("model.", "layers.")) for k, t in items):
        return {k: t.detach().to(torch.float32).clone() for k, t in items}
    weights = _core.module_weights(config, str(layer_type), _stored_arrays(state_dict))
    return {k: torch.from_numpy(v) for k, v in weights.items()}
