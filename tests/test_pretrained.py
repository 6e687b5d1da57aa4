"""The EfficientNet-Lite0 backbone and the shipped ``pretrained`` DPN."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blurset.model.backbones import (
    LITE0_CHANNELS,
    EfficientNetLite0,
    SameConv2d,
    lite0_weights_path,
    load_efficientnet_lite0_state_dict,
)
from blurset.model.checkpoint import checkpoint_path, load_checkpoint
from blurset.model.dpn import DPN, DPNConfig, build_dpn

LITE0 = DPNConfig(backbone="efficientnet-lite0", decoder_channels=8, frozen_stages=3)


@pytest.fixture(scope="module")
def imagenet() -> dict:
    return load_efficientnet_lite0_state_dict()


def test_backbone_pyramid_shapes():
    feats = EfficientNetLite0().eval()(torch.rand(2, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(LITE0_CHANNELS)
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]


def test_weights_come_from_the_installed_wheel(imagenet):
    assert lite0_weights_path().is_file()
    assert "site-packages" in str(lite0_weights_path()) or "dist-packages" in str(
        lite0_weights_path())
    model = build_dpn(LITE0)
    assert torch.equal(model.backbone._conv_stem.weight, imagenet["_conv_stem.weight"])
    assert torch.equal(model.backbone._blocks[15]._project_conv.weight,
                       imagenet["_blocks.15._project_conv.weight"])


def test_imagenet_weights_classify_a_cat(imagenet):
    """The backbone as built (TF 'SAME' padding, ReLU6, BN eps 1e-3) reproduces the ImageNet
    classifier: scikit-image's cat photo comes out as a cat (classes 281-285)."""
    from skimage import data

    body = EfficientNetLite0()
    body.load_imagenet(imagenet)
    body.eval()
    head = SameConv2d(320, 1280, 1, bias=False)
    head.weight.data = imagenet["_conv_head.weight"]
    bn = torch.nn.BatchNorm2d(1280, eps=1e-3)
    bn.load_state_dict({k[5:]: v for k, v in imagenet.items() if k.startswith("_bn1.")})
    bn.eval()
    x = torch.from_numpy(cv2.resize(data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA))
    x = x.permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        z = F.relu6(bn(head(body(x)[-1]))).mean((2, 3))
        logits = F.linear(z, imagenet["_fc.weight"], imagenet["_fc.bias"])
    assert 281 <= int(logits.argmax()) <= 285


def test_lite0_dpn_shapes_and_frozen_stages():
    model = DPN(LITE0)
    model.train()
    x = torch.rand(2, 3, 64, 96)
    outs = model(x)
    assert tuple(outs[0].shape) == (2, 1, 64, 96)  # the H/2 map upsampled to the input
    assert [tuple(o.shape[-2:]) for o in outs[1:]] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert not model.backbone._bn0.training and not model.backbone._blocks[4]._bn1.training
    assert model.backbone._blocks[5]._bn1.training
    sum(o.mean() for o in outs).backward()
    assert model.backbone._conv_stem.weight.grad is None
    assert model.backbone._blocks[4]._project_conv.weight.grad is None
    assert model.backbone._blocks[5]._project_conv.weight.grad is not None
    assert all(p.grad is not None for p in model.levels.parameters())
    assert not any(k.startswith("_frozen") for k in model.state_dict())


def test_backbone_config_is_checked():
    with pytest.raises(ValueError, match="valid backbones"):
        DPNConfig(backbone="resnet50")
    with pytest.raises(ValueError, match="frozen_stages"):
        DPNConfig(frozen_stages=6)


# ---------------------------------------------------------------------------- shipped checkpoint


@pytest.fixture(scope="module")
def pretrained():
    return load_checkpoint("pretrained")


def test_pretrained_is_package_data_and_small():
    path = checkpoint_path("pretrained")
    assert path.name == "pretrained.pt" and path.parent.name == "weights"
    assert path.stat().st_size <= 20 * 1024 * 1024


def test_pretrained_records_its_provenance(pretrained):
    model, meta = pretrained
    assert model.config.backbone == "efficientnet-lite0"
    prov = meta["pretrained"]
    assert prov["commands"] and all(isinstance(c, str) for c in prov["commands"])
    assert len(prov["photos"]["train"]["fingerprint"]) == 64
    assert meta["releases"]["train"]["fingerprint"]
    assert meta["blur_type_head"]["weight"]


def test_pretrained_finds_the_blurred_half(pretrained):
    model, meta = pretrained
    from blurset.model.apply import predict_maps

    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (320, 240),
                     interpolation=cv2.INTER_NEAREST)
    img = np.clip(img.astype(int) + rng.integers(-30, 31, (240, 320, 1)), 0, 255).astype(np.uint8)
    img[:, 160:] = cv2.GaussianBlur(img[:, 160:], (0, 0), 4)
    m = predict_maps(model, [img], input_size=int(meta["config"]["input_size"]))[0]
    assert m.shape == (240, 320) and 0 <= m.min() and m.max() <= 1
    assert m[:, 200:].mean() > m[:, :120].mean() + 0.2


