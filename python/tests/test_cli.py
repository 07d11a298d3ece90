"""Command-line conventions: --version, -t/-m, --json, layer indices, files that are not safetensors,
the C++ example's error exit."""
import json
import os
import re
import subprocess

import pytest

import dsv4
from conftest import CONFORMANCE, ROOT
from test_tools import CLI, synth


def cli(*args, **kw):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, **kw)


def test_version():
    r = cli("--version")
    assert r.returncode == 0, r.stderr
    first, isa, blas = r.stdout.strip().splitlines()
    assert re.fullmatch(rf"dsv4 {re.escape(dsv4.__version__)} \(git ([0-9a-f]{{7,}}(-dirty)?|unknown)\)", first), first
    assert isa == f"isa:  {dsv4.build_info()['isa']}" and blas.startswith("blas: OpenBLAS") and "(OpenMP)" in blas


def test_short_options_everywhere():
    for cmd in ("run", "bench", "bench-batch", "bench-stack", "numerics-diff"):
        assert "-t,--threads" in cli(cmd, "--help").stdout, cmd
    assert "-m,--model" in cli("run", "--help").stdout
    for cmd in ("info", "run", "verify", "state-size", "bench", "bench-batch", "bench-stack"):
        assert "--json" in cli(cmd, "--help").stdout, cmd


def test_run_short_options_and_json(tmp_path):
    model = synth(tmp_path, "--scheme", "original", "--dtype", "fp8", "--sharded")
    inp = model / "sample_input.safetensors"
    long = cli("run", "--model", model, "--layer", 1, "--input", inp, "--output", tmp_path / "a.safetensors",
               "--threads", 1)
    short = cli("run", "-m", model, "--layer", 1, "--input", inp, "--output", tmp_path / "b.safetensors", "-t", 1,
                "--json")
    assert long.returncode == 0 and short.returncode == 0, long.stderr + short.stderr
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    j = json.loads(short.stdout)  # stdout is the JSON object alone; the report went to stderr
    assert j["layer"] == 1 and j["layer_type"] == "compressed_sparse_attention" and j["input_shape"] == [1, 37, 64]
    assert j["output"] == str(tmp_path / "b.safetensors") and j["seconds"] > 0 and "layer 1" in short.stderr


