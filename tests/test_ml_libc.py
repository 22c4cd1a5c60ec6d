"""ml.train.libc: training keeps freed activation memory instead of faulting it in again every step."""

import json
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT
from ml.train.libc import glibc

# Forward and backward passes of a narrow airnet on a batch whose activations (about 90 MB per
# layer) are larger than glibc's mmap threshold, as in real training; prints the page faults of
# two steps after two warm-up steps (the heap reaches its peak over the first two: measured here
# 157,000 then 7,700-50,000 faults with the settings, 0 from the third step on, against about
# 230,000 every step without them).
STEPS = """
import json, resource, sys, torch
from ml.train.libc import keep_freed_memory
from ml.nets.models import build_model
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    keep_freed_memory()
model, x = build_model("airnet", widths=[8, 8, 8]), torch.randn(1024, 3, 32, 32)
for _ in range(2):
    model(x).sum().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    model(x).sum().backward()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def page_faults(mode):
    out = subprocess.run([sys.executable, "-c", STEPS, mode], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(glibc() is None, reason="the allocator settings exist only in glibc")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in():
    default, kept = page_faults("default"), page_faults("keep")
    assert default > 100_000  # glibc unmaps every large buffer and the next step faults it in
    assert kept < default / 20
