"""The FID Inception network: parity with pytorch-fid's network, its checkpoint keys, refusals, and the
guard against computing features without imported weights.

The reference is `tests/reference_inception.py`, pytorch-fid's network in
plain PyTorch, with every weight and batch-norm statistic re-drawn (so no
layer is an identity and a wrong pool, padding or branch order shows), run
in float64. Its state dict is saved with `torch.save` as the weights file a
user downloads and imported from there.
"""

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keras_sit.convert import import_fid_inception
from keras_sit.convert.inception import export_fid_inception_state_dict
from keras_sit.evaluation import FIDInception, frechet_distance, inception_preprocess
from tests.conftest import to_numpy
from tests.reference_inception import FIDInceptionReference
from tests.test_convert import Payload

TOLERANCE = 1e-4  # of the reference's largest magnitude
# torchvision's Inception3(num_classes=1008, aux_logits=False): 94 conv blocks of a conv weight and four
# batch-norm entries (plus `num_batches_tracked` in a live module's state dict), then fc.weight and fc.bias.
CONV_BLOCKS = 94
NUM_WEIGHTS = 5 * CONV_BLOCKS + 2
SPOT_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6d.branch1x1.conv.weight": (192, 768, 1, 1),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.weight": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def random_reference(seed=0):
    """The reference with every weight and statistic drawn so activations stay of order one through the network."""
    torch.manual_seed(seed)
    reference = FIDInceptionReference().eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, (2.0 / module.weight[0].numel()) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, module.weight.shape[1] ** -0.5)
                module.bias.normal_(0.0, 1.0)
    return reference


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """`(float64 reference, path of its float32 weights file)`."""
    reference = random_reference()
    path = tmp_path_factory.mktemp("fid_inception") / "pt_inception-2015-12-05-random.pth"
    torch.save(reference.state_dict(), path)
    return reference.double(), path


@pytest.fixture(scope="module")
def model(checkpoint):
    return import_fid_inception(checkpoint[1])


