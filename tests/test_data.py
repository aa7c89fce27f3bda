import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from alnett_edge.card import InputSpec
from alnett_edge.data.augment import AugmentConfig, augment
from alnett_edge.train.dataset import CellDataset, prepare_samples
from alnett_edge.data.preprocess import load_image, normalize, prepare, preprocess
from alnett_edge.data.sources import (
    Sample,
    class_counts,
    detect_layout,
    load_samples,
    parse_cnmc_name,
    read_prelim_labels,
)
from alnett_edge.data.splits import grouped_stratified_split, make_split, patients_of
from alnett_edge.data.synth import SynthSpec, generate_cnmc_dataset, generate_smears, synth_cell, synth_smear
from alnett_edge.errors import ConfigError, DataError


# --- real C-NMC sample -------------------------------------------------------------------------


def test_real_sample_manifest_and_folders(cnmc_sample):
    by_manifest = load_samples(cnmc_sample)  # auto: manifest.csv
    assert detect_layout(cnmc_sample) == "manifest"
    assert class_counts(by_manifest) == {"all": 37, "hem": 33}
    by_folders = load_samples(cnmc_sample, layout="folders")
    assert class_counts(by_folders) == {"all": 37, "hem": 33}
    # Patient ids parsed from the file names agree with the manifest's column.
    manifest_ids = {s.path.name: s.patient_id for s in by_manifest}
    assert all(manifest_ids[s.path.name] == s.patient_id for s in by_folders)
    assert len(patients_of([s for s in by_folders if s.label == 1])) == 26
    assert len(patients_of([s for s in by_folders if s.label == 0])) == 16
    assert all(s.patient_id.startswith("H") for s in by_folders if s.label == 0)


def test_parse_cnmc_names():
    assert parse_cnmc_name("UID_H10_100_1_hem.bmp") == ("H10", 0)
    assert parse_cnmc_name("UID_57_29_1_all.bmp") == ("57", 1)
    assert parse_cnmc_name("1.bmp") is None


def test_prelim_label_csv(cnmc_sample):
    table = read_prelim_labels(cnmc_sample / "C-NMC_test_prelim_phase_data_labels.csv")
    assert len(table) == 1867
    assert table["1.bmp"] == (1, "57")
    assert table["4.bmp"] == (0, "H49")
    labels = [lbl for lbl, _ in table.values()]
    assert 0 < sum(labels) < len(labels)


def test_prelim_layout_from_real_images(cnmc_sample, tmp_path):
    """Rebuild the official prelim layout (N.bmp + label CSV) from the 10 real prelim cells of the sample."""
    csv_path = cnmc_sample / "C-NMC_test_prelim_phase_data_labels.csv"
    uid_to_new = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            uid_to_new[row["Patient_ID"]] = row["new_names"]
    root = tmp_path / "C-NMC_test_prelim_phase_data"
    root.mkdir()
    expected = {}
    with open(cnmc_sample / "manifest.csv") as f:
        for row in csv.DictReader(f):
            if row["source_split"].startswith("prelim"):
                name = Path(row["filename"]).name
                shutil.copy(cnmc_sample / row["filename"], root / uid_to_new[name])
                expected[uid_to_new[name]] = (row["label"], row["patient_id"])
    assert len(expected) == 10
    shutil.copy(csv_path, tmp_path / csv_path.name)  # beside the image folder, as distributed
    samples = load_samples(root)
    assert detect_layout(root) == "cnmc-prelim"
    assert {s.path.name: (s.label_name, s.patient_id) for s in samples} == expected


# --- synthetic data and the other layouts ------------------------------------------------------


