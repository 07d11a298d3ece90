"""save_safetensors writes as every dsv4 file is written (dsv4/atomic_file.h): a writer
killed mid-write leaves the old file or the whole new one, never a torn one."""
import os
import random
import subprocess
import sys
import time

import dsv4


def test_killed_save_safetensors_leaves_a_whole_file_or_none(tmp_path):
    target = tmp_path / "t.safetensors"
    script = ("import numpy as np, dsv4\n"
              "x = np.ones(4 << 20, np.float32)\n"
              f"while True: dsv4.save_safetensors({str(target)!r}, {{'t': x}})\n")
    rng, mid_write = random.Random(0), 0
    for _ in range(8):
        p = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
        deadline = time.time() + 60
        while not any("t.safetensors" in f for f in os.listdir(tmp_path)) and time.time() < deadline:
            time.sleep(0.0002)
        time.sleep(rng.uniform(0, 0.005))
        p.kill()
        p.wait()
        temps = [f for f in os.listdir(tmp_path) if ".tmp." in f]
        mid_write += bool(temps)
        for f in temps:
            os.remove(tmp_path / f)
        if target.exists():
            assert dsv4.load_safetensors(target)["t"].size == 4 << 20
    assert mid_write > 0, "no kill landed while a temporary file existed"


def test_failed_save_leaves_no_temporary_file(tmp_path):
    (tmp_path / "taken").mkdir()  # the rename over a folder fails
    try:
        dsv4.save_safetensors(tmp_path / "taken", {"a": [1.0]})
        raise AssertionError("saved over a folder")
    except dsv4.Error as e:
        assert "cannot rename the temporary file over it" in str(e)
    assert sorted(os.listdir(tmp_path)) == ["taken"]
