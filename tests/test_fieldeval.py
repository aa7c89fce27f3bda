"""``alnett-edge field-eval`` (issue 11's yardstick): the daemon's per-frame path scored on annotated
real frames of two optics, Pascal VOC and YOLO, and synthetic frames whose cells carry labels."""

from __future__ import annotations

import json

import numpy as np

from conftest import BCCD, cli, one_line_error, require_shared

WBC_SMARTPHONE = BCCD.parent / "wbc-smartphone"


def _report(args, tmp_path):
    out = tmp_path / "r.json"
    res = cli("field-eval", *args, "--json", out)
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


def test_field_eval_on_real_bccd_and_smartphone_frames(x86_bundle, tmp_path):
    bccd = require_shared(BCCD)
    r, out = _report([x86_bundle["bundle"], bccd, "--limit", "10", "--um-per-px", "0.075", "--sheet", tmp_path / "sheet.png"],
                     tmp_path)
    assert r["layout"] == "voc" and r["frames"] == 10
    assert (r["true_cells"], r["detections"], r["matched"], r["centroid_recall"]) == (10, 10, 10, 1.0)
    assert r["abstained"].get("cut by frame or field edge") == 3  # the quality gate, before the model
    assert r["optics"] == {"um_per_px": 0.075, "source": "config"}
    assert set(r["stages"]) == {"detect", "crop", "infer"} and "recall" in out
    assert (tmp_path / "sheet.png").stat().st_size > 10_000
    # another microscope: a smartphone on the eyepiece, 100x oil, cells ~20 px across, a black vignette;
    # the pixel size is estimated from the frames' red cells (the frame-fraction detector found 0 of 12)
    phone = require_shared(WBC_SMARTPHONE) / "valid"
    r, _ = _report([x86_bundle["bundle"], "--frames", phone, "--limit", "5"], tmp_path)
    assert r["layout"] == "yolo" and (r["true_cells"], r["detections"], r["matched"]) == (12, 13, 12)
    assert r["optics"]["source"] == "estimated from 5 of the frames" and 0.55 < r["optics"]["um_per_px"] < 0.8


def test_detector_meets_the_target_on_the_smartphone_valid_frames(tmp_path):
    """Issue 11's second set, detector and quality gate alone (no bundle), with the pixel size estimated
    from the frames: tuned on train/, held-out valid/ must reach recall >= 0.90 at precision >= 0.80.
    Before the small-nucleus rule, platelet clumps on red cells held precision at 0.778."""
    r, _ = _report(["--frames", require_shared(WBC_SMARTPHONE) / "valid"], tmp_path)
    assert r["frames"] == 98 and r["true_cells"] == 188
    assert r["recall"] >= 0.90 and r["precision"] >= 0.80, (r["recall"], r["precision"])


def test_field_eval_scores_labelled_synthetic_frames(x86_bundle, tmp_path):
    import cv2

    from alnett_edge.data.synth import synth_smear, voc_xml

    rng = np.random.default_rng(3)
    for i in range(4):
        frame = synth_smear(rng)
        cv2.imwrite(str(tmp_path / f"f{i}.png"), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        (tmp_path / f"f{i}.xml").write_text(voc_xml(f"f{i}.png", frame))
    r, out = _report([x86_bundle["bundle"], tmp_path], tmp_path)
    assert r["true_cells"] >= 4 and r["blast_ratio_true"] is not None and r["matched"] >= 1
    assert r["cells_with_truth_label"] == r["matched"]  # every matched synthetic cell carries its label
    if r["classified"]:
        assert r["blast_ratio_predicted"] is not None and "blast ratio predicted" in out
        est = r["blast_ratio_estimate"]  # every classified cell, low-confidence ones too, edge-weighted
        assert est["cells"] == r["classified"] + r["abstained"].get("low confidence", 0)
        assert "blast ratio estimated" in out and "Miles-Lantuéjoul" in est["method"]


def test_field_eval_errors_are_one_line(x86_bundle, tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    one_line_error(cli("field-eval", x86_bundle["bundle"], tmp_path), "no annotations found")
    (tmp_path / "b.xml").write_text("<annotation><filename>other.jpg</filename></annotation>")
    one_line_error(cli("field-eval", x86_bundle["bundle"], tmp_path), "annotations that do not match the images")
    one_line_error(cli("field-eval", x86_bundle["bundle"], tmp_path / "none"), "annotated frames not found")
    one_line_error(cli("field-eval", x86_bundle["bundle"], tmp_path, "--iou", "2"), "--iou must be in (0, 1]")


def test_field_eval_without_a_bundle_scores_the_detector_alone(tmp_path):
    phone = require_shared(WBC_SMARTPHONE) / "valid"
    r, out = _report([phone, "--limit", "5"], tmp_path)  # `field-eval FRAMES`: no model needed
    assert (r["true_cells"], r["detections"], r["matched"], r["classified"]) == (12, 13, 12, 0)
    assert r["model"].startswith("none") and set(r["stages"]) == {"detect"}


def test_detector_takes_a_second_look_at_a_faintly_stained_field():
    """Issue 32's colour shift at the detector: real all-fields fields with their saturation cut to 0.7
    (a paler stain) or their hue turned lost every whole cell to the absolute B-G thresholds; a field in
    which no whole cell is found and whose brightest violet is faint, or stands little above the
    field's median, is looked at again with the thresholds lowered (at most 1.6x)."""
    from dataclasses import replace

    import cv2

    from alnett_edge.data.preprocess import load_image
    from alnett_edge.vision.detector import CellDetector, DetectorConfig

    root = require_shared(BCCD.parent / "all-fields")
    for name, um in (("Pre/WBC-Malignant-Pre-124.jpg", 0.444), ("Pro/WBC-Malignant-Pro-052.jpg", 0.588)):
        rgb = load_image(root / name, what="field")
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] *= 0.7
        pale = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
        absolute = CellDetector(replace(DetectorConfig(), stain_ref=0), um)
        second = CellDetector(DetectorConfig(), um)
        assert not [c for c in absolute.detect(pale) if not c.touches_border], name
        assert [c for c in second.detect(pale) if not c.touches_border], name
        # as shot, the first look finds cells: the second never runs and the cells are the same
        assert [c.box for c in second.detect(rgb)] == [c.box for c in absolute.detect(rgb)] != []
    # a first look that finds only cells cut by the field's edge is no better than none: the second runs
    rgb = load_image(root / "Pro/WBC-Malignant-Pro-132.jpg", what="field")
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] *= 0.7
    pale = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    first = CellDetector(replace(DetectorConfig(), stain_ref=0), 0.588).detect(pale)
    assert first and all(c.touches_border for c in first)
    assert [c for c in CellDetector(DetectorConfig(), 0.588).detect(pale) if not c.touches_border]
    # a bluish field (its hue turned 10 degrees: lilac red cells raise the median under the nuclei) is
    # bright enough for stain_ref but stands too little above its median: contrast_ref gives it the second look
    for name in ("Pre/WBC-Malignant-Pre-071.jpg", "Pre/WBC-Malignant-Pre-791.jpg"):
        hsv = cv2.cvtColor(load_image(root / name, what="field"), cv2.COLOR_RGB2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + 5) % 180
        turned = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
        assert not CellDetector(replace(DetectorConfig(), contrast_ref=0), 0.444).detect(turned), name
        assert len([c for c in CellDetector(DetectorConfig(), 0.444).detect(turned) if not c.touches_border]) >= 4, name
