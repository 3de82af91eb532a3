"""coserve's C++ CPU kernels against PyTorch's own operators."""

import pytest
import torch
import torch.nn.functional as F

from coserve.execution import cpu_kernels


@pytest.mark.parametrize("rows,cols,batch,bias", [(1, 7, 1, False), (13, 64, 3, True), (1728, 576, 1, False),
                                                 (4099, 96, 4, True), (4099, 1536, 7, False), (250, 9000, 8, True)])
def test_small_batch_linear_matches_f_linear(rows, cols, batch, bias):
    module = cpu_kernels.load()
    assert module is not None, "the CPU kernels did not build"
    gen = torch.Generator().manual_seed(rows)
    layer = torch.nn.Linear(cols, rows, bias=bias)
    torch.nn.init.normal_(layer.weight, generator=gen)
    x = torch.randn(batch, cols, generator=gen)
    with torch.no_grad():
        exact = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
        torch_error = (F.linear(x, layer.weight, layer.bias).double() - exact).abs().max().item()
        kernel_error = (cpu_kernels.linear(x, layer).double() - exact).abs().max().item()
    # float32 sums over `cols` terms round differently in any two summation orders (BLAS picks its
    # own per CPU): the kernel must be about as close to the exact result as PyTorch's own operator
    assert kernel_error <= 4 * torch_error + 1e-5, (kernel_error, torch_error)


def test_larger_batches_and_other_dtypes_take_the_pytorch_path():
    layer = torch.nn.Linear(8, 5).to(torch.bfloat16)
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(cpu_kernels.linear(x, layer), F.linear(x, layer.weight, layer.bias))
        wide = torch.randn(9, 8)
        layer32 = torch.nn.Linear(8, 5)
        assert torch.equal(cpu_kernels.linear(wide, layer32), F.linear(wide, layer32.weight, layer32.bias))


def test_a_lock_left_by_a_killed_build_is_removed_and_a_fresh_one_kept(tmp_path):
    """torch's loader would wait for a leftover lock forever: every later start would hang."""
    import os
    import time

    from coserve.execution.cpu_kernels import STALE_LOCK_S, clear_stale_lock

    lock = tmp_path / "lock"
    lock.touch()
    clear_stale_lock(tmp_path)
    assert lock.exists()  # another process may be building right now
    old = time.time() - STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    clear_stale_lock(tmp_path)
    assert not lock.exists()
    clear_stale_lock(tmp_path)  # no lock at all: nothing to do
