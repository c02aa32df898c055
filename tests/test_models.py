"""CNN builders: the tutorial's model layer for layer, every architecture's output, the name lookup."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import ROOT

from pipeline.core.config import ARCHITECTURES, load_params
from pipeline.core.errors import ConfigError
from pipeline.core.models import BUILDERS, build, trainable_params


@pytest.fixture(autouse=True)
def float32_policy():
    """Builders follow the global precision policy; make sure no earlier test left mixed precision on."""
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_baseline_has_the_tutorials_257162_parameters():
    assert trainable_params(build("tutorial_cnn")) == 257_162
    assert trainable_params(build("tutorial_cnn", dropout=0.4)) == 257_162  # dropout adds no weights


def test_baseline_is_the_tutorial_layer_for_layer():
    model = build("tutorial_cnn")
    layers = [(type(layer).__name__, layer.get_config()) for layer in model.layers]
    summary = [
        (name, cfg.get("filters") or cfg.get("units") or cfg.get("pool_size"), cfg.get("activation"))
        for name, cfg in layers
        if name != "InputLayer"
    ]
    assert summary == [
        ("Conv2D", 32, "relu"),
        ("MaxPooling2D", (2, 2), None),
        ("Conv2D", 64, "relu"),
        ("MaxPooling2D", (2, 2), None),
        ("Conv2D", 64, "relu"),
        ("Flatten", None, None),
        ("Dense", 64, "relu"),
        ("Dense", 10, "linear"),  # logits
    ]
    assert model.input_shape == (None, 28, 28, 1)


def test_slim_cnn_is_the_tutorial_with_half_the_28x28_filters():
    def layout(model):
        return [
            (type(layer).__name__, layer.get_config().get("filters") or layer.get_config().get("units")) for layer in model.layers
        ]

    tutorial, slim = layout(build("tutorial_cnn")), layout(build("slim_cnn"))
    assert slim[1] == ("Conv2D", 16) and tutorial[1] == ("Conv2D", 32)
    assert slim[2:] == tutorial[2:]
    assert trainable_params(build("slim_cnn")) == 247_786


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_outputs_ten_logits(architecture):
    model = build(architecture, dropout=0.3)
    x = np.random.default_rng(0).random((5, 28, 28, 1), dtype=np.float32)
    out = model(x, training=False)
    assert tuple(out.shape) == (5, 10)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))
    assert trainable_params(model) > 0


def _layer_types(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers if type(layer).__name__ != "InputLayer"]


def test_wide_bn_cnn_is_wide_cnn_with_batch_norm_after_each_14x14_and_7x7_conv():
    wide, bn = _layer_types(build("wide_cnn")), _layer_types(build("wide_bn_cnn"))
    assert bn.count("BatchNormalization") == 3
    # none at 28x28: the first conv feeds the first pool directly
    assert bn[:2] == wide[:2] == ["Conv2D", "MaxPooling2D"]
    convs = [i for i, t in enumerate(bn) if t == "Conv2D"][1:]
    assert all(bn[i + 1 : i + 3] == ["BatchNormalization", "Activation"] for i in convs)
    assert [t for t in bn if t not in ("BatchNormalization", "Activation")] == wide


@pytest.mark.parametrize(
    ("architecture", "own"), [("tutorial_cnn", 64), ("bn_cnn", 128), ("wide_cnn", 128), ("wide_bn_cnn", 128)]
)
def test_head_sets_the_dense_heads_width_and_zero_keeps_the_architectures_own(architecture, own):
    def units(model):
        return [layer.units for layer in model.layers if type(layer).__name__ == "Dense"]

    assert units(build(architecture)) == [own, 10]
    assert units(build(architecture, head=256)) == [256, 10]


def test_deep_cnn_has_no_dense_head_to_widen():
    assert trainable_params(build("deep_cnn", head=256)) == trainable_params(build("deep_cnn"))


def test_every_variant_in_params_builds():
    params = load_params(ROOT / "params.yaml")
    for name, cfg in params.variants.items():
        assert build(cfg.architecture, cfg.dropout, head=cfg.head).output_shape == (None, 10), name


def test_builders_match_the_architectures_params_accept():
    assert set(BUILDERS) == set(ARCHITECTURES)


def test_unknown_architecture_lists_the_valid_names():
    with pytest.raises(ConfigError, match="unknown architecture 'resnet50'") as err:
        build("resnet50")
    assert all(name in str(err.value) for name in ARCHITECTURES)


def test_mixed_precision_keeps_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build("bn_cnn")
    assert model.layers[1].compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
