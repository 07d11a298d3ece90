"""Configs from config.json, model folders, the plot command, the example, import without torch."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dsv4
from conftest import CONFORMANCE, ROOT, Case, assert_close

CLI = os.environ.get("DSV4_CLI", os.path.join(ROOT, "build", "dsv4"))
PYENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def synth(tmp_path, *args):
    out = tmp_path / "model"
    subprocess.run([CLI, "synth-model", str(out), *args], check=True, capture_output=True)
    return out


def test_config_fields_presets_and_kwargs():
    flash = dsv4.Config.preset("v4-flash")
    assert (flash.hidden_size, flash.num_attention_heads, flash.index_topk) == (4096, 64, 512)
    assert flash.rope_scaling.factor == 16.0
    pro = dsv4.Config.preset("v4-pro")
    assert pro.hidden_size == 7168 and pro != flash
    again = dsv4.Config(**flash.to_dict())
    assert again == flash
    c = dsv4.Config(hidden_size=64, rope_scaling={"factor": 4.0}, layer_types=["swa", "csa"])
    assert c.hidden_size == 64 and c.rope_scaling.factor == 4.0
    assert c.layer_types == ["sliding_attention", "compressed_sparse_attention"]


@pytest.mark.parametrize("form", ["layer_types", "compress_ratios"])
def test_config_from_hf_dict_and_path(tmp_path, form):
    d = dsv4.Config.preset("v4-flash").to_dict()
    d.pop("layer_types")
    if form == "layer_types":
        d.update(layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"])
    else:
        d.update(num_hidden_layers=3, compress_ratios=[0, 4, 128, 0])  # the last entry: the MTP layer
    c = dsv4.Config.from_hf(d)
    assert c.layer_types == ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert dsv4.Config.from_hf(tmp_path) == c
    assert dsv4.Config.from_hf(str(tmp_path / "config.json")) == c


@pytest.mark.parametrize("scheme", ["hf", "original"])
def test_from_model_reproduces_the_reference(tmp_path, scheme):
    path = next(p for p in CONFORMANCE if "small_csa_stateless_s37." in p)
    case = Case(path)
    model = synth(tmp_path, "--scheme", scheme, "--from-conformance", path)
    layer = dsv4.Layer.from_model(model, 0)
    assert layer.layer_type == "compressed_sparse_attention" and layer.config.hidden_size == 64
    assert_close(layer(case.chunks[0]["hidden_states"]), case.chunks[0]["output"], "from_model")
    half = dsv4.Layer.from_model(model, 0, weights_format="bf16")
    assert half.weight_bytes < layer.weight_bytes


def test_fp8_model_folder(tmp_path):
    model = synth(tmp_path, "--scheme", "original", "--dtype", "fp8", "--sharded")
    x = dsv4.load_safetensors(model / "sample_input.safetensors")["hidden_states"]
    for i, t in enumerate(["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]):
        layer = dsv4.Layer.from_model(model, i)
        assert layer.layer_type == t
        y = layer(x)
        assert y.shape == x.shape and np.isfinite(y).all()


@pytest.mark.parametrize("scheme", ["hf", "original"])
def test_native_weights_from_an_fp8_folder(tmp_path, scheme):
    model = synth(tmp_path, "--scheme", scheme, "--dtype", "fp8", "--sharded", "--other-modules")
    x = dsv4.load_safetensors(model / "sample_input.safetensors")["hidden_states"]
    for i in range(3):
        native = dsv4.Layer.from_model(model, i, weights_format="native")
        f32 = dsv4.Layer.from_model(model, i)
        assert native.weight_bytes < f32.weight_bytes
        assert_close(native(x), f32(x), f"layer {i} native vs f32", atol=1e-6, rtol=1e-6)
        s1, s2 = native.new_state(), f32.new_state()
        for t in range(x.shape[1]):  # decode: the same kernel order, bit for bit
            assert np.array_equal(native(x[0, t:t + 1], state=s1), f32(x[0, t:t + 1], state=s2))


_RAW = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F8_E4M3": np.uint8, "F8_E8M0": np.uint8,
        "I64": np.int64, "I8": np.int8}


def raw_tensors(folder):
    """name -> (safetensors dtype, array of the raw elements) over a folder's files (test-only reader)."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        data = f.read_bytes()
        n = int.from_bytes(data[:8], "little")
        for name, t in json.loads(data[8:8 + n]).items():
            if name != "__metadata__":
                b, e = t["data_offsets"]
                out[name] = (t["dtype"], np.frombuffer(data[8 + n + b:8 + n + e], _RAW[t["dtype"]]).reshape(t["shape"]))
    return out


@pytest.mark.parametrize("scheme", ["hf", "original"])
def test_native_weights_from_arrays(tmp_path, scheme):
    """weights_format="native" from arrays keeps FP8 codes + scales and BF16 as given: the same layer
    (bytes and outputs) as from_model's native one, and the f32 layer's numbers."""
    model = synth(tmp_path, "--scheme", scheme, "--dtype", "fp8", "--sharded", "--other-modules")
    config = dsv4.Config.from_hf(model)
    raw = raw_tensors(model)
    x = dsv4.load_safetensors(model / "sample_input.safetensors")["hidden_states"]
    for i, layer_type in enumerate(config.layer_types):
        prefix = f"model.layers.{i}.self_attn." if scheme == "hf" else f"layers.{i}.attn."
        given = {k: v for k, v in raw.items() if k.startswith(prefix)}
        assert any(d == "F8_E4M3" for d, _ in given.values()) and any(d == "BF16" for d, _ in given.values())
        # FP8 codes and UE8M0 scale bytes as plain uint8 arrays; BF16 as an explicit (dtype, raw) pair.
        weights = {k: (a if d in ("F8_E4M3", "F8_E8M0") else (d, a)) for k, (d, a) in given.items()}
        native = dsv4.Layer(config, layer_type, weights, weights_format="native")
        stored = dsv4.Layer.from_model(model, i, weights_format="native")
        assert native.weight_bytes == stored.weight_bytes
        assert np.array_equal(native(x), stored(x))
        f32 = dsv4.Layer(config, layer_type, weights)  # the same arrays widened (FP8 times its scales)
        assert native.weight_bytes * 2 < f32.weight_bytes
        assert np.array_equal(f32(x), dsv4.Layer.from_model(model, i)(x))
        assert_close(native(x), f32(x), f"layer {i} native vs f32", atol=1e-6, rtol=1e-6)
        s1, s2 = native.new_state(), f32.new_state()
        for t in range(x.shape[1]):  # decode: bit for bit
            assert np.array_equal(native(x[0, t:t + 1], state=s1), f32(x[0, t:t + 1], state=s2))


