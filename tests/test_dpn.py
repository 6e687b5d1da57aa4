"""DPN model and loss: every variant's shapes and gradients, a tiny model overfitting synthetic
blur, backbone weights from a local file, config round trip, and the loss's properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from blurset.model.dpn import VARIANTS, DPNConfig, build_dpn, count_flops, load_backbone_weights
from blurset.model.losses import boundary_loss, dpn_loss, flat_sharp_weights, sobel_magnitude

TINY = 0.125  # width multiplier of the test models: F1…F5 have 8, 16, 32, 64, 64 channels


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread


def tiny(variant: str = "deb", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_dpn(DPNConfig(variant=variant, width=TINY, **kwargs))


def blur_pairs(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of random texture with a rectangle of it Gaussian-blurred, and its mask."""
    gen = torch.Generator().manual_seed(seed)
    images, masks = [], []
    for _ in range(n):
        texture = gaussian_blur(torch.rand(3, size, size, generator=gen), [3, 3], [0.6, 0.6])
        blurred = gaussian_blur(texture, [11, 11], [3.0, 3.0])
        y0, x0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
        h, w = torch.randint(size // 4, size // 2 + 1, (2,), generator=gen).tolist()
        mask = torch.zeros(1, size, size)
        mask[:, y0 : y0 + h, x0 : x0 + w] = 1.0
        images.append(mask * blurred + (1 - mask) * texture)
        masks.append(mask)
    return torch.stack(images), torch.stack(masks)


# --------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_gives_maps_at_every_scale(variant):
    model = tiny(variant).eval()
    x = torch.rand(2, 3, 32, 48)
    x[1] = gaussian_blur(x[1], [9, 9], [3.0, 3.0])  # the second image is blurred all over
    with torch.no_grad():
        outputs = model(x)
        prob = model.predict(x)
        alone = model(x[1:])
    assert [tuple(o.shape) for o in outputs] == [
        (2, 1, 32, 48), (2, 1, 16, 24), (2, 1, 8, 12), (2, 1, 4, 6), (2, 1, 2, 3)
    ]
    assert all(torch.isfinite(o).all() for o in outputs)
    # predict is the finest map as a probability
    assert prob.shape == (2, 1, 32, 48)
    torch.testing.assert_close(prob, torch.sigmoid(outputs[0]))
    # each image's maps are its own: the same alone as in a batch, and another image's differ
    for batched, single in zip(outputs, alone, strict=True):
        torch.testing.assert_close(batched[1:], single, rtol=1e-4, atol=1e-5)
        assert (batched[0] - batched[1]).abs().max() > 1e-4
    # every map varies over the image (a constant map would ignore where the blur is)
    assert all(float(o[0].std()) > 0 for o in outputs[:-1])


@pytest.mark.parametrize(
    ("variant", "options"),
    [(v, {}) for v in VARIANTS]
    + [("deb", {"recurrent_steps": 1, "boundary_refinement": False}),
       ("deb", {"recurrent_steps": 3, "distinction_kernel": 5}),
       ("deb+bl", {"batch_norm": True})],
)
def test_every_parameter_gets_a_finite_gradient(variant, options):
    model = tiny(variant, **options)
    x, y = blur_pairs(2, 32)
    weight = 1.0 if model.config.boundary_loss else 0.0
    loss, parts = dpn_loss(model(x), y, boundary_weight=weight)
    loss.backward()
    assert (parts["boundary"] > 0) == model.config.boundary_loss
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, f"no gradient reaches {name}"


def test_recurrence_reuses_the_same_weights():
    sizes = {steps: sum(p.numel() for p in tiny(recurrent_steps=steps).parameters())
             for steps in (1, 2, 4)}
    assert len(set(sizes.values())) == 1
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(tiny(recurrent_steps=1)(x)[0], tiny(recurrent_steps=2)(x)[0])


def test_deb_and_deb_bl_are_the_same_network():
    a, b = tiny("deb"), tiny("deb+bl")
    assert [k for k in a.state_dict()] == [k for k in b.state_dict()]
    assert not DPNConfig(variant="deb").boundary_loss and DPNConfig(variant="deb+bl").boundary_loss
    assert not DPNConfig(variant="add").boundary_loss


@pytest.mark.integration  # a training run (100 steps)
def test_tiny_model_overfits_synthetic_blur():
    torch.manual_seed(0)
    x, y = blur_pairs(4, 64)
    model = tiny("deb+bl")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(100):
        loss, parts = dpn_loss(model(x), y, boundary_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["total"])
    assert losses[0] == pytest.approx(5 * math.log(2), rel=0.05)  # five maps start near p = 0.5
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        mae = float((model.predict(x) - y).abs().mean())
    assert mae < 0.25


def test_count_flops_scales_with_pixels_and_leaves_the_model_alone():
    model = tiny()
    small, large = count_flops(model, 64), count_flops(model, 128)
    assert small > 0 and large == 4 * small
    assert all(p.device.type == "cpu" for p in model.parameters())
    with pytest.raises(ValueError, match="multiple of 16"):
        count_flops(model, 100)


# --------------------------------------------------------------------------- backbone weights


def _features(model) -> dict[str, torch.Tensor]:
    """The backbone as a torchvision vgg16 state dict has it (``features.<i>.*``)."""
    return {k.removeprefix("backbone."): v.clone() for k, v in model.state_dict().items()
            if k.startswith("backbone.features.")}


def test_backbone_weights_load_from_a_local_vgg16_file(tmp_path):
    torch.manual_seed(1)
    source = build_dpn(DPNConfig(width=1.0))
    state = _features(source)
    # torchvision vgg16 layout: conv1_1 … conv5_3 at these indices and shapes
    assert state["features.0.weight"].shape == (64, 3, 3, 3)
    assert state["features.28.weight"].shape == (512, 512, 3, 3)
    assert len(state) == 26
    state["classifier.6.weight"] = torch.zeros(1000, 4096)  # ignored, as in the real file
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)

    torch.manual_seed(2)
    loaded = build_dpn(DPNConfig(width=1.0), backbone_weights=path)
    got = _features(loaded)
    assert got.keys() == (state.keys() - {"classifier.6.weight"})
    assert all(torch.equal(got[k], state[k]) for k in got)
    decoder = next(iter(loaded.levels.parameters()))
    assert not torch.equal(decoder, next(iter(source.levels.parameters())))  # decoder untouched


