import json

import numpy as np
import pytest
import torch

from alnett_edge.compress.prune import PruneConfig, prune, prune_checkpoint
from alnett_edge.compress.qat import (
    activation_zero_points,
    load_qat_checkpoint,
    weight_ranges,
)
from alnett_edge.errors import CompressionError, ConfigError
from alnett_edge.model import create_model, load_checkpoint, new_card, profile_model, save_checkpoint


@pytest.mark.parametrize("importance", ["l1", "l2", "bn", "taylor"])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_uniform_pruning_hits_the_mac_ratio_and_shrinks_every_cluster(importance, ratio):
    torch.manual_seed(0)
    model = create_model("alnett-s", fusion="concat")  # the concatenated branches are the hard case
    x = torch.randn(4, 3, 224, 224)
    batches = lambda: iter([(x, torch.tensor([0, 1, 0, 1]))])  # noqa: E731
    before = [layer.pointwise.out_channels for layer in model.clusters]
    result = prune(model, 224, PruneConfig(ratio=ratio, importance=importance, round_to=None), batches=batches)
    model = result.model
    assert abs(result.mac_ratio - (1 - ratio)) <= 0.1 * (1 - ratio)
    after = [layer.pointwise.out_channels for layer in model.clusters]
    assert all(a < b for a, b in zip(after, before)), (before, after)  # the concat-group fix works
    # Branches and the pointwise input stay consistent with the pruned input channels.
    for layer in model.clusters:
        c = layer.branches[0].in_channels
        assert all(b.in_channels == b.out_channels == b.groups == c for b in layer.branches)
        assert layer.pointwise.in_channels == 3 * c
    assert model(x).shape == (4, 2)
    assert profile_model(model, 224).macs == result.macs_after


def test_round_to_keeps_aligned_channels_and_leaves_the_input_model_alone():
    model = create_model("alnett-s")
    result = prune(model, 224, PruneConfig(ratio=0.5))  # default: multiples of 16
    assert abs(result.mac_ratio - 0.5) <= 0.05
    ch = result.channels_after
    assert all(c % 16 == 0 for c in [ch["stem"], *ch["clusters"]]), ch
    assert [layer.pointwise.out_channels for layer in model.clusters] == [32, 64, 128, 192, 256]


def test_global_pruning_and_sum_fusion():
    model = create_model("alnett-tiny", fusion="sum")
    result = prune(model, 64, PruneConfig(ratio=0.5, global_pruning=True, round_to=None))
    assert abs(result.mac_ratio - 0.5) <= 0.05
    assert min(result.channels_after["clusters"]) >= 1
    assert result.model(torch.randn(2, 3, 64, 64)).shape == (2, 2)


def test_pruned_model_rebuilt_from_its_card(tmp_path):
    torch.manual_seed(1)
    model = prune(create_model("alnett-tiny"), 64, PruneConfig(ratio=0.5, round_to=None)).model.eval()
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    path = save_checkpoint(tmp_path / "p.safetensors", model, new_card(model, "alnett-tiny"))
    rebuilt, card = load_checkpoint(path)
    assert card.arch["channels"] != [16, 32, 48]
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), ref, atol=1e-6)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2])
def test_bad_ratio(ratio):
    with pytest.raises(ConfigError, match=r"ratio must be in \(0, 1\)"):
        prune(create_model("alnett-tiny"), 64, PruneConfig(ratio=ratio))


def test_unreachable_target_is_an_error():
    with pytest.raises(CompressionError, match="not the .* target"):
        prune(create_model("alnett-tiny"), 64, PruneConfig(ratio=0.99, round_to=None))
    with pytest.raises(CompressionError, match="multiples of 16"):
        prune(create_model("alnett-tiny"), 64, PruneConfig(ratio=0.5))


def test_prune_job_shrinks_exported_files_and_records_the_card(trained, tmp_path):
    cfg, result = trained
    rep = prune_checkpoint(result.best, cfg.data, tmp_path, PruneConfig(ratio=0.5, round_to=None, budget=None),
                           finetune_epochs=1)
    b, a = rep["before"], rep["after"]
    assert 0.45 <= rep["mac_ratio"] <= 0.55
    assert a["onnx_bytes"] < 0.75 * b["onnx_bytes"] and a["checkpoint_bytes"] < 0.75 * b["checkpoint_bytes"]
    assert a["params"] < b["params"] and a["ort_b1_p50_ms"] > 0
    _, card = load_checkpoint(rep["pruned"])
    assert card.compression["pruning"]["macs_after"] == a["macs"]
    assert card.arch["channels"] == card.compression["pruning"]["channels_after"]["clusters"]
    assert abs(a["accuracy"] - b["accuracy"]) < 0.2  # fine-tuned, not destroyed
    saved = json.loads((tmp_path / "prune_report.json").read_text())
    assert saved["after"]["macs"] == a["macs"]


