#!/usr/bin/env python3
"""PyTorch eager baseline for ONE DeepSeek-V4 attention layer (SWA, CSA or HCA).

This is the yardstick `dsv4 bench` is compared against. It is written the way
the public reference (Hugging Face transformers, models/deepseek_v4/
modeling_deepseek_v4.py) computes the layer: nn.Linear projections, dense
[S, S+T] additive masks, eager softmax with a sink column. It does not try to
be fast; it tries to be the obvious PyTorch program. The maths is
docs/attention.md; `--check` pins it to the conformance files.

Two modes:

  --check FILE.safetensors [FILE ...]
      Run the layer on each stateless conformance file (weights, config and
      input from the file) and compare with `chunk0.output`
      (|ours - ref| <= 1e-5 + 1e-5 |ref|). Exit 1 if any file fails.

  --preset v4-flash|v4-pro --layer-type swa|csa|hca --seq S --threads T
  --repeats R [--json]
      Seeded random weights at the preset's dims, random input [1, S, d];
      time R forwards, print the median, tokens/s and peak RSS. With --json
      the last stdout line is one JSON object. Exit 3 when the run would not
      fit (--max-gb) or runs out of memory.

  --backward (with the options above)
      Training: autograd forward, then loss = (y * dy).sum() backward (dy
      seeded; x and every parameter require grad), each timed; the medians,
      backward/forward and peak RSS, as `dsv4 bench --backward` reports them.
      Autograd keeps the dense tensors for the backward: refused (exit 3) when
      3x the dense estimate exceeds --max-gb.

Needs only Debian's python3-torch and python3-numpy (run with /usr/bin/python3).
"""

import argparse
import json
import math
import os
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------
# Hyper-parameters. Same keys as the conformance files' `config` metadata.

PRESETS = {
    "v4-flash": dict(hidden_size=4096, num_attention_heads=64, head_dim=512,
                     qk_rope_head_dim=64, q_lora_rank=1024, o_groups=8,
                     o_lora_rank=1024, index_topk=512),
    "v4-pro": dict(hidden_size=7168, num_attention_heads=128, head_dim=512,
                   qk_rope_head_dim=64, q_lora_rank=1536, o_groups=16,
                   o_lora_rank=1024, index_topk=1024),
}
COMMON = dict(sliding_window=128, compress_rate_csa=4, compress_rate_hca=128,
              index_n_heads=64, index_head_dim=128, rope_theta=10000.0,
              compress_rope_theta=160000.0, rms_norm_eps=1e-6,
              rope_scaling=dict(type="yarn", factor=16.0,
                                original_max_position_embeddings=65536,
                                beta_fast=32, beta_slow=1))

LAYER_TYPES = {  # short name -> Hugging Face layer_types name
    "swa": "sliding_attention",
    "csa": "compressed_sparse_attention",
    "hca": "heavily_compressed_attention",
}


def preset_config(name, layer_type):
    cfg = dict(COMMON)
    cfg.update(PRESETS[name])
    cfg["layer_type"] = LAYER_TYPES[layer_type]
    return cfg


# ----------------------------------------------------------------------------
# A tiny safetensors reader (F32 / I64 is all the conformance files hold).

ST_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4"}  # little-endian


