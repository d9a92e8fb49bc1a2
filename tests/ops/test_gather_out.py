"""``gather_conv`` / ``gather_rows`` write into a given ``out`` (a column block of a concatenation buffer)."""

from __future__ import annotations

import pytest
import torch

from perception4d.ops.gather_conv import gather_conv, gather_rows

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _data(device, dtype, n_in=300, n_out=250, k=5, cin=16, cout=32):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n_in + 1, cin, generator=g)
    xs[-1] = 0  # the sentinel row
    table = torch.randint(0, n_in + 1, (k, n_out), generator=g).to(torch.int32)
    w, b = torch.randn(k * cin, cout, generator=g) * 0.1, torch.randn(cout, generator=g)
    return (t.to(device) for t in (xs.to(dtype), table, w.to(dtype), b.to(dtype)))


@pytest.mark.parametrize("device", DEVICES)
def test_conv_and_row_gathers_write_a_column_block_of_a_wider_buffer(device):
    dtype = torch.float16 if device == "cuda" else torch.float32
    xs, table, w, b = _data(device, dtype)
    n, cout = table.shape[1], w.shape[1]
    buf = torch.full((n, 3 * cout), 7.0, dtype=dtype, device=device)
    ref = gather_conv(xs, table, w, b, relu=True)
    got = gather_conv(xs, table, w, b, relu=True, out=buf[:, cout:2 * cout])
    assert got.data_ptr() == buf[:, cout:].data_ptr()
    torch.testing.assert_close(buf[:, cout:2 * cout], ref, rtol=0, atol=0)
    assert (buf[:, :cout] == 7).all() and (buf[:, 2 * cout:] == 7).all()  # the neighbours untouched
    rows = table[0].to(torch.int64)
    src = xs[:, :16].contiguous()
    gather_rows(src, rows, b[:16], relu=True, out=buf[:, :16])
    torch.testing.assert_close(buf[:, :16], gather_rows(src, rows, b[:16], relu=True), rtol=0, atol=0)
    with pytest.raises(ValueError, match="out must be"):
        gather_conv(xs, table, w, b, out=buf[:, :cout - 1])