def test_info_json_and_layer_range(tmp_path):
    model = synth(tmp_path, "--scheme", "hf", "--dtype", "fp8", "--sharded", "--other-modules")
    r = cli("info", model, "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["num_layers"] == 3 and [lay["type"] for lay in j["layers"]] == list(dsv4.Config.from_hf(model).layer_types)
    assert j["dims"]["hidden_size"] == 64 and j["other_tensors"] and j["layers_with_problems"] == 0
    assert j["total_attention_bytes"] == sum(lay["attention_bytes"] for lay in j["layers"])
    assert sum(t["bytes"] for t in j["layers"][1]["tensors"]) == j["layers"][1]["attention_bytes"]
    one = json.loads(cli("info", model, "--layer", 2, "--json").stdout)
    assert [lay["index"] for lay in one["layers"]] == [2] and one["layers"][0] == j["layers"][2]
    for cmd in (["info", model], ["run", "-m", model, "--input", model / "sample_input.safetensors",
                                  "--output", tmp_path / "o.safetensors"]):
        r = cli(*cmd, "--layer", 3)
        assert r.returncode != 0 and "layer 3 out of range (the model has 3 layers)" in r.stderr, r.stderr
        r = cli(*cmd, "--layer", -1)
        assert r.returncode != 0 and "--layer: -1 is negative; layers are numbered from 0" in r.stderr, r.stderr
        assert "e+308" not in r.stderr and "179769" not in r.stderr


def test_verify_json():
    files = [p for p in CONFORMANCE if "small_" in p and "stateless" in p][:3]
    r = cli("verify", "--json", *files)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert (j["passed"], j["failed"]) == (3, 0) and [c["file"] for c in j["cases"]] == files
    assert all(c["passed"] and c["compared"] > 0 and c["max_abs"] <= 1e-5 for c in j["cases"])
    assert r.stderr.strip().splitlines()[-1] == "3 passed, 0 failed"


def test_not_a_safetensors_file(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("these are notes, not tensors\n" * 4)
    r = cli("verify", "--json", text)
    assert r.returncode == 1
    j = json.loads(r.stdout)
    assert j["failed"] == 1 and f"{text} is not a safetensors file" in j["cases"][0]["failures"][0]
    model = synth(tmp_path)
    r = cli("run", "-m", model, "--layer", 0, "--input", text, "--output", tmp_path / "o.safetensors")
    assert r.returncode == 2 and f"{text} is not a safetensors file" in r.stderr, r.stderr
    with pytest.raises(dsv4.Error, match="is not a safetensors file"):
        dsv4.load_safetensors(text)


def test_state_size_json():
    r = cli("state-size", "--tokens", "4,260", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["preset"] == "v4-flash" and j["formula_matches"] and j["tokens"] == [4, 260]
    assert {m["type"] for m in j["measured"]} == {"sliding", "csa", "hca"}
    assert j["per_layer"]["sliding"]["bytes_per_token"] == 0 and j["per_layer"]["csa"]["bytes_per_token"] > 0
    assert j["whole_model"]["layers"] == {"sliding": 2, "csa": 21, "hca": 20}


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_bench_json_fields(mode):
    args = ["--seq", 8] if mode == "prefill" else ["--context", 8, "--decode", 2]
    r = cli("bench", "--layer-type", "swa", "--repeats", 1, "-t", 1, "--json", *args)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["mode"] == mode and j["threads"] == 1
    assert j["copy_gb_per_s"] > 0 and j["read_gb_per_s"] > 0
    if mode == "decode":
        assert "seq" not in j and (j["context"], j["decode"]) == (8, 2)
        assert j["read_gb_per_s_after"] > 0  # measured again after the steps
        assert 0 < j["fastest_step_seconds"] <= j["seconds"] <= j["slowest_step_seconds"]
    else:
        assert j["seq"] == 8 and "context" not in j and "decode" not in j


def test_bench_stack_json_fields():
    r = cli("bench-stack", "--layers", 3, "--synthetic-context", 4096, "--steps", 2, "-t", 1,
            "--numerics", "deployment", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["layers"] == 3 and j["context"] == 4096 and j["synthetic_context"]
    assert j["read_gb_per_s"] > 0 and j["read_gb_per_s_after"] > 0 and j["copy_gb_per_s"] > 0
    assert 0 < j["fastest_step_seconds"] <= j["seconds_per_token"] <= j["slowest_step_seconds"]
    assert len(j["step_seconds"]) == 2 and max(j["step_seconds"]) == j["slowest_step_seconds"]
    assert j["sum_of_layers_seconds"] > 0
    types = j["per_type"]  # each type's median step in the stack against alone, the layers counted once
    assert sum(t["layers"] for t in types) == 3 and len({t["layer_type"] for t in types}) == len(types)
    assert all(t["stack_seconds"] > 0 and t["alone_seconds"] > 0 for t in types)
    assert j["sum_of_layers_seconds"] == pytest.approx(sum(t["layers"] * t["alone_seconds"] for t in types))
    assert j["step_read_bytes"] > j["weight_bytes"] > 0  # weights plus the states' reads


def test_cpp_example_reports_errors(tmp_path):
    example = os.path.join(os.path.dirname(os.path.abspath(CLI)), "examples", "dsv4_quickstart")
    ok = subprocess.run([example], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "one-shot [1, 37, 64]" in ok.stdout, ok.stderr
    r = subprocess.run([example], cwd=tmp_path, capture_output=True, text=True)  # no tests/data there
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "small_csa_stateless_s37" in r.stderr, r.stderr