def relative_error(actual, expected):
    return np.abs(to_numpy(actual) - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize("size", [(64, 64), (299, 299)])
def test_features_match_pytorch_fid(checkpoint, model, size):
    reference, _ = checkpoint
    images = np.random.default_rng(size[0]).integers(0, 256, size=(2, *size, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0)  # float32 in, as pytorch-fid
    features = model.features(images, batch_size=1)  # one image at a time: the network sees one shape throughout
    shapes = {"pool": (2, 2048), "logits": (2, 1008), "logits_unbiased": (2, 1008), "spatial": (2, 7 * 17 * 17)}
    assert set(features) == set(shapes)
    for name, shape in shapes.items():
        assert tuple(features[name].shape) == shape, name
        assert keras.backend.standardize_dtype(features[name].dtype) == "float32", name
        error = relative_error(features[name], expected[name].numpy())
        print(f"{keras.backend.backend()} {size} {name}: relative error {error:.2e}")
        assert error < TOLERANCE, (name, error)


@pytest.mark.parametrize("size", [(64, 64), (32, 48), (512, 400), (299, 299)])
def test_preprocess_is_pytorch_fid_transform(size):
    images = np.random.default_rng(0).integers(0, 256, size=(1, *size, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0  # float32, as pytorch-fid's images
    expected = (2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1).permute(0, 2, 3, 1)
    np.testing.assert_allclose(to_numpy(inception_preprocess(images)), expected.numpy(), atol=1e-5)


def test_checkpoint_keys_are_pytorch_fid(checkpoint, model):
    reference, _ = checkpoint
    state = reference.state_dict()
    weights = {key: value for key, value in state.items() if not key.endswith(".num_batches_tracked")}
    assert len(state) == NUM_WEIGHTS + CONV_BLOCKS and len(weights) == NUM_WEIGHTS
    for key, shape in SPOT_SHAPES.items():
        assert tuple(weights[key].shape) == shape, key

    exported = export_fid_inception_state_dict(model)
    assert list(exported) == list(weights)  # same keys, same order
    for key, value in weights.items():
        np.testing.assert_array_equal(exported[key], value.float().numpy(), err_msg=key)
    fresh = FIDInceptionReference()
    fresh.load_state_dict({key: torch.from_numpy(value) for key, value in exported.items()}, strict=True)


def test_bad_checkpoints_are_refused(checkpoint, model, tmp_path):
    state = export_fid_inception_state_dict(model)
    with pytest.raises(ValueError, match=r"Mixed_6d\.branch1x1\.bn\.running_var"):
        import_fid_inception({key: value for key, value in state.items() if key != "Mixed_6d.branch1x1.bn.running_var"})
    with pytest.raises(ValueError, match=r"AuxLogits\.fc\.weight"):
        import_fid_inception({**state, "AuxLogits.fc.weight": np.zeros((1008, 768), "float32")})
    with pytest.raises(ValueError, match=r"fc\.weight \(1000, 2048\)"):
        import_fid_inception({**state, "fc.weight": np.zeros((1000, 2048), "float32")})
    with pytest.raises(TypeError, match="path_or_state"):
        import_fid_inception([state])

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pth"
    torch.save({**state, "extra": Payload(marker)}, evil)
    with pytest.raises(ValueError, match="Refused"):
        import_fid_inception(evil)
    assert not marker.exists()


def test_inputs_are_checked(model):
    with pytest.raises(ValueError, match="images"):
        model.features(np.zeros((1, 64, 64, 4), "uint8"))
    with pytest.raises(ValueError, match="images"):
        model.features(np.zeros((64, 64, 3), "uint8"))
    with pytest.raises(TypeError, match="images"):
        model.features(np.zeros((1, 64, 64, 3), bool))
    with pytest.raises(ValueError, match="batch_size"):
        model.features(np.zeros((1, 64, 64, 3), "uint8"), batch_size=0)


def smooth_images(count, size=32):
    """Photo-like images: smooth colour gradients, one per image."""
    y, x = np.mgrid[0:size, 0:size] / size
    images = [np.stack([x * (i + 1), y, (x + y) / 2 * (count - i) / count], axis=-1) for i in range(count)]
    return (np.clip(np.stack(images), 0, 1) * 255).astype(np.uint8)


def test_a_network_without_imported_weights_is_refused():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    fresh = FIDInception()
    assert not fresh.holds_imported_weights and not fresh.allow_random_weights
    # Keras' default initial weights: no layer starts at zero, so nothing downstream is silently constant.
    block = fresh.Mixed_6d.branch1x1
    assert np.abs(to_numpy(block.conv.kernel)).max() > 0 and np.abs(to_numpy(fresh.fc.kernel)).max() > 0
    np.testing.assert_array_equal(to_numpy(block.bn.gamma), 1.0)
    np.testing.assert_array_equal(to_numpy(block.bn.moving_variance), 1.0)
    for compute in (fresh.features, fresh, lambda x: fresh.predict(x, verbose=0)):
        with pytest.raises(ValueError, match=r"import_fid_inception.*allow_random_weights=True"):
            compute(images)
    with pytest.raises(TypeError, match="allow_random_weights"):
        FIDInception(allow_random_weights=1)


def test_random_weights_on_request_give_features_that_tell_images_apart():
    model = FIDInception(allow_random_weights=True)
    assert model.get_config()["allow_random_weights"] is True and not model.holds_imported_weights
    noise = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    photos = smooth_images(3)
    noise_features = to_numpy(model.features(noise)["pool"]).astype(np.float64)
    photo_features = to_numpy(model.features(photos)["pool"]).astype(np.float64)
    assert np.abs(noise_features).max() > 0 and np.abs(photo_features).max() > 0
    assert np.abs(noise_features - photo_features).max() > 1e-3 * np.abs(noise_features).max()
    fid = frechet_distance(noise_features.mean(0), np.cov(noise_features, rowvar=False),
                           photo_features.mean(0), np.cov(photo_features, rowvar=False))  # fmt: skip
    assert fid > 0


def test_serialization_and_dtype(model, tmp_path):
    assert model.holds_imported_weights and not model.allow_random_weights  # import_fid_inception marks it
    path = tmp_path / "fid_inception.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, FIDInception)
    for original, restored in zip(model.weights, loaded.weights):
        assert original.path == restored.path
        np.testing.assert_array_equal(to_numpy(original), to_numpy(restored), err_msg=original.path)
    # The mark travels with the weights: the loaded copies compute features.
    assert loaded.holds_imported_weights
    model.save_weights(tmp_path / "fid_inception.weights.h5")
    reloaded = FIDInception()
    reloaded.load_weights(tmp_path / "fid_inception.weights.h5")
    assert reloaded.holds_imported_weights
    image = smooth_images(1)
    expected = to_numpy(model.features(image)["pool"])
    np.testing.assert_array_equal(to_numpy(loaded.features(image)["pool"]), expected)
    np.testing.assert_array_equal(to_numpy(reloaded.features(image)["pool"]), expected)

    mixed = FIDInception(dtype="mixed_bfloat16")
    assert mixed.Mixed_7c.branch_pool.conv.compute_dtype == "bfloat16"
    assert mixed.Mixed_7c.branch_pool.bn.variable_dtype == "float32"
    assert mixed.fc.compute_dtype == "float32"  # the classifier and the features stay float32
