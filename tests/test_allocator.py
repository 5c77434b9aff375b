"""The C allocator tuning: freed activations stay in the process, so steps stop page-faulting."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from zoo.trainer.allocator import is_glibc

glibc = pytest.mark.skipif(not is_glibc(), reason="glibc only")

PROBE = textwrap.dedent("""
    import json, resource
    import torch
    import torch.nn.functional as F
    import zoo
    from zoo.trainer.allocator import retain_freed_memory

    torch.set_num_threads(1)
    model = zoo.create_model("Net").to(memory_format=torch.channels_last)
    x = torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(32, dtype=torch.long)

    def faults():
        # 20 training steps of Net on 32 images, after 5 to warm up
        for _ in range(5):
            F.cross_entropy(model(x), y).backward()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            F.cross_entropy(model(x), y).backward()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    took = retain_freed_memory()
    print(json.dumps({"took": took, "faults": faults()}))
""")


@glibc
def test_tuned_allocator_stops_the_page_faults_of_each_step() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"})
    result = json.loads(out.stdout)
    assert result["took"] is True
    # untuned, each step faults in 50 to 900 fresh pages here, depending on the heap's
    # history (bench/bench_train_throughput.py shows what that costs)
    assert result["faults"] < 20 * 15


@glibc
def test_environment_thresholds_are_respected() -> None:
    code = "from zoo.trainer.allocator import retain_freed_memory; print(retain_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin",
                                          "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin",
                                          "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert out.stdout.strip() == "False"


def test_glibc_is_recognised_as_the_platform_module_sees_it() -> None:
    import platform

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert is_glibc() is expected