def test_prune_budget_undoes_the_stage_that_breaks_it(trained, tmp_path):
    """Half the MACs in two stages without fine-tuning: with no budget both stages stand; a budget between
    the two stages' losses keeps stage 1 and undoes stage 2; a zero budget leaves no pruned model."""
    from alnett_edge.compress.report import metrics_row
    from alnett_edge.train.dataset import load_split_datasets

    cfg, result = trained
    model, card = load_checkpoint(result.best)
    sd = load_split_datasets(cfg.data, card.input, cfg.layout, cfg.labels_csv, cfg.val_fraction, cfg.seed, cfg.val_fold)
    score = lambda m: metrics_row(m, sd.val, card)[0]["accuracy"]  # noqa: E731
    base = score(model)
    free = prune(model, 64, PruneConfig(ratio=0.5, steps=2, round_to=None, budget=None), score=score)
    assert free.pruned and free.stopped is None and [s["stage"] for s in free.stages] == [1, 2]
    drop1, drop2 = (100 * (base - s["accuracy"]) for s in free.stages)
    assert drop2 > drop1  # the second stage costs more: a budget between the two keeps stage 1 only
    kept = prune(model, 64, PruneConfig(ratio=0.5, steps=2, round_to=None, budget=(drop1 + drop2) / 2),
                 score=score)
    assert kept.pruned and [s["stage"] for s in kept.stages] == [1]
    assert kept.macs_after == free.stages[0]["macs"] and kept.stopped["stage"] == 2
    assert kept.stopped["drop_points"] == pytest.approx(drop2, abs=0.01) and kept.stopped["baseline_accuracy"] == base
    assert score(kept.model) == free.stages[0]["accuracy"]  # the stage-1 model itself, not stage 2's
    # without a score there is nothing to keep a budget against
    assert prune(model, 64, PruneConfig(ratio=0.5, steps=2, round_to=None, budget=0.0)).stopped is None
    rep = prune_checkpoint(result.best, cfg.data, tmp_path, PruneConfig(ratio=0.5, round_to=None, budget=0.0),
                           finetune_epochs=0)
    assert rep["pruned"] is None and rep["after"] is None and rep["stopped"]["stage"] == 1
    assert not (tmp_path / "pruned.safetensors").exists()
    assert json.loads((tmp_path / "prune_report.json").read_text())["stopped"]["drop_points"] > 0
    with pytest.raises(ConfigError, match="--budget is in accuracy points"):
        prune(model, 64, PruneConfig(budget=-1.0))


@pytest.fixture(scope="module")
def qat_symmetric(qat_runs):
    return load_qat_checkpoint(qat_runs["symmetric"]["qat"])


def test_qat_symmetric_has_zero_point_zero_and_int8_weights(qat_runs, qat_symmetric):
    rep = qat_runs["symmetric"]
    assert rep["activation_zero_points"] == [0]
    model, card = qat_symmetric
    assert card.quantization["scheme"] == "symmetric" and card.quantization["method"] == "qat"
    zps = activation_zero_points(model)
    assert len(zps) > 10 and set(zps) == {0}
    ranges = weight_ranges(model)
    assert ranges and min(lo for lo, _ in ranges) >= -127 and max(hi for _, hi in ranges) <= 127
    v = rep["val"]
    assert v["int8"]["accuracy"] > 0.75 and v["agreement"] > 0.9
    # the export gate's rule, applied by QAT on the validation split: its verdict follows its figures,
    # which leave out only the changes on cells both models hold below the daemon's min_confidence
    g = rep["gate_on_val"]
    assert g["agreement"] == v["agreement"] >= v["top1_agreement"] and g["changed"]["counted"] <= g["changed"]["decisions"]
    assert round(1 - g["changed"]["decisions"] / v["n"], 6) == round(v["top1_agreement"], 6)
    if max(g["counted_drop_points"].values()) > 1.0 + 1e-9 or g["agreement"] < 0.99:
        assert not g["passed"] and g["failures"]
    else:
        assert all("calibration" in f for f in g["failures"])


