"""The published V-Net: block structure, parameter count, shapes, and the config registry."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from myoflow.segment.crop import GLUTEUS_CROP, CropSpec
from myoflow.segment.model import build_model
from myoflow.segment.model.registry import ModelConfigError, crop_spec, parameter_count
from myoflow.segment.model.vnet import ResidualConvs, VNet

CONFIG = {"architecture": "vnet", "in_channels": 1, "labels": ["iliopsoas"], "width": 1.0}


def five_cubed_convs(block: nn.Module) -> list[nn.Conv3d]:
    return [m for m in block.modules() if isinstance(m, nn.Conv3d) and m.kernel_size == (5, 5, 5)]


def test_blocks_follow_the_paper():
    """I -> D2,32 -> D3,64 -> D3,128 -> L -> U3,128 -> U3,64 -> U3,32 -> F at width 1."""
    model = VNet()
    blocks = [model.input_block, *model.down, model.bottom, *model.up, model.final]
    counts = [len(five_cubed_convs(b)) for b in blocks]
    widths = [five_cubed_convs(b)[-1].out_channels for b in blocks]
    assert counts == [1, 2, 3, 3, 3, 3, 3, 3, 1]
    assert widths == [16, 32, 64, 128, 128, 128, 64, 32, 16]
    for block in (*model.down, model.bottom):
        assert block.down.kernel_size == (2, 2, 2) and block.down.stride == (2, 2, 2)
    for block in (*model.up, model.final):
        assert isinstance(block.up, nn.ConvTranspose3d)
        assert block.up.kernel_size == (2, 2, 2) and block.up.stride == (2, 2, 2)
        assert block.up.out_channels == block.up.in_channels // 2  # V-Net halves going up
    residuals = [b if isinstance(b, ResidualConvs) else b.block for b in blocks]
    shortcuts = [
        None
        if isinstance(r.shortcut, nn.Identity)
        else (r.shortcut.in_channels, r.shortcut.out_channels)
        for r in residuals
    ]
    # 1x1x1 shortcuts where a block changes width (concatenated skips included), else identity
    assert shortcuts == [
        (1, 16),
        (16, 32),
        (32, 64),
        (64, 128),
        None,
        (192, 128),
        (128, 64),
        (64, 32),
        (32, 16),
    ]
    activations = {type(m) for m in model.modules() if not list(m.children())} - {
        nn.Conv3d,
        nn.ConvTranspose3d,
        nn.Identity,
    }
    assert activations == {nn.SELU}  # no batch norm, no ReLU
    assert model.output.kernel_size == (1, 1, 1) and model.output.out_channels == 1


@pytest.mark.parametrize(
    ("width", "millions", "tolerance"),
    [(1.0, 22.9, 0.01), (0.5, 5.73, 0.01), (0.25, 1.4, 0.03)],  # paper: 22.9 M and 1.4 M
)
def test_parameter_count(width, millions, tolerance):
    count = parameter_count(VNet(1, 1, width))
    assert abs(count / (millions * 1e6) - 1) < tolerance, count


def test_four_channels_and_labels_change_only_the_ends():
    one = parameter_count(VNet(1, 1))
    many = parameter_count(VNet(4, 3))
    # input conv 5^3 x 16 per extra channel + its 1x1x1 shortcut; output 16 + 1 per label
    assert many - one == 3 * (125 * 16 + 16) + 2 * (16 + 1)


def test_forward_shapes_and_range():
    torch.manual_seed(0)
    model = VNet(in_channels=4, out_channels=3, width=0.125).eval()
    x = torch.randn(2, 4, 32, 16, 48)
    with torch.no_grad():
        probabilities = model(x)
        logits = model.logits(x)
    assert probabilities.shape == (2, 3, 32, 16, 48)
    assert torch.allclose(probabilities, torch.sigmoid(logits))
    assert 0.0 <= float(probabilities.min()) and float(probabilities.max()) <= 1.0
    assert float(probabilities.std()) > 0  # not a constant output


def test_every_parameter_learns():
    torch.manual_seed(1)
    model = VNet(in_channels=1, out_channels=2, width=0.125)
    loss = nn.BCEWithLogitsLoss()(
        model.logits(torch.randn(1, 1, 16, 16, 16)), torch.ones(1, 2, 16, 16, 16)
    )
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


@pytest.mark.parametrize("shape", [(1, 1, 24, 16, 16), (1, 16, 16, 16)])
def test_rejects_inputs_it_cannot_halve_four_times(shape):
    with pytest.raises(ValueError, match="multiples of 16"):
        VNet(width=0.125)(torch.zeros(shape))


def test_build_model_from_a_saved_config():
    config = json.loads(json.dumps({**CONFIG, "crop": GLUTEUS_CROP.to_dict()}))
    model = build_model(config)
    assert isinstance(model, VNet)
    assert parameter_count(model) == parameter_count(VNet(1, 1, 1.0))
    assert crop_spec(config) == GLUTEUS_CROP
    assert crop_spec(CONFIG) == CropSpec()
    small = build_model({**CONFIG, "in_channels": 4, "labels": ["a", "b"], "width": 0.25})
    assert small.input_block.convs[0].in_channels == 4 and small.output.out_channels == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "unet"}, "unknown architecture 'unet'"),
        ({"labels": []}, "labels must be distinct"),
        ({"labels": "iliopsoas"}, "labels must be distinct"),
        ({"labels": ["a", "a"]}, "labels must be distinct"),
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": 1.5}, "in_channels"),
        ({"width": -1}, "width"),
        ({"widht": 1.0}, "unknown keys \\['widht'\\]"),
    ],
)
def test_bad_configs_are_refused(change, message):
    with pytest.raises(ModelConfigError, match=message):
        build_model({**CONFIG, **change})


def test_missing_key_is_named():
    config = dict(CONFIG)
    del config["labels"]
    with pytest.raises(ModelConfigError, match="missing keys \\['labels'\\]"):
        build_model(config)
