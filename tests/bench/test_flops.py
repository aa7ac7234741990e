"""GFLOPs and parameters: the seven variants against the authors' figures, and the per-module rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from yolox_deploy.bench.flops import count_parameters, profile, yolox_complexity
from yolox_deploy.zoo import VARIANTS

# The authors' get_model_info (thop, 2 x MACs) at each variant's test size, and exact parameter counts.
EXPECTED = {
    "yolox-nano": (1.11, 912_159),
    "yolox-tiny": (6.49, 5_055_855),
    "yolox-s": (26.93, 8_968_255),
    "yolox-m": (73.98, 25_326_495),
    "yolox-l": (156.01, 54_208_895),
    "yolox-x": (282.46, 99_071_455),
    "yolox-darknet53": (185.47, 63_724_767),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_variant_gflops_and_params_match_the_authors(name):
    gflops, params = EXPECTED[name]
    c = yolox_complexity(name)
    assert c.params == params
    assert abs(c.gflops - gflops) / gflops < 0.01
    assert round(c.gflops, 2) == pytest.approx(gflops, abs=0.011)  # in fact equal to their printed value
    assert c.input_shape == (1, 3, *VARIANTS[name].test_size)


def test_gflops_scale_with_the_input_area():
    a = yolox_complexity("yolox-s", (320, 320)).gflops
    b = yolox_complexity("yolox-s", (640, 640)).gflops
    assert b == pytest.approx(4 * a, rel=1e-9)


def test_paper_convention_reproduces_the_printed_figures():
    for name, spec in VARIANTS.items():   # the paper's Table 3/4 and README: 1.08, 6.45, 26.8, ... 185.3
        paper = yolox_complexity(name, convention="paper").gflops
        assert abs(paper - spec.gflops) / spec.gflops < 0.005, name
        assert paper == pytest.approx(spec.gflops, abs=0.06), name  # the printed figure, to its last digit
        assert paper < yolox_complexity(name).gflops


def test_unknown_convention():
    with pytest.raises(ValueError):
        yolox_complexity("nano", convention="fvcore")


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=True)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.bn_plain = nn.BatchNorm2d(8, affine=False)
        self.act = nn.SiLU()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))        # [1, 8, 16, 16]
        x = self.bn_plain(self.dw(x))              # [1, 8, 8, 8]
        x = self.pool(self.up(x))                  # [1, 8, 8, 8]
        return self.fc(x.flatten(1))


def test_rules_per_module_type():
    model = _Toy().train()
    c = profile(model, (1, 4, 16, 16), device="cpu")
    conv = 8 * 16 * 16 * 4 * 9          # bias not counted
    dw = 8 * 8 * 8 * 1 * 9              # groups: in_channels / groups = 1
    bn = 4 * 8 * 16 * 16                # affine: 4 ops per element
    bn_plain = 2 * 8 * 8 * 8            # not affine: 2
    up = 8 * 16 * 16                    # nearest: 1 per output element
    fc = 10 * 512
    assert c.by_type == {"Conv2d": conv + dw, "BatchNorm2d": bn + bn_plain, "Upsample": up, "Linear": fc}
    assert c.macs == conv + dw + bn + bn_plain + up + fc
    assert c.params == count_parameters(model)
    assert model.training  # mode restored


def test_meta_and_cpu_counts_agree_and_batch_is_per_image():
    torch.manual_seed(0)
    cpu = profile(_Toy(), (2, 4, 16, 16), device="cpu")
    with torch.device("meta"):
        toy = _Toy()
    meta = profile(toy, (2, 4, 16, 16), device="meta")
    assert meta.macs == cpu.macs
    assert cpu.gflops == pytest.approx(2 * cpu.macs / 2 / 1e9)


def test_fused_model_loses_the_batchnorm_ops():
    from yolox_deploy.nn.yolox import build_model

    with torch.device("meta"):
        raw_model, fused_model = build_model("yolox-nano"), build_model("yolox-nano").fuse()
    raw = profile(raw_model, (1, 3, 416, 416))
    fused = profile(fused_model, (1, 3, 416, 416))
    assert "BatchNorm2d" not in fused.by_type
    assert fused.by_type["Conv2d"] == raw.by_type["Conv2d"]