def read_safetensors(path):
    """-> ({name: torch tensor}, {metadata key: string})"""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])  # header length
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = memoryview(blob)[8 + n:]
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]  # relative to the start of the data
        arr = np.frombuffer(data[begin:end], dtype=ST_DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")))  # native, writable copy
    return tensors, metadata


# ----------------------------------------------------------------------------
# RoPE: interleaved pairs (x[2i], x[2i+1]) of the trailing R channels.

def rope_inv_freq(cfg, layer_type):
    """Frequencies f_i, i < R/2: plain with rope_theta for sliding layers,
    YaRN with compress_rope_theta for CSA/HCA (as in HF's _compute_yarn_parameters)."""
    R = cfg["qk_rope_head_dim"]
    if layer_type == "swa":
        return 1.0 / (cfg["rope_theta"] ** (torch.arange(0, R, 2).float() / R))
    base = cfg["compress_rope_theta"]
    ys = cfg["rope_scaling"]
    factor, L0 = ys["factor"], ys["original_max_position_embeddings"]

    def corr(n_rot):  # dimension whose wavelength makes n_rot turns over L0 tokens
        return (R * math.log(L0 / (n_rot * 2 * math.pi))) / (2 * math.log(base))

    lo = max(math.floor(corr(ys["beta_fast"])), 0)
    hi = min(math.ceil(corr(ys["beta_slow"])), R - 1)
    if lo == hi:
        hi += 0.001
    ramp = ((torch.arange(R // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, R, 2).float() / R)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    return interpolation * ramp + extrapolation * (1 - ramp)


def rope_cos_sin(inv_freq, positions):
    """float32 angles by spec, also when the module runs in float64 (.double())."""
    angles = positions.float()[:, None] * inv_freq.float()[None, :]  # [P, R/2]
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x [..., P, D]; cos, sin [P, R/2]. Rotates the trailing R channels by the
    angle; pass -sin for the inverse rotation."""
    R = cos.shape[-1] * 2
    x_pass, x_rot = x[..., :-R], x[..., -R:]
    x0, x1 = x_rot.unflatten(-1, (R // 2, 2)).unbind(-1)
    y0 = x0 * cos - x1 * sin
    y1 = x1 * cos + x0 * sin
    return torch.cat([x_pass, torch.stack([y0, y1], dim=-1).flatten(-2)], dim=-1)


# ----------------------------------------------------------------------------
# Modules. Parameter names are the Hugging Face state_dict names, so a
# conformance file loads with load_state_dict(strict=True).

def at_least_f32(x):
    """x in float32, or as it is when wider (float64: the gradient checks' ground truth)."""
    return x if x.dtype == torch.float64 else x.float()


def rms_norm(x, eps):
    x32 = at_least_f32(x)
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * rms_norm(x, self.eps)


class Compressor(nn.Module):
    """Pools each complete window of `rate` tokens into one entry of width `dim`.
    overlap=False (HCA): softmax over the window's tokens, per channel.
    overlap=True (CSA and the indexer): 2*dim projected channels; entry w pools
    series A (first dim channels) of window w-1 and series B (last dim channels)
    of window w, i.e. 2*rate slots; window 0 has no series-A slots (gate -inf)."""

    def __init__(self, hidden, dim, rate, overlap, eps):
        super().__init__()
        width = 2 * dim if overlap else dim
        self.dim, self.rate, self.overlap = dim, rate, overlap
        self.kv_proj = nn.Linear(hidden, width, bias=False)
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.position_bias = nn.Parameter(torch.zeros(rate, width))
        self.kv_norm = RMSNorm(dim, eps)

    def compress(self, x, inv_freq):
        B, S, _ = x.shape
        r, D = self.rate, self.dim
        T = S // r  # only complete windows produce entries
        x = x[:, :T * r]
        width = self.kv_proj.out_features
        kv = self.kv_proj(x).view(B, T, r, width)
        gate = self.gate_proj(x).view(B, T, r, width) + self.position_bias
        if self.overlap:
            # series A shifted one window right: slot of window w = window w-1;
            # window 0 gets an absent window (gate -inf -> softmax weight 0)
            kv_prev = F.pad(kv[..., :D], (0, 0, 0, 0, 1, 0), value=0.0)[:, :T]
            gate_prev = F.pad(gate[..., :D], (0, 0, 0, 0, 1, 0), value=float("-inf"))[:, :T]
            kv = torch.cat([kv_prev, kv[..., D:]], dim=2)  # [B, T, 2r, D]
            gate = torch.cat([gate_prev, gate[..., D:]], dim=2)
        weights = torch.softmax(at_least_f32(gate), dim=2)  # over the slots, per channel
        entries = (weights * kv).sum(dim=2)  # [B, T, D]
        entries = self.kv_norm(entries)
        cos, sin = rope_cos_sin(inv_freq, torch.arange(T) * r)  # entry w at position w*r
        return apply_rope(entries, cos, sin)


class Scorer(nn.Module):
    def __init__(self, hidden, n_heads):
        super().__init__()
        self.weights_proj = nn.Linear(hidden, n_heads, bias=False)


class Indexer(Compressor):
    """Lightning indexer: its own overlapping compressor at index_head_dim, plus
    index queries from c_q and per-head weights from x."""

    def __init__(self, cfg):
        super().__init__(cfg["hidden_size"], cfg["index_head_dim"], cfg["compress_rate_csa"],
                         True, cfg["rms_norm_eps"])
        self.n_heads, self.topk = cfg["index_n_heads"], cfg["index_topk"]
        self.q_b_proj = nn.Linear(cfg["q_lora_rank"], self.n_heads * self.dim, bias=False)
        self.scorer = Scorer(cfg["hidden_size"], self.n_heads)

    def forward(self, x, c_q, positions, inv_freq, dbg):
        B, S, _ = x.shape
        keys = self.compress(x, inv_freq)  # [B, T, D_I]
        T = keys.shape[1]
        q = self.q_b_proj(c_q).view(B, S, self.n_heads, self.dim)
        cos, sin = rope_cos_sin(inv_freq, positions)
        q = apply_rope(q.transpose(1, 2), cos, sin).transpose(1, 2)  # [B, S, H_I, D_I]
        head_w = self.scorer.weights_proj(x) * self.n_heads ** -0.5  # [B, S, H_I]
        # I[t, w] = sum_h a[t, h] * relu(q_I[t, h] . K_I[w]) / sqrt(D_I)
        dots = torch.einsum("bshd,btd->bsht", q, keys)  # [B, S, H_I, T]
        scores = (F.relu(dots) * self.dim ** -0.5 * head_w[..., None]).sum(dim=2)  # [B, S, T]
        # entry w is eligible for query t once its window is complete
        eligible = torch.arange(T)[None, :] < torch.div(positions + 1, self.rate,
                                                       rounding_mode="floor")[:, None]
        masked = scores.masked_fill(~eligible, float("-inf"))
        values, topk = masked.topk(min(self.topk, T), dim=-1)
        topk = topk.masked_fill(values == float("-inf"), -1)  # empty slot
        dbg.update(indexer_kv=keys, indexer_q=q, index_scores=scores, topk_indices=topk)
        return topk


class DeepseekV4Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.layer_type = {v: k for k, v in LAYER_TYPES.items()}[cfg["layer_type"]]
        d, H, D = cfg["hidden_size"], cfg["num_attention_heads"], cfg["head_dim"]
        g, d_g, eps = cfg["o_groups"], cfg["o_lora_rank"], cfg["rms_norm_eps"]
        self.H, self.D, self.g, self.d_g, self.eps = H, D, g, d_g, eps
        self.q_a_proj = nn.Linear(d, cfg["q_lora_rank"], bias=False)
        self.q_a_norm = RMSNorm(cfg["q_lora_rank"], eps)
        self.q_b_proj = nn.Linear(cfg["q_lora_rank"], H * D, bias=False)
        self.kv_proj = nn.Linear(d, D, bias=False)
        self.kv_norm = RMSNorm(D, eps)
        self.o_a_proj = nn.Linear(H * D // g, g * d_g, bias=False)  # g blocks [d_g, H*D/g]
        self.o_b_proj = nn.Linear(g * d_g, d, bias=False)
        self.sinks = nn.Parameter(torch.zeros(H))
        if self.layer_type == "csa":
            self.compressor = Compressor(d, D, cfg["compress_rate_csa"], True, eps)
            self.compressor.indexer = Indexer(cfg)
        elif self.layer_type == "hca":
            self.compressor = Compressor(d, D, cfg["compress_rate_hca"], False, eps)
        else:
            self.compressor = None
        self.register_buffer("inv_freq", rope_inv_freq(cfg, self.layer_type), persistent=False)

    def forward(self, x, positions, dbg=None):
        """x [B, S, d] at absolute positions `positions` [S] (a fresh sequence:
        the compressors see windows from position 0). Returns [B, S, d]."""
        dbg = {} if dbg is None else dbg
        B, S, _ = x.shape
        H, D = self.H, self.D
        cos, sin = rope_cos_sin(self.inv_freq, positions)  # [S, R/2]

        # 1. query: q_a -> RMSNorm_w -> q_b -> per-head RMSNorm -> RoPE
        c_q = self.q_a_norm(self.q_a_proj(x))
        q = self.q_b_proj(c_q).view(B, S, H, D).transpose(1, 2)  # [B, H, S, D]
        q = apply_rope(rms_norm(q, self.eps), cos, sin)

        # 2. key = value: one head shared by all query heads
        kv = apply_rope(self.kv_norm(self.kv_proj(x)), cos, sin).unsqueeze(1)  # [B, 1, S, D]
        dbg.update(q=q, kv=kv)

        # 3. additive mask over the S window keys: 0 visible, float32 min hidden
        neg = torch.finfo(torch.float32).min
        t, kp = positions[:, None], positions[None, :]
        window = (kp <= t) & (kp > t - self.cfg["sliding_window"])
        mask = torch.zeros(S, S).masked_fill(~window, neg).expand(B, 1, S, S)
        keys = kv

        # 4. compressed entries, appended to the key axis with their own mask
        if self.compressor is not None:
            entries = self.compressor.compress(x, self.inv_freq)  # [B, T, D]
            T = entries.shape[1]
            if self.layer_type == "csa":
                topk = self.compressor.indexer(x, c_q, positions, self.inv_freq, dbg)
                # visible = selected by the indexer; -1 slots go to a spare column
                cols = topk.masked_fill(topk < 0, T)
                comp_mask = torch.full((B, S, T + 1), neg).scatter_(-1, cols, 0.0)[..., :T]
                comp_mask = comp_mask.unsqueeze(1)
            else:
                r = self.compressor.rate
                complete = torch.arange(T)[None, :] < torch.div(t + 1, r, rounding_mode="floor")
                comp_mask = torch.zeros(S, T).masked_fill(~complete, neg).expand(B, 1, S, T)
            dbg.update(compressed_kv=entries.unsqueeze(1))
            keys = torch.cat([keys, entries.unsqueeze(1)], dim=2)  # [B, 1, S+T, D]
            mask = torch.cat([mask, comp_mask], dim=-1)  # [B, 1, S, S+T]

        # 5. eager attention with a per-head sink logit
        keys = keys.expand(B, H, keys.shape[2], D)  # K = V, broadcast to all heads
        logits = torch.matmul(q, keys.transpose(2, 3)) * D ** -0.5 + mask
        sinks = self.sinks.view(1, H, 1, 1).expand(B, H, S, 1)
        logits = torch.cat([logits, sinks], dim=-1)
        logits = logits - logits.max(dim=-1, keepdim=True).values
        probs = torch.softmax(logits, dim=-1)[..., :-1]  # the sink takes mass, gives no value
        out = torch.matmul(probs, keys)  # [B, H, S, D]
        del logits, probs

        # 6. undo the rotation the values carried
        out = apply_rope(out, cos, -sin)

        # 7. grouped output projection: group i of the H*D outputs through block i of o_a
        g, d_g = self.g, self.d_g
        out = out.transpose(1, 2).reshape(B * S, g, H * D // g).transpose(0, 1)  # [g, B*S, HD/g]
        w_a = self.o_a_proj.weight.view(g, d_g, H * D // g)
        out = torch.bmm(out, w_a.transpose(1, 2))  # [g, B*S, d_g]
        out = out.transpose(0, 1).reshape(B, S, g * d_g)
        return self.o_b_proj(out)


# ----------------------------------------------------------------------------
# --check: compare against the stateless conformance files.

def close(ours, ref):
    """max |ours - ref| and whether every element is within 1e-5 + 1e-5 |ref|."""
    if ref.numel() == 0:
        return 0.0, ours.numel() == 0
    if ours.shape != ref.shape:
        return float("inf"), False
    err = (ours - ref).abs()
    return err.max().item(), bool((err <= 1e-5 + 1e-5 * ref.abs()).all())


def check_file(path):
    tensors, meta = read_safetensors(path)
    name = os.path.basename(path)
    if meta.get("mode") != "stateless":
        print(f"SKIP {name}: mode {meta.get('mode')!r} (the baseline is stateless only)")
        return None
    cfg = json.loads(meta["config"])
    layer = DeepseekV4Attention(cfg)
    weights = {k: v for k, v in tensors.items() if not k.startswith(("chunk", "rope."))}
    layer.load_state_dict(weights, strict=True)
    # the debug frequencies in the file should be ours
    freq_key = "rope.main_inv_freq" if layer.layer_type == "swa" else "rope.compress_inv_freq"
    freq_err = (layer.inv_freq - tensors[freq_key]).abs().max().item()

    x = tensors["chunk0.hidden_states"]
    positions = tensors["chunk0.position_ids"][0]
    assert torch.equal(positions, torch.arange(x.shape[1])), "stateless files start at 0"
    dbg = {}
    with torch.no_grad():
        out = layer(x, positions, dbg)

    err, ok = close(out, tensors["chunk0.output"])
    notes = [f"inv_freq {freq_err:.1e}"]
    for key in ("q", "kv", "compressed_kv", "indexer_q", "indexer_kv", "index_scores"):
        if key in dbg and f"chunk0.{key}" in tensors:
            e, _ = close(dbg[key], tensors[f"chunk0.{key}"])
            notes.append(f"{key} {e:.1e}")
    if "topk_indices" in dbg:
        ours, ref = dbg["topk_indices"], tensors["chunk0.topk_indices"]
        same = ours.shape == ref.shape and all(
            set(a[a >= 0].tolist()) == set(b[b >= 0].tolist())
            for a, b in zip(ours.flatten(0, -2), ref.flatten(0, -2)))  # per query row
        notes.append("topk sets " + ("equal" if same else "DIFFER"))
        ok = ok and same
    print(f"{'PASS' if ok else 'FAIL'} {name}: output max abs err {err:.2e}  ({', '.join(notes)})")
    return ok


# ----------------------------------------------------------------------------
# Bench mode.

def dense_bytes(cfg, layer_type, B, S):
    """Upper estimate of the dense tensors' peak: the [B, 1, S, S+T] mask plus three
    [B, H, S, S+T+1] logits/probabilities (eager has up to that many alive at once),
    or the indexer's [B, S, H_I, T] products if those are larger. V4-Flash at
    S=4096 (2 threads): 13.0 GB (SWA) / 16.2 GB (CSA) estimated; the measured peak
    RSS, weights included, is 10.6 / 13.1 GB."""
    r = {"swa": 0, "csa": cfg["compress_rate_csa"], "hca": cfg["compress_rate_hca"]}[layer_type]
    T = S // r if r else 0
    mask = B * S * (S + T) * 4
    scores = 3 * B * cfg["num_attention_heads"] * S * (S + T + 1) * 4
    indexer = 3 * B * S * cfg["index_n_heads"] * T * 4 if layer_type == "csa" else 0
    return mask + max(scores, indexer)


def init_random(layer, seed):
    """Seeded weights: linear layers N(0, 1/fan_in), norms ~1, small biases and sinks."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if p.dim() == 2 and name.endswith("weight"):
                p.normal_(0.0, p.shape[1] ** -0.5, generator=gen)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:  # position_bias, sinks
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux


def bench(args):
    cfg = preset_config(args.preset, args.layer_type)
    result = dict(impl="torch-eager", preset=args.preset, layer_type=args.layer_type,
                  seq=args.seq, threads=args.threads)

    def fail(msg):
        result["error"] = msg
        print(f"error: {msg}", file=sys.stderr)
        if args.json:
            print(json.dumps(result))
        return 3

    need = dense_bytes(cfg, args.layer_type, 1, args.seq) * (BACKWARD_FACTOR if args.backward else 1)
    if need > args.max_gb * 1e9:
        return fail(f"would need {need / 1e9:.1f} GB for the dense mask and scores"
                    f"{' (x3: autograd keeps them for the backward)' if args.backward else ''} "
                    f"(limit --max-gb {args.max_gb:g})")
    if args.backward:
        return bench_backward(args, cfg, result, fail)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        layer = DeepseekV4Attention(cfg).eval()
        init_random(layer, args.seed)
        x = torch.randn(1, args.seq, cfg["hidden_size"], generator=torch.Generator().manual_seed(args.seed + 1))
        positions = torch.arange(args.seq)
        warmup = args.warmup if args.warmup is not None else (1 if args.seq <= 1024 else 0)
        times, cpu_times = [], []  # wall; CPU of all threads (shows contention)
        with torch.no_grad():
            for i in range(warmup + args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                out = layer(x, positions)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                del out
                if i >= warmup:
                    times.append(dt)
                    cpu_times.append(dc)
                print(f"  forward {i + 1}/{warmup + args.repeats}: {dt:.3f} s (cpu {dc:.1f} s)"
                      f"{' (warm-up)' if i < warmup else ''}", file=sys.stderr)
    except (RuntimeError, MemoryError) as e:
        return fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'out of memory'}")

    seconds = float(np.median(times))
    result.update(seconds=seconds, tokens_per_s=args.seq / seconds, peak_rss_bytes=peak_rss_bytes(),
                  cpu_seconds=float(np.median(cpu_times)))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"torch-eager {args.preset} {args.layer_type} S={args.seq} threads={args.threads}: "
              f"median {seconds:.3f} s over {len(times)}, {result['tokens_per_s']:.1f} tokens/s, "
              f"peak RSS {result['peak_rss_bytes'] / 1e9:.2f} GB, CPU {result['cpu_seconds']:.1f} s")
    return 0


BACKWARD_FACTOR = 3  # autograd keeps the masks, logits and probabilities alive until the backward


def bench_backward(args, cfg, result, fail):
    """Autograd forward + backward of loss = (y * dy).sum(), timed apart; medians over --repeats."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    result["mode"] = "backward"
    try:
        layer = DeepseekV4Attention(cfg)
        init_random(layer, args.seed)
        gen = torch.Generator().manual_seed(args.seed + 1)
        x = torch.randn(1, args.seq, cfg["hidden_size"], generator=gen).requires_grad_()
        dy = torch.randn(1, args.seq, cfg["hidden_size"], generator=gen)
        positions = torch.arange(args.seq)
        warmup = args.warmup if args.warmup is not None else (1 if args.seq <= 1024 else 0)
        fwd, bwd = [], []
        for i in range(warmup + args.repeats):
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            t0 = time.perf_counter()
            loss = (layer(x, positions) * dy).sum()
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            del loss
            if i >= warmup:
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
            print(f"  run {i + 1}/{warmup + args.repeats}: forward {t1 - t0:.3f} s, backward {t2 - t1:.3f} s"
                  f"{' (warm-up)' if i < warmup else ''}", file=sys.stderr)
    except (RuntimeError, MemoryError) as e:
        return fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'out of memory'}")

    f, b = float(np.median(fwd)), float(np.median(bwd))
    result.update(forward_seconds=f, backward_seconds=b, backward_over_forward=b / f, seconds=f + b,
                  tokens_per_s=args.seq / (f + b), peak_rss_bytes=peak_rss_bytes())
    if args.json:
        print(json.dumps(result))
    else:
        print(f"torch-eager --backward {args.preset} {args.layer_type} S={args.seq} threads={args.threads}: "
              f"median forward {f:.3f} s, backward {b:.3f} s over {len(fwd)}: backward = {b / f:.2f}x forward, "
              f"{result['tokens_per_s']:.1f} tokens/s (both), peak RSS {result['peak_rss_bytes'] / 1e9:.2f} GB")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", nargs="+", metavar="FILE", help="stateless conformance file(s)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="v4-flash")
    p.add_argument("--layer-type", choices=sorted(LAYER_TYPES), default="csa")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed forwards first (default: 1 if seq <= 1024, else 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-gb", type=float, default=20.0,
                   help="refuse when the dense mask/scores (x3 with --backward) would exceed this (default 20)")
    p.add_argument("--backward", action="store_true",
                   help="time autograd forward + backward of (y * dy).sum() (training) instead of forwards")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = p.parse_args()

    if args.check:
        results = [check_file(f) for f in args.check]
        ran = [r for r in results if r is not None]
        print(f"{sum(ran)}/{len(ran)} passed" + (f", {len(results) - len(ran)} skipped"
                                                 if len(ran) < len(results) else ""))
        return 0 if all(ran) else 1
    if args.seq < 1 or args.threads < 1 or args.repeats < 1:
        p.error("--seq, --threads and --repeats must be >= 1")
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