def test_synth_deterministic_and_class_differences():
    a = synth_cell(np.random.default_rng([1, 2]), 1, 160, 0.3)
    b = synth_cell(np.random.default_rng([1, 2]), 1, 160, 0.3)
    c = synth_cell(np.random.default_rng([1, 3]), 1, 160, 0.3)
    assert a.shape == (160, 160, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a[0, 0].tolist() == [0, 0, 0]  # black background as in C-NMC
    # Easy setting: blasts are clearly larger than normal cells on average.
    area = {lbl: np.mean([(synth_cell(np.random.default_rng([lbl, i]), lbl, 128, 0.0).max(2) > 0).mean()
                          for i in range(20)]) for lbl in (0, 1)}
    assert area[1] > 1.3 * area[0]
    with pytest.raises(ConfigError):
        synth_cell(np.random.default_rng(0), 1, 64, difficulty=1.5)


def test_synth_dataset_on_disk_is_deterministic(tmp_path):
    spec = SynthSpec(n_cells=24, size=48, fmt="png", cells_per_patient=4, seed=5)
    generate_cnmc_dataset(tmp_path / "a", spec)
    generate_cnmc_dataset(tmp_path / "b", spec)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and len(files_a) == 24
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    samples = load_samples(tmp_path / "a")
    assert class_counts(samples) == {"all": 16, "hem": 8}
    assert {s.fold for s in samples} == {"fold_0", "fold_1", "fold_2"}


def test_cnmc_layout_with_training_data_level(tmp_path):
    generate_cnmc_dataset(tmp_path / "training_data", SynthSpec(n_cells=12, size=40, fmt="png", cells_per_patient=2))
    samples = load_samples(tmp_path, layout="cnmc")
    assert len(samples) == 12 and all(s.patient_id for s in samples)


def test_manifest_layout(tmp_path):
    img = synth_cell(np.random.default_rng(0), 1, 48, 0.2)
    import cv2

    (tmp_path / "imgs").mkdir()
    rows = ["filename,label,patient_id"]
    for i in range(6):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), img)
        rows.append(f"imgs/{i}.png,{'all' if i % 2 else 'hem'},P{i // 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    samples = load_samples(tmp_path / "m.csv")
    assert [s.label for s in samples] == [0, 1, 0, 1, 0, 1]
    assert [s.patient_id for s in samples] == ["P0", "P0", "P1", "P1", "P2", "P2"]
    (tmp_path / "bad.csv").write_text("filename,label\nimgs/0.png,maybe\n")
    with pytest.raises(DataError, match="unknown label 'maybe'"):
        load_samples(tmp_path / "bad.csv")
    (tmp_path / "nocols.csv").write_text("path,cls\nimgs/0.png,all\n")
    with pytest.raises(DataError, match="filename,label"):
        load_samples(tmp_path / "nocols.csv")


def test_smear_frames_with_boxes(tmp_path):
    frame = synth_smear(np.random.default_rng(4))
    assert frame.image.shape == (480, 640, 3)
    wbcs = [o for o in frame.objects if o.name == "WBC"]
    assert 1 <= len(wbcs) <= 3 and all(o.label in ("all", "hem") for o in wbcs)
    for o in wbcs:  # a white cell's box holds purple (blue > green) nucleus pixels
        x0, y0, x1, y1 = o.box
        crop = frame.image[y0:y1, x0:x1].astype(int)
        assert ((crop[..., 2] - crop[..., 1]) > 60).mean() > 0.1
    info = generate_smears(tmp_path, 3, seed=1)
    assert info["frames"] == 3 and len(list((tmp_path / "Annotations").glob("*.xml"))) == 3


# --- splits ------------------------------------------------------------------------------------


def _fake(n_patients_all=8, n_patients_hem=5, per=6):
    out = []
    for p in range(n_patients_all):
        out += [Sample(Path(f"/x/{p}_{i}_all.bmp"), 1, str(p)) for i in range(per)]
    for p in range(n_patients_hem):
        out += [Sample(Path(f"/x/H{p}_{i}_hem.bmp"), 0, f"H{p}") for i in range(per)]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_grouped_split_is_patient_disjoint_and_stratified(seed):
    samples = _fake()
    split = make_split(samples, val_fraction=0.25, seed=seed)
    assert not patients_of(split.train) & patients_of(split.val)
    assert len(split.train) + len(split.val) == len(samples)
    assert class_counts(split.val)["all"] > 0 and class_counts(split.val)["hem"] > 0
    assert 0.15 < len(split.val) / len(samples) < 0.45


def test_split_by_fold_drops_shared_patients():
    samples = [Sample(Path(f"/f{k}/{p}_{i}.bmp"), p % 2, f"P{k}{p}", f"fold_{k}") for k in range(3) for p in range(4)
               for i in range(2)]
    samples.append(Sample(Path("/f0/leak.bmp"), 1, "P9", "fold_0"))
    samples.append(Sample(Path("/f2/leak.bmp"), 1, "P9", "fold_2"))
    split = make_split(samples)  # official folds: the last one validates
    assert split.method == "fold:fold_2"
    assert all(s.fold == "fold_2" for s in split.val)
    assert "P9" in patients_of(split.val) and "P9" not in patients_of(split.train)


def test_real_sample_split_is_patient_disjoint(cnmc_sample):
    split = make_split(load_samples(cnmc_sample), val_fraction=0.3, seed=1)
    assert not patients_of(split.train) & patients_of(split.val)


def test_split_needs_two_patients_per_class():
    with pytest.raises(DataError, match="patient"):
        grouped_stratified_split(_fake(n_patients_hem=1), 0.2, 0)


# --- preprocessing and datasets ----------------------------------------------------------------


def test_preprocess_contract(cnmc_sample):
    path = next((cnmc_sample / "all").glob("*.bmp"))
    spec = InputSpec(size=(96, 96))
    img = load_image(path)
    assert img.shape == (450, 450, 3)
    x = preprocess(img, spec)
    assert x.shape == (3, 96, 96) and x.dtype == np.float32
    prepared = prepare(img, spec)
    assert (x[:, prepared.max(2) <= spec.mask_threshold] == 0).all()  # masked background is exactly 0
    fg = x[:, prepared.max(2) > 40]
    assert abs(float(fg.mean())) < 1.0  # foreground roughly standardised by the card's mean/std
    # BGR order and NHWC layout follow the card.
    bgr = preprocess(img, InputSpec(size=(96, 96), color_order="BGR", layout="NHWC"))
    assert np.allclose(bgr[..., ::-1].transpose(2, 0, 1), x)
    # Non-square input: padded to a centred square.
    wide = preprocess(img[100:300], spec)
    assert (wide[:, :20, :] == 0).all() and (wide[:, -20:, :] == 0).all()


def test_dataset_items_equal_the_one_preprocessing(cnmc_sample):
    samples = load_samples(cnmc_sample)[:8]
    spec = InputSpec(size=(64, 64))
    images, kept, report = prepare_samples(samples, spec)
    ds = CellDataset(images, kept, spec)
    for i in range(len(ds)):
        x, y = ds[i]
        assert np.array_equal(x.numpy(), preprocess(load_image(kept[i].path), spec))
        assert y == kept[i].label
    assert report.loaded == 8 and not report.skipped


def test_augmentation_is_seeded_and_keeps_background():
    img = synth_cell(np.random.default_rng(0), 1, 64, 0.2)
    a = augment(img, np.random.default_rng(1), AugmentConfig())
    b = augment(img, np.random.default_rng(1), AugmentConfig())
    assert np.array_equal(a, b) and a.shape == img.shape
    assert a[0, 0].tolist() == [0, 0, 0]
    assert abs(int((a.max(2) > 0).sum()) - int((img.max(2) > 0).sum())) < 0.3 * (img.max(2) > 0).sum()


def test_stain_jitter_moves_cell_colours_as_much_as_real_cells_differ(cnmc_sample):
    """HED jitter (scikit-image's stain space) on a real C-NMC cell: no change at zero jitter, the black
    background untouched, and the spread of the cell's mean colour of the order the 70 sample cells
    differ by (7, 4, 7 grey levels R, G, B), not a recolouring."""
    from alnett_edge.data.augment import _hed_jitter

    img = prepare(load_image(next((cnmc_sample / "all").glob("*.bmp"))), InputSpec())
    fg = img.max(2) > 0
    px = img[fg].astype(np.float32)
    assert np.allclose(_hed_jitter(px, np.random.default_rng(0), 0.0), px, atol=1e-3)
    cfg = AugmentConfig(flips=False, rotate=False, scale=0.0, brightness=0.0, blur_p=0.0, noise=0.0, hue=0.0,
                        saturation=0.0)
    shifts = []
    for seed in range(60):
        out = augment(img, np.random.default_rng(seed), cfg)
        bg = out.max(2) == 0
        assert bg.sum() > 0.2 * bg.size and (out.max(2) > 0).sum() == fg.sum()  # right angles: same mask
        shifts.append(out[~bg].mean(0) - px.mean(0))
    spread = np.std(shifts, axis=0)
    assert (spread > 1.5).all() and (spread < 12).all(), spread


def test_hue_and_saturation_jitter_turn_the_cell_as_configured(cnmc_sample):
    """Another camera's colour on a real C-NMC cell: zero jitter changes nothing; otherwise the cell's
    median hue turns by at most ``hue`` degrees and its median saturation scales within
    [1 - saturation, 1 + saturation], both spread over the range (not stuck at one end), the background
    stays black."""
    import cv2

    from alnett_edge.data.augment import _hsv_jitter

    img = prepare(load_image(next((cnmc_sample / "all").glob("*.bmp"))), InputSpec())
    fg = img.max(2) > 0
    px = img[fg].astype(np.float32)
    assert np.allclose(_hsv_jitter(px, np.random.default_rng(0), 0.0, 0.0), px, atol=1e-3)

    def hue_sat(rgb: np.ndarray) -> tuple[float, float]:
        hsv = cv2.cvtColor(rgb[None].astype(np.float32) / 255, cv2.COLOR_RGB2HSV)[0]
        return float(np.median(hsv[:, 0])), float(np.median(hsv[:, 1]))

    h0, s0 = hue_sat(px)
    cfg = AugmentConfig(flips=False, scale=0.0, hed=0.0, brightness=0.0, hue=12.0, saturation=0.35)
    turns, gains = [], []
    for seed in range(60):
        out = augment(img, np.random.default_rng(seed), cfg)
        out_fg = out.max(2) > 0  # turned by a right angle: the same cell pixels, elsewhere
        assert out_fg.sum() == fg.sum() and (out[~out_fg] == 0).all()
        h, sat = hue_sat(out[out_fg].astype(np.float32))
        turns.append((h - h0 + 180) % 360 - 180)
        gains.append(sat / s0)
    turns, gains = np.array(turns), np.array(gains)
    assert np.abs(turns).max() <= 12.5 and turns.min() < -6 and turns.max() > 6, turns
    assert gains.min() >= 0.63 and gains.max() <= 1.37 and gains.min() < 0.8 and gains.max() > 1.2, gains


def test_opponent_stain_does_not_see_a_saturation_gain(cnmc_sample):
    """``stain = "opponent"`` (issue 32's colour shortcut): a real C-NMC cell with its saturation cut to
    0.7 or raised to 1.3 reaches the model nearly unchanged (its R - G and R + G - 2B planes scale alike
    and the brightest channel stays), where per-channel ``stain = "cell"`` moves it more than twice as far;
    a brightness gain cancels in both; the background stays 0 and the appearance features (skewness of
    the planes) hardly move either."""
    import cv2

    from alnett_edge.data.appearance import OPPONENT_FEATURES, crop_features

    def sat(rgb: np.ndarray, k: float) -> np.ndarray:
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] = np.clip(hsv[..., 1] * k, 0, 255)
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)

    moved = {}
    for stain in ("cell", "opponent"):
        spec = InputSpec(size=(96, 96), stain=stain)
        diffs = []
        for path in sorted((cnmc_sample / "all").glob("*.bmp"))[:6]:
            rgb = load_image(path)
            a = normalize(prepare(rgb, spec), spec)
            fg = np.abs(a).sum(0) > 0
            assert (a[:, ~fg] == 0).all() and fg.mean() > 0.1
            for k in (0.7, 1.3):
                diffs.append(float(np.abs(a - normalize(prepare(sat(rgb, k), spec), spec))[:, fg].mean()))
            bright = normalize(prepare(np.clip(rgb.astype(np.float32) * 1.2, 0, 255).astype(np.uint8), spec), spec)
            assert float(np.abs(a - bright)[:, fg].mean()) < 0.1, stain
        moved[stain] = float(np.mean(diffs))
    assert moved["opponent"] < 0.05 and moved["cell"] > 2 * moved["opponent"], moved
    cell = prepare(load_image(next((cnmc_sample / "all").glob("*.bmp"))), InputSpec(size=(96, 96)))
    f0, f1 = crop_features(cell, 0.0, stain="opponent"), crop_features(sat(cell, 0.7), 0.0, stain="opponent")
    assert len(f0) == len(OPPONENT_FEATURES) - 1 and np.abs(f0 - f1).max() < 0.3, (f0, f1)