def test_pretrained_prelabeller_gives_mask_and_type(tmp_path):
    from PIL import Image

    from blurset.pipeline.stages.prelabel import make_prelabeller

    rng = np.random.default_rng(1)
    img = cv2.resize(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (256, 192),
                     interpolation=cv2.INTER_NEAREST)
    img[:, 128:] = cv2.GaussianBlur(img[:, 128:], (0, 0), 5)
    Image.fromarray(img).save(tmp_path / "a.png")
    labeller = make_prelabeller("pretrained")
    assert labeller.model_version.startswith("dpn:pretrained@")
    (pred,) = labeller.predict([tmp_path / "a.png"])
    kinds = [r["value"].get("choices") for r in pred["result"] if "choices" in r["value"]]
    assert kinds and kinds[0][0] in ("motion", "defocus")


def test_no_naturally_blurred_photo_is_trained_on():
    """A training photo's area outside the composite's mask is labelled sharp: a photo with natural
    depth of field there would teach that real defocus is sharp, and the real-blur benchmark's
    photos must be unseen."""
    import json
    from pathlib import Path

    from blurset.model.pretrained import (
        HELDOUT_PHOTOS,
        NATURAL_BLUR_PHOTOS,
        SHARP_CROPS,
        TRAIN_PHOTOS,
    )

    train = {(c, n) for c, names in TRAIN_PHOTOS.items() for n in names}
    natural = {(c, n) for c, names in NATURAL_BLUR_PHOTOS.items() for n in names}
    heldout = {(c, n) for c, names in HELDOUT_PHOTOS.items() for n in names}
    assert not train & natural and not train & heldout
    painted = json.loads((Path(__file__).parents[1] / "benchmarks" / "data" / "realblur.json")
                         .read_text())["photos"]
    assert len(painted) >= 10
    assert all((p["collection"], p["name"]) in natural | heldout for p in painted)
    assert set(SHARP_CROPS) <= {n for _, n in train}
    assert all(0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 for x0, y0, x1, y1 in SHARP_CROPS.values())


def test_link_photos_crops_the_sharp_part(tmp_path, monkeypatch):
    from PIL import Image

    import blurset.model.pretrained as pt

    src = tmp_path / "src"
    for collection, names in pt.TRAIN_PHOTOS.items():
        (src / collection).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (200, 100), (10, 20, 30)).save(src / collection / name, "JPEG")
    monkeypatch.setattr(pt, "HELDOUT_PHOTOS", {})
    counts = pt.link_photos(src, tmp_path / "dest")
    assert counts == {"train": sum(map(len, pt.TRAIN_PHOTOS.values())), "heldout": 0}
    (collection,) = [c for c, names in pt.TRAIN_PHOTOS.items() if "GreenMeadow.jpg" in names]
    out = tmp_path / "dest" / "train" / collection
    x0, y0, x1, y1 = pt.SHARP_CROPS["GreenMeadow.jpg"]
    with Image.open(out / "GreenMeadow.crop.png") as im:
        assert im.size == (round((x1 - x0) * 200), round((y1 - y0) * 100))
    assert not (out / "GreenMeadow.jpg").exists()
    kept = [(c, n) for c, names in pt.TRAIN_PHOTOS.items() for n in names if n not in pt.SHARP_CROPS]
    assert kept and all((tmp_path / "dest" / "train" / c / n).is_symlink() for c, n in kept)


def test_realblur_masks_render_as_painted():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "realblur.py"
    spec = importlib.util.spec_from_file_location("realblur", path)
    realblur = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(realblur)
    square = [{"polygon": [[0, 0], [50, 0], [50, 50], [0, 50]]}]
    inside = realblur.render_mask(square, "inside", 100, 200)
    assert inside.shape == (100, 200) and set(np.unique(inside)) == {0, 255}
    assert inside[10, 10] == 255 and inside[80, 150] == 0 and abs((inside > 0).mean() - 0.25) < 0.02
    outside = realblur.render_mask([{"ellipse": [50, 50, 10, 20]}], "outside", 100, 200)
    assert outside[50, 100] == 0 and outside[5, 5] == 255
    with pytest.raises(ValueError, match="polygon or an ellipse"):
        realblur.render_mask([{"circle": [1, 2, 3]}], "inside", 10, 10)
    for entry in realblur.json.loads(realblur.MASKS.read_text())["photos"]:
        mask = realblur.render_mask(entry["shapes"], entry["blurred"], 60, 80)
        assert 0.05 < (mask > 0).mean() < 0.98, entry["name"]
