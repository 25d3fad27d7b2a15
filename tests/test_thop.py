"""macs_thop: thop's count (ultralytics-thop) beside ours (FlopCounterMode / 2), and where they differ."""
import pytest
import torch
from torch import nn

from dynsearch.dynamic import build_model
from dynsearch.dynamic.cost import count_macs
from dynsearch.measure.thop_count import thop_macs, thop_macs_full
from dynsearch.testing.conformance import cases


def _both(module, x):
    module.eval()
    with torch.no_grad():
        return thop_macs(module, x), count_macs(lambda: module(x))


@pytest.mark.parametrize("bias", [False, True])
def test_conv_and_linear_alone_agree_exactly(bias):
    """Both count a product per weight use; neither counts the bias add."""
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=bias), nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=bias),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10, bias=bias))
    # 64*8*9 + 16*8*72 + 128*10
    assert _both(model, torch.zeros(1, 1, 8, 8)) == (15104, 15104)


def test_thop_also_counts_normalisation_and_average_pooling():
    """Documented in docs/concepts.md "How MACs are counted": batch-norm 4 per element (2 + 2 affine), average pooling kernel + 1 per
    output, ReLU and max-pooling 0 (ultralytics-thop 2.2); ours counts none of them."""
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10, bias=False))
    thop, ours = _both(model, torch.zeros(1, 1, 8, 8))
    assert ours == 64 * 8 * 9 + 128 * 10 == 5888
    assert thop == ours + 4 * 512 + 5 * 128 == 8576  # BN over 8x8x8, AvgPool2d(2) giving 8x4x4
    feature = torch.zeros(1, 8, 8, 8)
    assert _both(nn.ReLU(), feature) == (0, 0) and _both(nn.MaxPool2d(2), feature) == (0, 0)
    assert _both(nn.AdaptiveAvgPool2d(1), feature) == (8 * 65, 0)


def test_attention_and_functional_calls():
    """Matrix products written as ``@`` (our Transformer backbone's attention) count the same in both;
    nn.MultiheadAttention's thop rule adds its softmax (3 x keys - 1 per row and head); a functional
    ``F.conv2d`` (CondConv's per-sample kernels) is invisible to thop."""

    class Attention(nn.Module):
        def forward(self, x):
            return (x @ x.transpose(1, 2)).softmax(dim=-1) @ x

    assert _both(Attention(), torch.zeros(1, 16, 8)) == (2 * 16 * 16 * 8, 2 * 16 * 16 * 8)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(32, 2, batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x)[0]

    products = 16 * 32 * 96 + 16 * 32 * 32 + 2 * 16 * 16 * 32  # in/out projections, QK^T and AV
    attention, x = SelfAttention().eval(), torch.zeros(1, 16, 32)
    assert thop_macs(attention, x) == products + 2 * 16 * (3 * 16 - 1) == 83424
    assert count_macs(lambda: attention(x)) == products == 81920
    # In eval under no_grad the layer takes torch's fused fast path, which FlopCounterMode does not see at
    # all: why our Transformer backbone writes attention as matrix products (models/backbones.py).
    assert _both(attention, x) == (83424, 0)

    class FunctionalConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8, 1, 3, 3))

        def forward(self, x):
            return nn.functional.conv2d(x, self.weight)

    assert _both(FunctionalConv(), torch.zeros(1, 1, 8, 8)) == (0, 36 * 8 * 9)


@pytest.mark.parametrize("case_id, config", list(cases()), ids=[case_id for case_id, _ in cases()])
def test_every_mechanism_gets_a_positive_int_and_nothing_on_stdout(case_id, config, capfd):
    torch.manual_seed(0)
    model = build_model(config).eval()
    capfd.readouterr()
    macs = thop_macs_full(model)
    assert capfd.readouterr().out == ""
    assert isinstance(macs, int) and macs > 0, case_id
    assert not any(hasattr(m, "total_ops") for m in model.modules())  # counted on a copy
    if config["mechanism"] == "condconv":  # thop misses CondConv's per-sample F.conv2d: it counts less
        assert macs < model.macs_full()
    else:  # thop adds normalisation, pooling, softmax and cell element-wise work to the same products
        assert macs >= model.macs_full()


def test_a_model_thop_cannot_count_is_recorded_as_none():
    class NoStaticPath(nn.Module):
        def example_input(self, batch_size=1):
            return torch.zeros(batch_size, 4)

        def forward_static(self, x):
            raise NotImplementedError("no static path")

    assert thop_macs_full(NoStaticPath()) is None
