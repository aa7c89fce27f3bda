"""A learned nucleus-centre detector, run through the runtime's backend table (torch-free): where the
cells of a frame are, one point and one box size (µm) per cell, including the cells of a touching
cluster that the rule-based threshold sees as one blob. :class:`~alnett_edge.vision.detector.CellDetector`
uses its centres as the seeds of its nuclei when ``[detector] centres`` names a model; masks, edge
weights, the quality gate and smudge cells stay the rule-based detector's.

The model's contract is its :class:`~alnett_edge.card.CentreCard`, carried in the ONNX file's metadata:
the frame is resampled to the card's µm per pixel (so one model serves a 640x480 C-mount camera and a
2592x1944 one), each channel less the frame's median, padded with that median colour; a centre is a
local maximum of the heat map at least the threshold. ``builtin`` is the model shipped with alnett-edge
(``vision/models/centres.onnx``, trained on BCCD ``trainval``, wbc-smartphone ``train/`` and generated
crowded fields: docs/engineering/crowded.md); ``alnett-edge detector train`` makes one for a microscope.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from alnett_edge.card import CENTRE_CARD_KEY, CentreCard
from alnett_edge.errors import CheckpointError, ConfigError, DataError
from alnett_edge.runtime.base import DenseModel, open_dense
from alnett_edge.vision.optics import histogram_percentiles

#: ``[detector] centres = "builtin"``: the model shipped in the package
BUILTIN = "builtin"
BUILTIN_FILE = Path(__file__).resolve().parent / "models" / "centres.onnx"


def model_path(spec: str | Path) -> Path:
    """The model file a ``[detector] centres`` value names (``builtin``: the shipped one)."""
    path = BUILTIN_FILE if str(spec) == BUILTIN else Path(spec)
    if not path.is_file():
        raise ConfigError(f"[detector] centres: {path} not found (use {BUILTIN!r} or a model from "
                          "`alnett-edge detector train`)")
    return path


@dataclass(frozen=True)
class Centre:
    x: float  # frame pixels
    y: float
    w_um: float  # the cell's box, µm
    h_um: float
    score: float  # the heat map's peak, 0..1


def resample(rgb: np.ndarray, um_per_px: float, to_um: float) -> np.ndarray:
    """The frame at ``to_um`` µm per pixel: a large reduction first by a whole factor (OpenCV's fast path
    for averaging), the rest by interpolation."""
    f = um_per_px / to_um
    if f < 0.5:
        k = int(1 / f)
        h, w = rgb.shape[0] // k * k, rgb.shape[1] // k * k
        rgb = cv2.resize(rgb[:h, :w], (w // k, h // k), interpolation=cv2.INTER_AREA)
        f *= k
    if abs(f - 1) < 1e-3:
        return rgb
    return cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def channel_medians(rgb: np.ndarray) -> list[int]:
    """Each channel's median (from its histogram, of every 4th pixel each way: a full median costs more
    than the network)."""
    sub = np.ascontiguousarray(rgb[::4, ::4])
    return [int(histogram_percentiles(sub[..., c], None, (50,))[0]) for c in range(3)]


def net_input(rgb: np.ndarray, card: CentreCard, medians: list[int] | None = None) -> np.ndarray:
    """A frame at the card's scale (HWC uint8) -> the network's input (CHW float32)."""
    med = np.array(medians if medians is not None else channel_medians(rgb), np.float32)
    x = rgb.transpose(2, 0, 1).astype(np.float32)
    x -= med[:, None, None]
    x *= 1 / card.norm_scale
    return x


def pad_to(rgb: np.ndarray, ph: int, pw: int, medians: list[int]) -> np.ndarray:
    """``ph`` rows and ``pw`` columns of the frame's median colour added below and to the right (a
    reflected border would show the network cells that are not there)."""
    return cv2.copyMakeBorder(rgb, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=medians)


def padded_input(small: np.ndarray, card: CentreCard) -> np.ndarray:
    """A frame already at the card's scale -> the network's input batch (1 x 3 x H x W float32): its channel
    medians taken, padded with them to the card's multiple, normalised. Its unpadded size is ``small``'s."""
    med = channel_medians(small)
    h, w = small.shape[:2]
    ph, pw = (-h) % card.pad_multiple, (-w) % card.pad_multiple
    if ph or pw:
        small = pad_to(small, ph, pw, med)
    return net_input(small, card, med)[None]


def read_centres(heat: np.ndarray, size: np.ndarray, card: CentreCard, threshold: float, shape: tuple[int, int],
                 frame_um: float) -> list[Centre]:
    """The peaks of one heat map (H x W) with their sizes (2 x H x W) -> centres in a frame of
    ``frame_um`` µm per pixel; ``shape``: the unpadded input's (h, w)."""
    peak = (heat == cv2.dilate(heat, np.ones((3, 3), np.uint8))) & (heat >= threshold)
    f = card.um_per_px / frame_um * card.stride
    out = []
    for y, x in zip(*np.nonzero(peak)):
        if (x + 0.5) * card.stride > shape[1] or (y + 0.5) * card.stride > shape[0]:
            continue  # in the padding
        bw, bh = np.exp(np.clip(size[:, y, x], -4, 4)) * card.size_ref_um
        out.append(Centre(float((x + 0.5) * f), float((y + 0.5) * f), float(bw), float(bh), float(heat[y, x])))
    return out


