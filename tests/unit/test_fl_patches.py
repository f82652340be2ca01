"""Rows the FL residual multiplies for convolutions (im2col patches)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flq_audit.audit.extensions.fl import _patches
from flq_audit.errors import CaptureError


def test_conv2d_patches_reproduce_the_convolution() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=3, padding=1, bias=False)
    x = torch.randn(4, 2, 5, 5)
    rows = _patches(conv, x)  # (batch·positions) × (C_in·k·k)
    out = rows @ conv.weight.reshape(3, -1).T
    expected = conv(x).permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("conv", [nn.Conv2d(2, 3, 3, padding="same"),
                                  nn.Conv1d(2, 3, 3, padding="valid")])
def test_named_padding_is_refused_with_a_clear_error(conv: nn.Module) -> None:
    x = torch.randn(1, 2, 5, 5) if isinstance(conv, nn.Conv2d) else torch.randn(1, 2, 5)
    with pytest.raises(CaptureError, match=r"padding='(same|valid)' is not supported"):
        _patches(conv, x)