def test_native_weights_from_arrays_errors(tmp_path):
    model = synth(tmp_path, "--scheme", "hf", "--dtype", "fp8", "--sharded")
    config = dsv4.Config.from_hf(model)
    given = {k: v for k, v in raw_tensors(model).items() if k.startswith("model.layers.0.")}
    weights = {k: (d, a) for k, (d, a) in given.items()}
    scale = "model.layers.0.self_attn.q_a_proj.weight_scale_inv"
    no_scale = {k: v for k, v in weights.items() if k != scale}
    with pytest.raises(dsv4.Error, match=r"q_a_proj.weight' \(F8_E4M3\): FP8 needs its block scales"):
        dsv4.Layer(config, "swa", no_scale, weights_format="native")
    no_weight = {k: v for k, v in weights.items() if k != "model.layers.0.self_attn.q_a_proj.weight"}
    with pytest.raises(dsv4.Error, match="block scales of 'model.layers.0.self_attn.q_a_proj.weight', which is not given"):
        dsv4.Layer(config, "swa", no_weight, weights_format="native")
    bad = dict(weights, **{scale: ("F32", np.ones((2, 2), np.float32))})
    with pytest.raises(dsv4.Error, match=r"scales of shape \[2, 2\] for weight \[32, 64\]"):
        dsv4.Layer(config, "swa", bad, weights_format="native")
    with pytest.raises(dsv4.Error, match="unknown dtype 'F9'"):
        dsv4.Layer(config, "swa", dict(weights, sinks=("F9", np.ones(4, np.float32))), weights_format="native")


def test_safetensors_round_trip(tmp_path):
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.arange(4), "h": np.ones(3, np.float16)}
    dsv4.save_safetensors(tmp_path / "t.safetensors", a, {"note": "hi"})
    b = dsv4.load_safetensors(tmp_path / "t.safetensors")
    assert np.array_equal(b["x"], a["x"]) and b["i"].dtype == np.int64 and b["h"].dtype == np.float32
    assert dsv4.safetensors_metadata(tmp_path / "t.safetensors") == {"note": "hi"}
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(dsv4.Error, match="bad.safetensors"):
        dsv4.load_safetensors(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_plot_command(tmp_path, layer):
    model = synth(tmp_path)
    out = tmp_path / f"map{layer}.png"
    r = subprocess.run([sys.executable, "-m", "dsv4.plot", "--model", str(model), "--layer", str(layer), "--input",
                        str(model / "sample_input.safetensors"), "--out", str(out)],
                       env=PYENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10000


def test_quickstart_example_runs():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py")], cwd=ROOT, env=PYENV,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "max |dsv4 - reference| =" in r.stdout


def test_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import dsv4, numpy as np\n"
            "c = dsv4.Config.preset('v4-flash')\n"
            "try:\n    import dsv4.torch\nexcept ImportError:\n    print('no torch: ok')\n")
    r = subprocess.run([sys.executable, "-c", code], env=PYENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "no torch: ok"


def test_bench_backward_commands():
    """`dsv4 bench --backward` and `bench/torch_baseline.py --backward` at a tiny S: their JSON adds up."""
    r = subprocess.run([CLI, "bench", "--backward", "--layer-type", "swa", "--seq", "8", "--repeats", "1",
                        "--threads", "1", "--json"], check=True, capture_output=True, text=True)
    j = json.loads(r.stdout.strip().splitlines()[-1])
    assert j["mode"] == "backward" and j["seq"] == 8 and j["forward_seconds"] > 0 and j["backward_seconds"] > 0
    assert j["backward_over_forward"] == pytest.approx(j["backward_seconds"] / j["forward_seconds"])
    assert j["tape_bytes"] >= 8 * 4096 * 4 and j["peak_rss_bytes"] > j["weight_bytes"]  # the tape keeps x
    r = subprocess.run([CLI, "bench", "--backward", "--seq", "8", "--numerics", "deployment"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "reference numerics only" in r.stderr
    tb = [sys.executable, os.path.join(ROOT, "bench", "torch_baseline.py"), "--backward", "--layer-type", "swa",
          "--repeats", "1", "--warmup", "0", "--threads", "1", "--json"]
    r = subprocess.run(tb + ["--seq", "8"], check=True, capture_output=True, text=True)
    j = json.loads(r.stdout.strip().splitlines()[-1])
    assert j["mode"] == "backward" and j["backward_over_forward"] == pytest.approx(j["backward_seconds"] /
                                                                                   j["forward_seconds"])
    r = subprocess.run(tb + ["--seq", "4096", "--max-gb", "20"], capture_output=True, text=True)
    assert r.returncode == 3 and "x3" in json.loads(r.stdout.strip().splitlines()[-1])["error"]
