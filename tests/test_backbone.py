import numpy as np
import pytest
import skimage.data
import timm
import torch

from inspectd.data.images import resize_image, to_tensor
from inspectd.errors import ConfigError
from inspectd.features import BackboneConfig, FeatureExtractor, create_classifier


def test_packaged_lite0_weights_are_real_imagenet_weights():
    model = create_classifier(BackboneConfig())
    cat = resize_image(skimage.data.chelsea().astype(np.float32) / 255.0, 224)
    with torch.no_grad():
        logits = model((to_tensor(cat) - 0.5) / 0.5)
    assert int(logits.argmax()) in range(281, 286)  # ImageNet cat classes


def test_selected_layers_shapes_and_strides():
    fe = FeatureExtractor(BackboneConfig(layers=[1, 3]))
    maps = fe(torch.rand(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == fe.channels == [24, 112]
    assert fe.strides == [4, 16] and maps[0].shape[-1] == 16


def test_gradient_reaches_the_input():
    fe = FeatureExtractor(BackboneConfig(layers=[2]))
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    fe(x)[0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_backbone_and_layer_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown backbone 'no_such_net'"):
        FeatureExtractor(BackboneConfig(name="no_such_net"))
    with pytest.raises(ConfigError, match=r"unknown layer\(s\) \[9\].*available"):
        FeatureExtractor(BackboneConfig(layers=[9]))


def test_local_weight_files_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    reference = create_classifier(BackboneConfig())
    state = reference.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    x = torch.rand(1, 3, 64, 64)
    want = FeatureExtractor(BackboneConfig(layers=[2]))(x)[0]
    for name in ("w.safetensors", "w.pth"):
        got = FeatureExtractor(BackboneConfig(layers=[2], weights=str(tmp_path / name)))(x)[0]
        assert torch.allclose(got, want)


def test_missing_or_wrong_weight_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        FeatureExtractor(BackboneConfig(weights=str(tmp_path / "absent.pth")))
    torch.save({"a": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="tensors"):
        FeatureExtractor(BackboneConfig(weights=str(tmp_path / "bad.pth")))


def test_offline_hub_weights_give_one_clear_error(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("network unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="could not be fetched.*offline"):
        FeatureExtractor(BackboneConfig(name="resnet18", layers=[1], weights="imagenet"))


def test_no_packaged_weights_for_other_backbones():
    with pytest.raises(ConfigError, match="no package ships"):
        FeatureExtractor(BackboneConfig(name="resnet18", layers=[1], weights="package"))


def test_body_stops_at_the_deepest_requested_layer():
    """The blocks after the deepest requested layer are removed, and the features are those of
    timm's untruncated body."""
    fe = FeatureExtractor(BackboneConfig(layers=[2, 3]))
    untruncated = timm.create_model(fe.cfg.name, features_only=True, out_indices=(2, 3))
    untruncated.load_state_dict(fe.body.state_dict(), strict=False)
    untruncated.eval()
    assert len(fe.body.blocks) == 5 < len(untruncated.blocks) == 7
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(fe.body(x), untruncated(x)):
            assert torch.equal(got, want)
    assert len(FeatureExtractor(BackboneConfig(layers=[4])).body.blocks) == 7  # the deepest layer keeps all


def test_bundle_with_the_unused_stages_still_loads(fitted, normals, tmp_path):
    """A bundle written before the truncation stores the weights of the dropped stages."""
    from inspectd.methods import load_method
    from inspectd.methods import bundle as B

    method = fitted["patchcore"]
    bundle = method.save(tmp_path / "old")
    state = B.load_tensors(bundle / "state.pt")
    state["backbone.body.blocks.6.0.conv.weight"] = torch.zeros(320, 192, 1, 1)  # an old bundle's extra stage
    B.add_files(bundle, {"state.pt": B.tensor_bytes(state)})
    loaded = load_method(bundle)
    assert np.array_equal(loaded.predict(normals[:1])[0], method.predict(normals[:1])[0])


def test_inference_body_computes_the_plain_body_s_features_and_gradients():
    """Batch norms folded into the convolutions, channels_last: the same function (checked in
    float64, where rounding cannot hide a difference), and the state dict keeps the plain
    body's weights."""
    fe = FeatureExtractor(BackboneConfig(layers=[2, 3])).double()
    keys = set(fe.state_dict())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x.requires_grad_(True)
    plain = fe.body((x - fe.mean) / fe.std)
    (g_plain,) = torch.autograd.grad(sum(m.sum() for m in plain), x)
    fast = fe(x)
    (g_fast,) = torch.autograd.grad(sum(m.sum() for m in fast), x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fe.inference_body().modules())
    for a, b in zip(plain, fast):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10) and b.is_contiguous()
    assert float((g_fast - g_plain).norm() / g_plain.norm()) < 1e-10
    assert set(fe.state_dict()) == keys


def test_inference_body_follows_new_weights():
    """Loading other weights (a bundle's) rebuilds the folded copy."""
    a = FeatureExtractor(BackboneConfig(layers=[2]))
    b = FeatureExtractor(BackboneConfig(layers=[2], weights="none"))
    x = torch.rand(1, 3, 32, 32)
    before = b(x)[0]
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(before, b(x)[0])
    assert torch.allclose(b(x)[0], a(x)[0])


def test_inference_body_follows_a_move_or_a_cast():
    """.to() / .double() rebuild the folded copy: it computes in the new dtype, and it is built
    once, not on every forward pass nor on a .to() that changes nothing."""
    fe = FeatureExtractor(BackboneConfig(layers=[2]))
    x = torch.rand(1, 3, 32, 32)
    fe(x)
    first = fe.inference_body()
    assert fe.inference_body() is first  # kept between passes
    fe.to("cpu").float()  # moves nothing: F2PAD calls method.to(device) for every frame
    assert fe.inference_body() is first
    fe.double()
    assert fe.inference_body() is not first
    assert fe(x.double())[0].dtype == torch.float64


def test_a_body_the_folding_would_change_runs_unfolded(monkeypatch, caplog):
    """If the folding pairs a batch norm with the wrong convolution, the plain body is used."""
    import inspectd.features.backbone as backbone

    def scramble(module):  # stands for a wrong pairing: the copy computes something else
        next(module.parameters()).data.mul_(3.0)
    monkeypatch.setattr(backbone, "fold_batch_norms", scramble)
    fe = FeatureExtractor(BackboneConfig(layers=[2]))
    assert fe.inference_body() is fe.body
    assert "running it unfolded" in caplog.text
