import pytest
import torch

from yolox_deploy import build_model
from yolox_deploy.errors import InputError
from yolox_deploy.nn.yolox import count_parameters
from yolox_deploy.zoo import VARIANTS, canonical_name, get_spec

# The authors' architectures, 80 classes (exact).
EXPECTED_PARAMS = {
    "yolox-nano": 912_159, "yolox-tiny": 5_055_855, "yolox-s": 8_968_255, "yolox-m": 25_326_495,
    "yolox-l": 54_208_895, "yolox-x": 99_071_455, "yolox-darknet53": 63_724_767,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts_equal_the_authors(name):
    with torch.device("meta"):
        model = build_model(name)
    assert count_parameters(model) == EXPECTED_PARAMS[name]


def test_every_variant_is_in_the_table():
    assert set(VARIANTS) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name,size", [("yolox-nano", 416), ("yolox-tiny", 416), ("yolox-s", 640), ("yolox-x", 640),
                                       ("yolox-darknet53", 640)])
def test_default_test_size(name, size):
    assert get_spec(name).test_size == (size, size)


@pytest.mark.parametrize("alias", ["s", "yolox_s", "YOLOX-S", " yolox-s "])
def test_names_are_forgiving(alias):
    assert canonical_name(alias) == "yolox-s"


def test_darknet_aliases():
    assert canonical_name("darknet53") == "yolox-darknet53"


def test_unknown_variant_lists_the_choices():
    with pytest.raises(InputError, match="yolox-nano"):
        canonical_name("yolox-huge")


def test_output_shape_and_class_count():
    torch.manual_seed(0)
    model = build_model("yolox-nano", num_classes=7).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 224, 320) * 255)
    anchors = (224 // 8) * (320 // 8) + (224 // 16) * (320 // 16) + (224 // 32) * (320 // 32)
    assert out.shape == (2, anchors, 5 + 7)
    assert float(out[..., 4:].min()) >= 0 and float(out[..., 4:].max()) <= 1  # sigmoid scores


def test_darknet53_runs():
    torch.manual_seed(0)
    model = build_model("yolox-darknet53").eval()
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 64 + 16 + 4, 85)


def test_training_mode_returns_logits():
    model = build_model("yolox-nano", num_classes=3).train()
    out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 84, 8)
    assert out.requires_grad


def test_fusion_preserves_outputs():
    torch.manual_seed(0)
    model = build_model("yolox-s", num_classes=5).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.rand(1, 3, 128, 128) * 255
    with torch.inference_mode():
        before = model(x)
        model.fuse()
        after = model(x)
    assert model.is_fused
    torch.testing.assert_close(after, before, atol=2e-3, rtol=1e-4)
