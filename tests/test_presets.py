"""Presets: the official parameter counts, checked on real models where they fit in a test."""

import gc

import keras
import pytest

from keras_sit import SiT
from keras_sit.presets import PRESETS, parameter_count

OFFICIAL = dict(input_shape=(32, 32, 4), num_classes=1000, learn_sigma=True)

# The official table : sum(numel) with the position table, 256 px latents.
OFFICIAL_PARAMETERS = {
    "SiT-S/2": 32_963_360,
    "SiT-S/4": 32_945_024,
    "SiT-S/8": 33_148_160,
    "SiT-B/2": 130_512_416,
    "SiT-B/4": 130_475_648,
    "SiT-B/8": 130_881_536,
    "SiT-L/2": 458_102_816,
    "SiT-L/4": 458_053_760,
    "SiT-L/8": 458_594_816,
    "SiT-XL/2": 675_129_632,
    "SiT-XL/4": 675_074_432,
    "SiT-XL/8": 675_683_072,
}


def test_the_twelve_official_configurations():
    assert set(PRESETS) == set(OFFICIAL_PARAMETERS)
    assert PRESETS["SiT-XL/2"] == dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2)
    assert PRESETS["SiT-B/4"] == dict(depth=12, hidden_size=768, num_heads=12, patch_size=4)


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_parameter_count_matches_the_official_table(name):
    assert parameter_count(name, **OFFICIAL) == OFFICIAL_PARAMETERS[name]


def test_parameter_count_at_512_px():
    assert parameter_count("SiT-XL/2", (64, 64, 4), 1000, True) == 676_014_368


@pytest.mark.parametrize("name", ["SiT-S/2", "SiT-S/4", "SiT-S/8"])
def test_built_preset_has_the_official_count(name):
    """Real models: proves `parameter_count` describes what `SiT` builds."""
    model = SiT.from_preset(name, **OFFICIAL, seed=0)
    assert {k: model.backbone.get_config()[k] for k in PRESETS[name]} == PRESETS[name]
    assert model.count_params() == OFFICIAL_PARAMETERS[name]
    del model
    gc.collect()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(input_shape=(8, 8, 3), num_classes=5, learn_sigma=True),
        dict(input_shape=(8, 4, 1), num_classes=5, class_dropout_prob=0.0),  # no null row, not square
        dict(input_shape=(8, 8, 2), mlp_ratio=2.0),  # unconditional
        dict(input_dim=16, num_classes=3, learn_sigma=True),
    ],
)
def test_parameter_count_matches_small_built_variants(overrides):
    """The formula's other branches, on shrunk presets (overrides win over the preset)."""
    small = dict(depth=2, hidden_size=32, num_heads=4, patch_size=2, seed=0)
    model = SiT.from_preset("SiT-XL/2", **small, **overrides)
    assert model.backbone.depth == 2 and model.backbone.hidden_size == 32
    assert parameter_count("SiT-XL/2", **small, **overrides) == model.count_params()


def test_num_layers_is_depth():
    model = SiT.from_preset("SiT-S/8", num_layers=1, hidden_size=32, num_heads=2, input_shape=(8, 8, 1), seed=0)
    assert model.backbone.depth == 1
    with pytest.raises(ValueError, match="alias"):
        SiT.from_preset("SiT-S/8", num_layers=1, depth=2, input_shape=(8, 8, 1))


def test_bad_names_and_missing_shape():
    with pytest.raises(ValueError, match="SiT-XL/2"):  # lists the valid names
        SiT.from_preset("SiT-M/2", input_shape=(32, 32, 4))
    with pytest.raises(ValueError, match="name"):
        parameter_count("sit-s/2", (32, 32, 4))
    with pytest.raises(ValueError, match="input_shape"):
        SiT.from_preset("SiT-S/2")
    with pytest.raises(ValueError, match="divisible"):
        parameter_count("SiT-S/8", (36, 36, 4))


def test_from_preset_builds_the_class_it_is_called_on():
    @keras.saving.register_keras_serializable(package="test_presets")
    class TaggedSiT(SiT):
        """A user's subclass: `from_preset` must build it, not a plain `SiT`."""

    model = TaggedSiT.from_preset("SiT-S/8", depth=1, input_shape=(8, 8, 1), seed=0)
    assert type(model) is TaggedSiT
    assert model.backbone.depth == 1 and model.backbone.hidden_size == PRESETS["SiT-S/8"]["hidden_size"]
    assert type(SiT.from_preset("SiT-S/8", depth=1, input_shape=(8, 8, 1), seed=0)) is SiT
