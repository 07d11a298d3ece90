"""dsv4.torch.Attention: a DeepSeek-V4 attention layer as a torch.nn.Module.

Inference only for now: a backward pass through it raises dsv4.Error. Its
parameters are nn.Parameters (float32) named exactly as the reference
DeepseekV4Attention's state_dict() keys, so `dict(module.named_parameters())`
can be compared name by name. Requires torch (Debian's python3-torch); the rest
of dsv4 imports without it.
"""
import torch
from torch import nn

from ._core import Error
from ._layer import Layer

_NO_BACKWARD = ("dsv4.torch.Attention has no backward pass yet (gradients are a later dsv4 release); "
                "run it under torch.no_grad() or detach its output")


class _Forward(torch.autograd.Function):
    """Runs the layer; its backward refuses clearly instead of returning wrong gradients."""

    @staticmethod
    def forward(ctx, x, state, layer, *params):
        return layer(x, state=state)

    @staticmethod
    def backward(ctx, *grads):
        raise Error(_NO_BACKWARD)


class Attention(nn.Module):
    """Attention(config, layer_type, state_dict, weights_format="f32", numerics="reference").

    forward(hidden_states, state=None): hidden_states [B, S, d] or [S, d] (one-shot), or a chunk
    [S, d] of one sequence through a decode state from new_state(). Any float dtype in, float32 out.
    The dsv4 layer is rebuilt when a parameter changes (load_state_dict, in-place updates); decode
    states made before keep what they cached with the old weights.
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
        params = tuple(self.parameters())
        if torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in params)):
            return _Forward.apply(hidden_states, state, layer, *params)
        return layer(hidden_states, state=state)

    def extra_repr(self):
        return f"{self._layer.layer_type}, hidden_size={self.config.hidden_size}"
