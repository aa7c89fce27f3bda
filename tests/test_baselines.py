"""The torchvision baselines in ALNett's path (issue 35): built from the card, folded, pruned, trained,
quantised and exported like ALNett; --weights loads a torchvision state dict or says why not."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, one_line_error

from alnett_edge.compress.prune import PruneConfig, prune
from alnett_edge.errors import CompressionError, ConfigError
from alnett_edge.model import load_checkpoint, new_card, profile_model, save_checkpoint
from alnett_edge.model.alnett import fold_batchnorm
from alnett_edge.model.baselines import BASELINES, Baseline, load_torchvision_weights
from alnett_edge.model.ensemble import arch_of, model_from_arch
from alnett_edge.model.registry import create_model, list_models


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_is_rebuilt_from_its_card_and_folds_exactly(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    assert name in list_models() and model.head.out_features == 3
    size = model.min_input_size()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    arch = arch_of(model)
    assert arch == {"baseline": name, "num_classes": 3}  # torchvision's own shapes: nothing to record
    again = model_from_arch(json.loads(json.dumps(arch)))
    again.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), y)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) or name in ("vgg16", "alexnet")
        assert torch.allclose(folded(x), y, atol=1e-4 * (1 + y.abs().max().item()))
    with pytest.raises(ConfigError, match="apply to ALNett only"):
        create_model(name, fusion="sum")


def test_a_pruned_baseline_is_smaller_and_rebuilt_from_its_card(tmp_path):
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small").eval()
    result = prune(model, 64, PruneConfig(ratio=0.3, round_to=8, budget=None))
    pruned = result.model.eval()
    assert 0.6 <= result.mac_ratio <= 0.8 and result.params_after < result.params_before
    assert len(set(result.channels_after["convs"])) > 1 and result.channels_after != result.channels_before
    path = save_checkpoint(tmp_path / "p.safetensors", pruned, new_card(pruned, "mobilenet_v3_small", 64))
    back, card = load_checkpoint(path)
    assert isinstance(back, Baseline) and card.arch["shapes"] and card.variant == "mobilenet_v3_small"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), pruned(x))
    assert profile_model(back, 64).macs == result.macs_after
    # ShuffleNetV2's channel shuffle reshapes the channel axis: torch-pruning cannot follow it
    with pytest.raises(CompressionError, match="cannot build shufflenet_v2's dependency graph"):
        prune(create_model("shufflenet_v2"), 64, PruneConfig(ratio=0.3, budget=None))


def test_a_baseline_trains_quantises_and_exports_through_every_format(easy_cells, tmp_path):
    from alnett_edge.export.exporter import export_bundle

    res = cli("train", "--data", easy_cells, "-m", "mobilenet_v3_small", "--input-size", 64, "--epochs", 1,
              "--workers", 0, "--out", tmp_path / "t")
    assert res.exit_code == 0, res.output
    best = tmp_path / "t" / "best.safetensors"
    model, card = load_checkpoint(best)
    assert isinstance(model, Baseline) and card.variant == "mobilenet_v3_small" and card.input.size == (64, 64)
    res = cli("qat", best, "--data", easy_cells, "--scheme", "asymmetric", "--epochs", 1, "--out", tmp_path / "q")
    assert res.exit_code == 0, res.output
    qat = tmp_path / "q" / "qat-asymmetric.safetensors"
    lenient = {"allow_drop": 100.0, "min_agreement": 0.0}  # one epoch: near-tie cells; the path is under test
    built = {}
    for target, extra in (("x86-cpu", {}), ("rpi5", {"qat": qat}), ("jetson", {})):
        m = export_bundle(best, target, tmp_path / target, **extra, **lenient)
        built[target] = {(a["format"], a["precision"]) for a in m["artifacts"]}
        for a in m["artifacts"]:
            assert (tmp_path / target / a["file"]).is_file()
    assert ("onnx", "fp32") in built["x86-cpu"]
    assert ("tflite", "int8") in built["rpi5"] and ("onnx", "fp32") in built["rpi5"]
    assert ("tensorrt", "int8") in built["jetson"]
    res = cli("predict", tmp_path / "rpi5", easy_cells / "fold_0", "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) > 10


def test_weights_load_a_torchvision_state_dict_or_say_why_not(easy_cells, tmp_path):
    import torchvision.models as tvm

    torch.manual_seed(0)
    imagenet = tvm.mobilenet_v3_small(weights=None)  # 1000 classes, as a downloaded file would be
    torch.save(imagenet.state_dict(), tmp_path / "mnv3.pth")
    model = create_model("mobilenet_v3_small")
    info = load_torchvision_weights(model, tmp_path / "mnv3.pth")
    assert info["head_skipped"] == 2 and model.head.out_features == 2
    assert torch.equal(model.net.features[0][0].weight, imagenet.features[0][0].weight)
    torch.save(tvm.shufflenet_v2_x1_0(weights=None).state_dict(), tmp_path / "shuffle.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    base = ("train", "--data", easy_cells, "--epochs", 1, "--workers", 0, "--out", tmp_path / "t")
    one_line_error(cli(*base, "-m", "mobilenet_v3_small", "--weights", tmp_path / "shuffle.pth"),
                   "is not mobilenet_v3_small's")
    one_line_error(cli(*base, "-m", "mobilenet_v3_small", "--weights", tmp_path / "junk.pth"),
                   "is not a readable state dict")
    one_line_error(cli(*base, "-m", "alnett-tiny", "--weights", tmp_path / "mnv3.pth"), "starts from a checkpoint")
    one_line_error(cli(*base, "-m", "resnet18"), "unknown model 'resnet18'", "mobilenet_v3_small")
