"""dsv4.torch.Attention: a DeepSeek-V4 attention layer as a torch.nn.Module, with autograd.

Its parameters are nn.Parameters (float32) named exactly as the reference
DeepseekV4Attention's state_dict() keys, so `dict(module.named_parameters())`
can be compared name by name. A one-shot call attn(x) is differentiable:
`loss.backward()` fills the .grad of x and of every parameter, computed by the
C++ backward (Layer.forward_train / Layer.backward); the CSA indexer's
parameters (compressor.indexer.*) get zero gradients, since the top-k selection
is discrete. Calls through a decode state, and deployment numerics, have no
backward: asking for one raises dsv4.Error. Requires torch (Debian's
python3-torch); the rest of dsv4 imports without it.
"""
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ._core import Error
from ._layer import Layer


class _Train(torch.autograd.Function):
    """One-shot forward that keeps the dsv4 Tape; backward is Layer.backward on it."""

    @staticmethod
    def forward(ctx, x, layer, names, *params):
        y, tape = layer.forward_train(x)
        ctx.layer, ctx.tape, ctx.names, ctx.x_dtype = layer, tape, names, x.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        grads = ctx.layer.backward(ctx.tape, dy)
        need = ctx.needs_input_grad
        dx = grads.dx.to(ctx.x_dtype) if need[0] else None
        dparams = [grads.weights[n] if need[3 + i] else None for i, n in enumerate(ctx.names)]
        return (dx, None, None, *dparams)


class _NoBackward(torch.autograd.Function):
    """Runs the layer; its backward refuses clearly instead of returning wrong gradients."""

    @staticmethod
    def forward(ctx, x, state, layer, why, *params):
        ctx.why = why
        return layer(x, state=state)

    @staticmethod
    def backward(ctx, *grads):
        raise Error(ctx.why)


_DECODE = ("dsv4.torch.Attention: a call through a decode state (state=...) has no backward pass; "
           "gradients are one-shot only: call attn(x) on the whole sequence, and decode under torch.no_grad()")
_DEPLOYMENT = ("dsv4.torch.Attention: numerics='deployment' has no backward pass (its FP8/FP4 roundings have "
               "no gradient); train with numerics='reference', or run under torch.no_grad()")


class Attention(nn.Module):
    """Attention(config, layer_type, state_dict, weights_format="f32", numerics="reference").

    forward(hidden_states, state=None): hidden_states [B, S, d] or [S, d] (one-shot), or a chunk
    [S, d] of one sequence through a decode state from new_state(). Any float dtype in, float32 out.
    One-shot calls are differentiable (x and every parameter; the indexer's get zeros); calls
    with a state are not. The dsv4 layer is rebuilt when a parameter changes (load_state_dict,
    optimizer steps, in-place updates); decode states made before keep what they cached with
    the old weights.
    """

    def __init__(self, config, layer_type, state_dict, weights_format="f32", numerics="reference"):
        super().__init__()
        self.config, self.layer_type, self.weights_format = config, layer_type, weights_format
        self.numerics = numerics
        for key, value in state_dict.items():
            if key.startswith(("model.", "layers.")):
                raise Error(f"state_dict key '{key}': dsv4.torch.Attention takes the module's own keys "
                            "('q_a_proj.weight', ...); use dsv4.Layer for full checkpoint names")
            owner, name = self._owner_module(key)
            t = torch.as_tensor(value).detach()
            if not t.is_floating_point():
                raise Error(f"weight '{key}': dtype {t.dtype} is not a floating-point dtype")
            owner.register_parameter(name, nn.Parameter(t.to(torch.float32).clone()))
        self._layer, self._key = None, None
        self._sync()  # checks every name and shape now

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

    def forward(self, hidden_states, state=None):
        layer = self._sync()
        names, params = zip(*self.named_parameters())
        if not (torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in params))):
            return layer(hidden_states, state=state)
        if state is not None:
            return _NoBackward.apply(hidden_states, state, layer, _DECODE, *params)
        if layer.numerics != "reference":
            return _NoBackward.apply(hidden_states, None, layer, _DEPLOYMENT, *params)
        return _Train.apply(hidden_states, layer, names, *params)

    def extra_repr(self):
        return f"{self._layer.layer_type}, hidden_size={self.config.hidden_size}"