def test_corrupt_image_skipped_and_counted(tmp_path, caplog):
    generate_cnmc_dataset(tmp_path, SynthSpec(n_cells=12, size=40, fmt="png", cells_per_patient=2))
    victim = next((tmp_path / "fold_0" / "all").glob("*.png"))
    victim.write_bytes(b"not an image at all")
    samples = load_samples(tmp_path)
    with caplog.at_level("WARNING"):
        ds, report = CellDataset.from_samples(samples, InputSpec(size=(32, 32)))
    assert len(ds) == 11 and report.skipped == [str(victim)]
    assert victim.name in caplog.text


def test_bad_datasets(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_samples(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no known dataset layout"):
        load_samples(tmp_path / "empty")
    (tmp_path / "one" / "all").mkdir(parents=True)
    (tmp_path / "one" / "hem").mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "one" / "all" / "a.png"), np.full((8, 8, 3), 90, np.uint8))
    with pytest.raises(DataError, match="class hem has no images"):
        load_samples(tmp_path / "one")
    (tmp_path / "none" / "all").mkdir(parents=True)
    with pytest.raises(DataError, match="empty"):
        load_samples(tmp_path / "none", layout="folders")
    with pytest.raises(DataError, match="unknown layout"):
        load_samples(tmp_path / "one", layout="imagenet")
    with pytest.raises(DataError, match="cannot decode"):
        load_image(_write(tmp_path / "x.png", b"zz"))
    with pytest.raises(DataError, match="expected an RGB uint8"):
        prepare(np.zeros((10, 10), np.float32), InputSpec(size=(32, 32)))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_smear_objects_are_painted_in_windows_without_changing_a_pixel():
    """synth_smear paints each object only where it can reach: a blob drawn in its window equals the
    same blob drawn on the whole frame, which is exactly 0 beyond its reach, for elongated and
    irregular blobs too."""
    from alnett_edge.data.synth import _blob, _blob_params, _blob_reach, _window

    yy, xx = np.mgrid[0:300, 0:300].astype(np.float32)
    for seed, (radius, irregular, elong, soft) in enumerate([(60, 0.05, 1.0, 1.5), (50, 0.08, 1.05, 2), (25, 0.1, 1.2, 2)]):
        full = _blob(np.random.default_rng(seed), xx - 150, yy - 150, radius, irregular, elong, 0.7, soft)
        reach = _blob_reach(radius, _blob_params(np.random.default_rng(seed), irregular), elong, soft)
        win = _window(150, 150, reach, 300, 300)
        part = _blob(np.random.default_rng(seed), xx[win] - 150, yy[win] - 150, radius, irregular, elong, 0.7, soft)
        outside = np.ones_like(full, bool)
        outside[win] = False
        assert np.array_equal(full[win], part) and full[outside].max() == 0 and full.max() == 1