def test_qat_asymmetric_and_checkpoint_roundtrip(qat_runs, trained):
    cfg, _ = trained
    rep = qat_runs["asymmetric"]
    assert any(z != 0 for z in rep["activation_zero_points"])
    model, card = load_qat_checkpoint(rep["qat"])
    # The reloaded model reproduces the reported int8 validation metrics exactly.
    from alnett_edge.compress.report import metrics_row
    from alnett_edge.train.dataset import load_split_datasets

    sd = load_split_datasets(cfg.data, card.input, seed=cfg.seed)
    metrics, _ = metrics_row(model, sd.val, card)
    assert metrics == pytest.approx(rep["val"]["int8"])
    # the int8 model's own temperature, refitted on the validation cells (QAT changes the logits)
    assert card.calibration["n"] == len(sd.val) and card.temperature == card.calibration["temperature"]
    assert card.calibration["nll_after"] <= card.calibration["nll_before"] + 1e-6


def test_qat_model_exports_to_qdq_onnx_that_runs(qat_symmetric, qat_sym_onnx, tmp_path):
    from alnett_edge.calibrate.int8_safety import check_saturation, fit_weights_to_int16_pairs
    from alnett_edge.runtime.ort_backend import open_session

    model, _ = qat_symmetric
    path = qat_sym_onnx
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x).numpy()
    # The exact int8 arithmetic (the QDQ graph unfused) is what the QAT model computes, on any CPU.
    # This CPU's fused kernels are not compared here: with 8-bit weights an x86 CPU without VNNI may
    # saturate (see test_int8.py, which checks the kernels against an emulation of each arithmetic).
    got = open_session(path, unfused=True).run(None, {"input": x.numpy()})[0]
    assert np.argmax(got, 1).tolist() == np.argmax(ref, 1).tolist()
    assert np.abs(got - ref).max() < 0.1
    proto = __import__("onnx").load(str(path))
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {n.op_type for n in proto.graph.node}
    # with its GEMM weights fitted to int16 pairs, the fused kernels of every x86 CPU compute the same
    assert fit_weights_to_int16_pairs(proto) > 0 and all(c.safe for c in check_saturation(proto))
    (tmp_path / "q7.onnx").write_bytes(proto.SerializeToString())
    fused = open_session(tmp_path / "q7.onnx").run(None, {"input": x.numpy()})[0]
    exact = open_session(tmp_path / "q7.onnx", unfused=True).run(None, {"input": x.numpy()})[0]
    assert np.abs(fused - exact).max() < 0.05 and np.abs(exact - ref).max() < 0.2


def test_quantized_checkpoints_are_refused_where_fp32_is_needed(qat_runs, trained, tmp_path):
    cfg, result = trained
    from alnett_edge.errors import CheckpointError

    with pytest.raises(CheckpointError, match="is an int8 QAT checkpoint"):
        load_checkpoint(qat_runs["symmetric"]["qat"])
    with pytest.raises(CheckpointError, match="not a QAT checkpoint"):
        load_qat_checkpoint(result.best)


def test_batchnorm_folds_into_the_convolutions_with_the_same_function():
    from alnett_edge.model.alnett import fold_batchnorm

    torch.manual_seed(3)
    model = create_model("alnett-tiny").eval()
    for m in model.modules():  # statistics a trained model would have, not the init's 0/1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.2, 3.0), m.weight.data.uniform_(0.5, 2)
    folded = fold_batchnorm(model)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the input is left alone
    assert folded.stem[0].bias is not None and all(c.pointwise.bias is not None for c in folded.clusters)


def test_qat_trains_the_folded_graph_and_old_unfolded_checkpoints_still_load(qat_runs, trained, tmp_path):
    from alnett_edge.compress.qat import BN_FOLDED, load_qat_prepared, prepare_qat, save_qat_checkpoint
    from alnett_edge.model.checkpoint import read_card

    card = read_card(qat_runs["asymmetric"]["qat"])
    assert card.quantization["batchnorm"] == BN_FOLDED
    prepared, _ = load_qat_prepared(qat_runs["asymmetric"]["qat"])
    assert not any("batch_norm" in str(n.target) for n in prepared.graph.nodes)
    # a checkpoint from before the fold (BN in the prepared graph, no "batchnorm" in its card)
    model, fp32_card = load_checkpoint(trained[1].best)
    old = prepare_qat(model, fp32_card.input.size, "asymmetric", fold_bn=False)
    assert any("batch_norm" in str(n.target) for n in old.graph.nodes)
    from torchao.quantization.pt2e import move_exported_model_to_eval

    move_exported_model_to_eval(old)
    x = torch.randn(4, 3, *fp32_card.input.size)
    old(x)  # observers see data
    ocard = card.copy()
    ocard.quantization = {k: v for k, v in card.quantization.items() if k != "batchnorm"}
    path = save_qat_checkpoint(tmp_path / "old.safetensors", old, ocard)
    again, _ = load_qat_prepared(path)
    with torch.no_grad():  # same state, same input: same output (the observers move alike in both)
        assert torch.allclose(again(x), old(x), atol=1e-5)
