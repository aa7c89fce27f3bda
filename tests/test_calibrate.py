import cv2
import numpy as np
import pytest

from alnett_edge.calibrate.ptq import calibrate, onnx_zero_points
from alnett_edge.calibrate.reader import (
    MIN_IMAGES,
    OrtCalibrationReader,
    calibration_files,
    litert_representative_dataset,
    load_calibration_set,
)
from alnett_edge.tensorrt.calibrator import BatchFeeder, CalibrationCache, TensorRTUnavailable, make_tensorrt_calibrator
from alnett_edge.train.dataset import CellDataset
from alnett_edge.data.preprocess import load_image, preprocess
from alnett_edge.errors import ConfigError, DataError
from alnett_edge.model.to_onnx import export_onnx
from alnett_edge.model import load_checkpoint


@pytest.fixture(scope="module")
def fp32(trained, tmp_path_factory):
    cfg, result = trained
    model, card = load_checkpoint(result.best)
    path = export_onnx(model, card, tmp_path_factory.mktemp("onnx") / "fp32.onnx")
    return path, card, cfg


def test_reader_batches_equal_the_training_preprocessing(fp32):
    _, card, cfg = fp32
    calib = load_calibration_set(cfg.data + "/fold_0", card, limit=None)
    assert calib.inputs.shape[1:] == (3, 64, 64) and calib.inputs.dtype == np.float32
    # The same images through the training dataset (no augmentation) give the same tensors.
    samples = calibration_files(cfg.data + "/fold_0")
    ds, _ = CellDataset.from_samples(samples, card.input)
    for i in (0, 5, len(ds) - 1):
        assert np.array_equal(calib.inputs[i], ds[i][0].numpy())
        assert np.array_equal(calib.inputs[i], preprocess(load_image(calib.files[i]), card.input))
    assert calib.patients and any(f"below {MIN_IMAGES}" in w or str(MIN_IMAGES) in w for w in calib.warnings)


def test_backend_adapters(fp32):
    _, card, cfg = fp32
    calib = load_calibration_set(cfg.data + "/fold_1", card, limit=20)
    reader = OrtCalibrationReader(calib, "input", batch_size=8)
    sizes = []
    while (item := reader.get_next()) is not None:
        sizes.append(item["input"].shape[0])
    assert sizes == [8, 8, 4]
    reader.rewind()
    assert reader.get_next()["input"].shape == (8, 3, 64, 64)
    rep = list(litert_representative_dataset(calib, "NHWC")())
    assert len(rep) == 20 and rep[0][0].shape == (1, 64, 64, 3)
    assert np.array_equal(rep[3][0][0], calib.inputs[3].transpose(1, 2, 0))
    feeder = BatchFeeder(calib, 6)
    got = []
    while (b := feeder.next_batch()) is not None:
        got.append(b.shape[0])
        assert b.flags["C_CONTIGUOUS"] and b.dtype == np.float32
    assert got == [6, 6, 6] and feeder.nbytes == 6 * 3 * 64 * 64 * 4
    with pytest.raises(ConfigError):
        BatchFeeder(calib, 0)


def test_tensorrt_cache_and_missing_tensorrt(fp32, tmp_path):
    _, card, cfg = fp32
    cache = CalibrationCache(tmp_path / "calib.cache")
    assert cache.read() is None
    cache.write(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    assert cache.read().startswith(b"TRT-8601")
    calib = load_calibration_set(cfg.data + "/fold_1", card, limit=8)
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        make_tensorrt_calibrator(calib, tmp_path / "c.cache")


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_calibrate_symmetric_is_tensorrt_ready_and_side_by_side(fp32, tmp_path, method):
    path, card, cfg = fp32
    rep = calibrate(path, cfg.data + "/fold_0", tmp_path / "q.onnx", method=method, scheme="symmetric",
                    eval_data=cfg.data + "/fold_2")
    assert rep["zero_points"] == [0] and set(onnx_zero_points(tmp_path / "q.onnx")) == {0}
    rows = rep["eval"]["rows"]
    fp, q = rows["fp32 (ORT)"], rows[f"PTQ int8 {method} (ORT)"]
    assert q["agreement"] >= 0.9 and abs(q["accuracy"] - fp["accuracy"]) < 0.1
    assert rep["patient_overlap"] == []
    assert (tmp_path / "q.report.json").is_file()


def test_calibrate_asymmetric_has_nonzero_zero_points(fp32, tmp_path):
    path, _, cfg = fp32
    rep = calibrate(path, cfg.data + "/fold_0", tmp_path / "a.onnx", scheme="asymmetric", num=50)
    assert any(z != 0 for z in rep["zero_points"]) and rep["calibration_images"] == 50


def test_calibration_input_errors(fp32, tmp_path):
    path, card, cfg = fp32
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no calibration images"):
        calibrate(path, tmp_path / "empty")
    gray = tmp_path / "gray"
    gray.mkdir()
    cv2.imwrite(str(gray / "g.png"), np.full((96, 96), 120, np.uint8))
    with pytest.raises(DataError, match=r"g.png has 1 channel\(s\)"):
        calibrate(path, gray)
    rgba = tmp_path / "rgba"
    rgba.mkdir()
    cv2.imwrite(str(rgba / "a.png"), np.full((96, 96, 4), 120, np.uint8))
    with pytest.raises(DataError, match="4 channel"):
        calibrate(path, rgba)
    big = tmp_path / "big"
    big.mkdir()
    cv2.imwrite(str(big / "frame.png"), np.full((480, 640, 3), 120, np.uint8))
    with pytest.raises(DataError, match=r"480x640, outside the sides .* \(96 px; 64-144 accepted"):
        calibrate(path, big)
    rep = calibrate(path, big, tmp_path / "ok.onnx", num=1, allow_any_size=True)
    assert rep["calibration_images"] == 1 and rep["warnings"]
    with pytest.raises(DataError, match="both the calibration and the evaluation"):
        calibrate(path, cfg.data + "/fold_0", eval_data=cfg.data + "/fold_0")
    with pytest.raises(ConfigError, match="unknown calibration method"):
        calibrate(path, cfg.data + "/fold_0", tmp_path / "m.onnx", method="mse")
    with pytest.raises(DataError, match="not found"):
        calibrate(path, tmp_path / "nope")
