"""NumPy / torch arrays to the float32 C-contiguous arrays the core reads, and back.

Conversion only: no math. A float32 C-contiguous input is passed through as is
(the core reads it in place); other float dtypes are widened to float32.
"""
import sys

import numpy as np

from . import _core
from ._core import Error


def _is_torch(x):
    t = sys.modules.get("torch")  # never import torch just to look
    return t is not None and isinstance(x, t.Tensor)


def as_f32(x, what):
    """(float32 C-contiguous ndarray, came_from_torch) for a NumPy array or a CPU torch tensor."""
    if _is_torch(x):
        import torch
        if x.device.type != "cpu":
            raise Error(f"{what}: a torch tensor on {x.device}; dsv4 computes on the CPU (use .cpu())")
        if not x.is_floating_point():
            raise Error(f"{what}: dtype {x.dtype} is not a floating-point dtype")
        x = x.detach()
        if x.dtype != torch.float32:
            x = x.float()
        return x.contiguous().numpy(), True
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise Error(f"{what}: dtype {a.dtype} is not a floating-point dtype")
    return np.ascontiguousarray(a, dtype=np.float32), False


# Element types kept as they are for weights_format="native": dtype name (torch or NumPy,
# ml_dtypes included) -> (safetensors dtype, NumPy dtype of the same size to pass the bytes as).
_STORED = {
    "float32": ("F32", np.float32), "float16": ("F16", np.float16), "bfloat16": ("BF16", np.uint16),
    "float8_e4m3fn": ("F8_E4M3", np.uint8), "float8_e8m0fnu": ("F8_E8M0", np.uint8), "uint8": ("U8", np.uint8),
}


def as_stored(x, what):
    """(safetensors dtype, C-contiguous ndarray of its bytes) for a weight kept in its stored dtype:
    float32, float16, bfloat16, float8_e4m3fn, float8_e8m0fnu, or uint8 (E4M3 codes of an FP8 weight
    or UE8M0 bytes of its scales); any other float dtype is widened to float32. A pair
    (dtype name, array) gives the safetensors dtype explicitly, e.g. ("BF16", uint16 array)."""
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str):
        return x[0], np.ascontiguousarray(x[1])
    if _is_torch(x):
        import torch
        if x.device.type != "cpu":
            raise Error(f"{what}: a torch tensor on {x.device}; dsv4 computes on the CPU (use .cpu())")
        x = x.detach().contiguous()
        kind = _STORED.get(str(x.dtype).replace("torch.", ""))
        if kind is None:
            return "F32", as_f32(x, what)[0]
        if kind[1] is np.uint16:
            return kind[0], x.view(torch.int16).numpy().view(np.uint16)
        if kind[1] is np.uint8 and x.dtype != torch.uint8:
            return kind[0], x.view(torch.uint8).numpy()
        return kind[0], x.numpy()
    a = np.asarray(x)
    kind = _STORED.get(a.dtype.name)
    if kind is None:
        return "F32", as_f32(a, what)[0]
    return kind[0], np.ascontiguousarray(a).view(kind[1])


def like(y, torch_out):
    """y (a NumPy array from the core) as the caller's kind of array."""
    if not torch_out:
        return y
    import torch
    return torch.from_numpy(y)


def load_safetensors(path):
    """dict name -> NumPy array of every tensor in a safetensors file (floats as float32, I64 as int64)."""
    return _core.load_safetensors(str(path))


def save_safetensors(path, tensors, metadata=None):
    """Writes a dict of arrays (NumPy or torch; floats as F32, integers as I64) to a safetensors file."""
    out = {}
    for name, v in tensors.items():
        if _is_torch(v):
            v = v.detach().cpu()
            v = v.numpy() if not v.is_floating_point() else v.float().numpy()
        a = np.asarray(v)
        if a.dtype.kind in "iu":
            out[name] = np.ascontiguousarray(a, dtype=np.int64)
        elif a.dtype.kind == "f":
            out[name] = np.ascontiguousarray(a, dtype=np.float32)
        else:
            raise Error(f"save_safetensors: '{name}' has dtype {a.dtype}")
    _core.save_safetensors(str(path), out, dict(metadata or {}))
