import json

import pytest
import torch
from safetensors.torch import save_file

from alnett_edge.card import ModelCard
from alnett_edge.errors import CheckpointError, ConfigError
from alnett_edge.model import (
    ALNett,
    ALNettConfig,
    config_of,
    create_model,
    get_variant,
    list_variants,
    load_checkpoint,
    new_card,
    profile_model,
    read_card,
    save_checkpoint,
)


@pytest.mark.parametrize("name", ["alnett", "alnett-s", "alnett-tiny"])
def test_variant_forward_backward(name):
    model = create_model(name)
    size = get_variant(name).input_size
    x = torch.randn(2, 3, size, size)
    logits = model(x)
    assert logits.shape == (2, 2)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dilations", [(1,), (1, 2), (1, 2, 3), (1, 3, 5, 7)])
@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_dilation_and_fusion_configs(dilations, fusion):
    model = create_model("alnett-tiny", dilations=dilations, fusion=fusion)
    layer = model.clusters[0]
    assert [b.dilation[0] for b in layer.branches] == list(dilations)
    fused = 8 * len(dilations) if fusion == "concat" else 8
    assert layer.pointwise.in_channels == fused
    out = model(torch.randn(3, 3, 64, 64))
    out.mean().backward()
    assert out.shape == (3, 2)


def test_budgets():
    big = profile_model(create_model("alnett"), 224)
    assert big.macs <= 1.0e9 and big.params <= 3.0e6
    assert big.macs > 0.2e9  # paper scale, not a toy
    small = profile_model(create_model("alnett-s"), 224)
    assert small.macs <= 0.25e9
    assert small.macs < big.macs
    tiny = profile_model(create_model("alnett-tiny"), 64)
    assert tiny.macs <= 0.01e9


def test_profile_counts_by_hand():
    cfg = ALNettConfig(stem_channels=4, channels=(8,), dilations=(1, 2), dropout=0.0)
    prof = profile_model(ALNett(cfg), 16)
    # stem: 8x8 output * 4 ch * 3*3*3; branches: 2 * 8x8*4*9; pointwise 8x8*8*8; head 8*2
    expected = 64 * 4 * 27 + 2 * 64 * 4 * 9 + 64 * 8 * 8 + 8 * 2
    assert prof.macs == expected
    shapes = {layer.name: layer.output_shape for layer in prof.layers}
    assert shapes["clusters.0.pool"] == (1, 8, 4, 4)
    assert prof.params == sum(p.numel() for p in ALNett(cfg).parameters())


def test_unknown_variant_and_bad_config():
    with pytest.raises(ConfigError, match="unknown model 'resnet18'; known: alnett, .*resnet50"):
        create_model("resnet18")
    with pytest.raises(ConfigError, match="fusion"):
        create_model("alnett-tiny", fusion="max")
    with pytest.raises(ConfigError, match="dilations"):
        create_model("alnett-tiny", dilations=(0,))
    assert list_variants() == ["alnett", "alnett-s", "alnett-tiny"]


def test_checkpoint_roundtrip_and_card(tmp_path):
    torch.manual_seed(0)
    model = create_model("alnett-tiny").eval()
    card = new_card(model, "alnett-tiny")
    card.metrics = {"val": {"accuracy": 0.9}}
    path = save_checkpoint(tmp_path / "m.safetensors", model, card)
    loaded, card2 = load_checkpoint(path)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert card2.to_dict() == card.to_dict()
    assert card2.class_names == ("hem", "all") and card2.input.size == (64, 64)
    assert read_card(path).variant == "alnett-tiny"


def test_pruned_shape_rebuilds_from_card(tmp_path):
    """A model whose channel counts differ from its variant's defaults is rebuilt from the card alone."""
    model = ALNett(ALNettConfig(stem_channels=5, channels=(7, 11, 13), dropout=0.1))
    card = new_card(model, "alnett-tiny")
    save_checkpoint(tmp_path / "p.safetensors", model, card)
    loaded, card2 = load_checkpoint(tmp_path / "p.safetensors")
    assert config_of(loaded).channels == (7, 11, 13) and card2.arch["stem_channels"] == 5


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match="no alnett-edge model card"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    # Card says one architecture, weights are another.
    model = create_model("alnett-tiny")
    card = new_card(model, "alnett-tiny")
    card.arch["channels"] = [16, 32, 64]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "mismatch.safetensors"),
              metadata={"alnett_edge.card": card.to_json()})
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "mismatch.safetensors")
    # Truncated file.
    good = save_checkpoint(tmp_path / "good.safetensors", model, new_card(model, "alnett-tiny"))
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_checkpoint(trunc)
    # A pickled torch file is refused, not unpickled.
    torch.save(model.state_dict(), tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "pickled.pt")


def test_card_validation():
    with pytest.raises(CheckpointError, match="schema"):
        ModelCard.from_dict({"schema": 99, "variant": "x", "arch": {}})
    with pytest.raises(CheckpointError, match="malformed"):
        ModelCard.from_dict({"schema": 1})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ModelCard.from_json("{nope")
    d = new_card(create_model("alnett-tiny"), "alnett-tiny").to_dict()
    d["input"]["color_order"] = "CMYK"
    with pytest.raises(CheckpointError, match="colour order"):
        ModelCard.from_dict(json.loads(json.dumps(d)))
    with pytest.raises(ConfigError, match="below"):
        new_card(create_model("alnett"), "alnett", input_size=32)