#: model file (path, modification time, size) and threads -> its opened model and card: every detector of a
#: process (field-eval's one per folder of frames, the daemon's after each calibration, its config check)
#: shares one session; a file written again is opened again
_OPENED: dict[tuple, tuple[DenseModel, CentreCard]] = {}


def _opened(path: Path, threads: int) -> tuple[DenseModel, CentreCard]:
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, threads)
    if key not in _OPENED:
        model = open_dense(path, threads)
        meta = model.metadata()
        if CENTRE_CARD_KEY not in meta:
            raise CheckpointError(f"{path.name} carries no centre card (make one with `alnett-edge detector train`)")
        _OPENED[key] = (model, CentreCard.from_json(meta[CENTRE_CARD_KEY]))
    return _OPENED[key]


class CentreFinder:
    """A learned centre detector opened on the first backend that runs it here."""

    def __init__(self, spec: str | Path, threshold: float = 0.0, threads: int = 0) -> None:
        self.path = model_path(spec)
        self.model, self.card = _opened(self.path, threads)
        if not 0 <= threshold < 1:
            raise ConfigError(f"[detector] centre_threshold must be in [0, 1) (0: the card's), got {threshold!r}")
        self.threshold = threshold or self.card.threshold

    def gate_refusal(self) -> str | None:
        """Why the daemon must not look for cells with this model: it did not meet the marked frames of its
        ``--gate`` (``alnett-edge detector train``); None when it met them or had none."""
        gate = self.card.training.get("gate") if isinstance(self.card.training, dict) else None
        if isinstance(gate, dict) and gate.get("met") is False:
            return (f"{self.path.name} did not meet its gate on {gate.get('frames')} (no threshold kept extra "
                    f"detections to {gate.get('max_extra')})")
        return None

    def find(self, rgb: np.ndarray, um_per_px: float) -> list[Centre]:
        """The cells of one RGB frame (H x W x 3 uint8) of ``um_per_px`` µm per pixel."""
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise DataError(f"the centre detector takes an RGB uint8 frame (H x W x 3), got "
                            f"{getattr(rgb, 'shape', type(rgb).__name__)}")
        if not um_per_px > 0:
            raise ConfigError("the centre detector needs the pixel size (um_per_px > 0)")
        card = self.card
        small = resample(rgb, um_per_px, card.um_per_px)
        h, w = small.shape[:2]
        if min(h, w) < 4:
            return []
        outs = self.model.run(padded_input(small, card))
        if len(outs) < 2 or outs[0].ndim != 4 or outs[1].ndim != 4 or outs[1].shape[1] != 2:
            raise CheckpointError(f"{self.path.name}: expected a heat map and box sizes, got outputs of shapes "
                                  f"{[o.shape for o in outs]}")
        return read_centres(outs[0][0, 0], outs[1][0], card, self.threshold, (h, w), um_per_px)