def test_batch_norm_backbone_has_torchvisions_vgg16_bn_layout():
    import torchvision

    model = build_dpn(DPNConfig(width=1.0, batch_norm=True))
    with torch.device("meta"):  # torchvision's layout without initialising 138M parameters
        layout = torchvision.models.vgg16_bn(weights=None).state_dict()
    gen = torch.Generator().manual_seed(0)
    reference = {k: (torch.rand(v.shape, generator=gen) if v.is_floating_point()
                     else torch.zeros(v.shape, dtype=v.dtype)) if k.startswith("features.")
                 else torch.empty(v.shape, dtype=v.dtype)  # the classifier: ignored
                 for k, v in layout.items()}
    own = model.backbone.state_dict()
    assert {k: v.shape for k, v in own.items()} == {
        k: v.shape for k, v in reference.items() if k.startswith("features.")}
    load_backbone_weights(model, reference)
    assert torch.equal(model.backbone.state_dict()["features.41.running_mean"],
                       reference["features.41.running_mean"])
    plain = build_dpn(DPNConfig(width=1.0))
    with pytest.raises(ValueError, match="vgg16 state dict"):
        load_backbone_weights(plain, reference)


def test_mismatched_backbone_weights_say_why(tmp_path):
    small = _features(tiny())
    with pytest.raises(ValueError, match=r"need width=1\.0.*width=0\.25"):
        build_dpn(DPNConfig(width=0.25), backbone_weights=small)
    with pytest.raises(ValueError, match="shape"):
        build_dpn(DPNConfig(width=0.125), backbone_weights={**small, "features.0.weight":
                                                            torch.zeros(8, 1, 3, 3)})
    with pytest.raises(ValueError, match="no 'features"):
        build_dpn(DPNConfig(width=TINY), backbone_weights={"conv1.weight": torch.zeros(1)})
    partial = dict(small)
    del partial["features.28.bias"]
    with pytest.raises(ValueError, match="features.28.bias"):
        build_dpn(DPNConfig(width=TINY), backbone_weights=partial)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dpn(DPNConfig(width=TINY), backbone_weights=tmp_path / "missing.pth")
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(TypeError, match="not a state dict"):
        build_dpn(DPNConfig(width=TINY), backbone_weights=not_a_dict)


# --------------------------------------------------------------------------- config and input


def test_config_round_trips_through_a_dict():
    config = DPNConfig(variant="concat", width=0.25, decoder_channels=32, recurrent_steps=3,
                       boundary_refinement=False, distinction_kernel=5)
    assert DPNConfig.from_dict(config.to_dict()) == config
    assert DPNConfig.from_dict({"width": 1}) == DPNConfig(width=1.0)
    assert config.backbone_channels == (16, 32, 64, 128, 128) and config.decoder_width == 8


def test_config_errors_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match="unknown DPNConfig key.*'depth'.*valid keys: variant"):
        DPNConfig.from_dict({"depth": 3})
    with pytest.raises(ValueError, match=r"'fpn'.*concat, add, deb, deb\+bl"):
        DPNConfig(variant="fpn")
    with pytest.raises(ValueError, match="width must be a positive"):
        DPNConfig(width=0.0)
    with pytest.raises(ValueError, match="recurrent_steps must be an integer >= 1"):
        DPNConfig(recurrent_steps=0)
    with pytest.raises(ValueError, match="distinction_kernel must be odd.*got 4; use 5"):
        DPNConfig(distinction_kernel=4)
    with pytest.raises(TypeError, match="boundary_refinement must be True or False"):
        DPNConfig(boundary_refinement="yes")


def test_input_size_must_be_a_multiple_of_16():
    model = tiny()
    with pytest.raises(ValueError, match=r"divisible by 16.*100x150.*nearest valid size 96x144"):
        model(torch.rand(1, 3, 100, 150))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32))


# --------------------------------------------------------------------------- loss


def _strong_logits(target: torch.Tensor, scale: float = 30.0) -> torch.Tensor:
    return (2 * target - 1) * scale


def test_loss_is_near_zero_when_every_map_matches_the_target():
    _, y = blur_pairs(2, 32)
    y = (F.avg_pool2d(y, 16) > 0.5).float().repeat_interleave(16, -1).repeat_interleave(16, -2)
    outputs = [_strong_logits(F.avg_pool2d(y, 2**k) if k else y) for k in range(5)]
    total, parts = dpn_loss(outputs, y, boundary_weight=1.0)
    assert float(total) < 1e-6
    assert parts["boundary"] == pytest.approx(0.0, abs=1e-6)
    assert parts["total"] == pytest.approx(parts["bce"] + parts["boundary"])


def test_loss_parts_and_scale_weights():
    torch.manual_seed(0)
    _, y = blur_pairs(2, 32)
    outputs = [torch.randn(2, 1, 32 // 2**k, 32 // 2**k) for k in range(5)]
    only_finest, parts = dpn_loss(outputs, y, scale_weights=[1, 0, 0, 0, 0])
    assert float(only_finest) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(outputs[0], y)))
    assert parts["boundary"] == 0.0
    _, parts = dpn_loss(outputs, y, boundary_weight=2.0)
    assert parts["boundary"] > 0
    assert parts["total"] == pytest.approx(parts["bce"] + 2.0 * parts["boundary"], rel=1e-5)


def test_boundary_term_is_zero_for_identical_maps_and_positive_otherwise():
    _, y = blur_pairs(2, 32)
    assert float(boundary_loss(y, y)) == 0.0
    assert float(boundary_loss(y.roll(3, dims=-1), y)) > 0.01
    soft = gaussian_blur(y, [7, 7], [2.0, 2.0])  # right place, soft edges: still penalised
    assert float(boundary_loss(soft, y)) > 0.01
    flat = torch.ones(1, 1, 8, 8)
    assert float(sobel_magnitude(flat).max()) < 1e-2  # no spurious edge at the borders
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    assert float(sobel_magnitude(step).max()) == pytest.approx(1.0, abs=1e-3)


def test_loss_rejects_bad_shapes_and_values():
    _, y = blur_pairs(1, 32)
    outputs = [torch.zeros(1, 1, 32 // 2**k, 32 // 2**k) for k in range(5)]
    with pytest.raises(ValueError, match=r"shape mismatch.*\(1, 1, 16, 16\).*\(1, 1, 32, 32\)"):
        dpn_loss(outputs[1:], y)
    with pytest.raises(ValueError, match="divide 0/255 masks by 255"):
        dpn_loss(outputs, y * 255)
    with pytest.raises(ValueError, match="unsqueeze"):
        dpn_loss(outputs, y[:, 0])
    with pytest.raises(ValueError, match="one weight per output"):
        dpn_loss(outputs, y, scale_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="boundary_weight"):
        dpn_loss(outputs, y, boundary_weight=-1.0)
    with pytest.raises(ValueError, match=r"outputs\[1\]"):
        dpn_loss([outputs[0], torch.zeros(1, 2, 16, 16)], y)


def test_flat_sharp_pixels_weigh_less():
    """Sharp-labelled pixels without texture get the weight; textured or blurred ones keep 1, and
    unit weights change nothing."""
    torch.manual_seed(0)
    images = torch.full((1, 3, 32, 64), 0.5)
    images[..., :32] = torch.rand(1, 3, 32, 32)  # left: texture, right: flat
    target = torch.zeros(1, 1, 32, 64)
    target[..., 48:] = 1.0  # the right quarter is labelled blurred
    w = flat_sharp_weights(images, target, 0.2)
    assert w.shape == (1, 1, 32, 64)
    assert torch.all(w[..., :24] == 1) and torch.all(w[..., 48:] == 1)
    assert torch.allclose(w[..., 40:46], torch.tensor(0.2))
    outputs = [torch.randn(1, 1, 32, 64), torch.randn(1, 1, 16, 32)]
    plain, _ = dpn_loss(outputs, target)
    unit, _ = dpn_loss(outputs, target, pixel_weights=torch.ones_like(target))
    weighted, _ = dpn_loss(outputs, target, pixel_weights=w)
    assert torch.allclose(plain, unit) and not torch.allclose(plain, weighted)
