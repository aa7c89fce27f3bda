"""The model card: the one preprocessing contract of alnett-edge.

A card travels inside every checkpoint (and later every exported bundle). Training, evaluation,
calibration, export, bench and the device daemon read input size, colour order, layout, mean/std or
per-cell colour normalisation, background masking, the physical scale of the input canvas and class
names from it and from nowhere else.

This module is at the bottom of the import graph: it imports neither torch nor any other
alnett-edge layer, so a device that only runs bundles can load a card.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from typing import Any

from alnett_edge.errors import CheckpointError

CARD_SCHEMA = 1

#: The metadata key that carries the card (JSON) in safetensors checkpoints and ONNX metadata_props.
CARD_KEY = "alnett_edge.card"

#: C-NMC labels cells 0 = hem (normal), 1 = all (blast); index i of the model output is CLASS_NAMES[i].
CLASS_NAMES: tuple[str, ...] = ("hem", "all")


@dataclass(frozen=True)
class ClassSet:
    """A dataset's classes, in the order of the model's outputs, and those that are blasts (their share is
    the blast ratio). C-NMC's: hem and all. A harvest may have any (``harvest --classes --blast``)."""

    names: tuple[str, ...] = CLASS_NAMES
    blast: tuple[str, ...] = ("all",)

    def __post_init__(self) -> None:
        names, blast = self.names, self.blast
        if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise CheckpointError(f"classes must be two or more distinct names, got {list(names)!r}")
        if not blast or not set(blast) <= set(names) or len(set(blast)) != len(blast) or len(blast) == len(names):
            raise CheckpointError(f"the blast classes {list(blast)!r} must be some, not all, of the classes "
                                  f"{list(names)!r}")

    @property
    def binary(self) -> bool:
        """C-NMC's two classes (labels by alias: all/blast/malignant, hem/normal/benign)."""
        return self.names == CLASS_NAMES and self.blast == ("all",)


def blast_sum(probs: Any, columns: Sequence[int]) -> Any:
    """P(blast) of class probabilities (an array, the classes on the last axis): the ``columns`` summed."""
    return probs[..., list(columns)].sum(axis=-1)


#: Mean/std of the stained foreground of the real C-NMC sample (RGB, [0, 1] scale), measured over the
#: 70 cells of ../shared/data/cnmc-sample (pixels whose brightest channel is > 10/255). With background
#: masking the black background becomes exactly 0 after normalisation and the cell is ~N(0, 1).
CNMC_MEAN: tuple[float, float, float] = (0.275, 0.119, 0.315)
CNMC_STD: tuple[float, float, float] = (0.054, 0.040, 0.047)

#: InputSpec.stain values (see there)
STAIN_MODES: tuple[str, ...] = ("none", "cell", "opponent")
#: InputSpec.tta values: how many views of each cell the model sees (see there)
TTA_MODES: tuple[str, ...] = ("none", "flips", "d4")


@dataclass(frozen=True)
class InputSpec:
    """How a raw RGB cell image becomes the model's input tensor."""

    size: tuple[int, int] = (224, 224)  # (height, width)
    color_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    mean: tuple[float, float, float] = CNMC_MEAN
    std: tuple[float, float, float] = CNMC_STD
    #: Pixels whose brightest channel is <= mask_threshold (0..255) are background and become 0
    #: after normalisation, so the model never sees the exact black level of a camera or a crop.
    mask_background: bool = True
    mask_threshold: int = 10
    #: Non-square images are padded with black to a square, centred, then resized.
    resize: str = "pad-square"
    #: The physical side of the model's input canvas in µm: a cell cropped from a camera frame is placed
    #: on a canvas this wide (not zoomed to fit), so it reaches the model at the scale of the training
    #: cells. 0 = unknown (cards from before it was measured): field crops are zoomed to fit.
    canvas_um: float = 0.0
    #: Colour normalisation: "none" = (x - mean) / std with the card's dataset mean/std; "cell" = each
    #: cell's own foreground mean/std per channel (a lamp, exposure or stain-strength gain cancels out);
    #: "opponent" = the cell's opponent planes (R - G, R + G - 2B, max(R, G, B)) each standardised by its own
    #: foreground mean/std (a saturation gain cancels too: ``data.preprocess.opponent_planes``).
    stain: str = "none"
    #: Test-time augmentation: "none"; "flips" = the cell as given, mirrored left-right, top-bottom and
    #: both (4 views); "d4" = those and their transposes (all 8 symmetries of a square). Every backend
    #: and the training validation run every view and average the logits (``data.preprocess.with_tta``).
    tta: str = "none"

    def validate(self) -> None:
        h, w = self.size
        if h < 16 or w < 16:
            raise CheckpointError(f"input size {h}x{w} is too small (minimum 16x16)")
        if self.color_order not in ("RGB", "BGR"):
            raise CheckpointError(f"unknown colour order {self.color_order!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise CheckpointError(f"unknown layout {self.layout!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise CheckpointError("mean and std need three values and std must be > 0")
        if self.resize != "pad-square":
            raise CheckpointError(f"unknown resize mode {self.resize!r}")
        if not self.canvas_um >= 0:
            raise CheckpointError(f"canvas_um must be >= 0, got {self.canvas_um!r}")
        if self.stain not in STAIN_MODES:
            raise CheckpointError(f"unknown stain normalisation {self.stain!r}; known: {', '.join(STAIN_MODES)}")
        if self.tta not in TTA_MODES:
            raise CheckpointError(f"unknown test-time augmentation {self.tta!r}; known: {', '.join(TTA_MODES)}")
        if self.tta == "d4" and h != w:
            raise CheckpointError(f"tta d4 transposes the input, so it needs a square input, not {h}x{w}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        d = dict(d)
        for key in ("size", "mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        spec = cls(**d)
        spec.validate()
        return spec


@dataclass
class ModelCard:
    """Everything needed to rebuild, feed and interpret a model, as plain JSON."""

    variant: str
    arch: dict[str, Any]
    input: InputSpec = field(default_factory=InputSpec)
    class_names: tuple[str, ...] = CLASS_NAMES
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Pruning history (before/after channels, MACs) when the model was pruned.
    compression: dict[str, Any] = field(default_factory=dict)
    #: Quantization scheme and method (e.g. {"method": "qat", "scheme": "symmetric"}) for int8 models.
    quantization: dict[str, Any] = field(default_factory=dict)
    #: Temperature scaling fitted on the validation split ({"temperature": T, "ece_before", ...}); every
    #: runtime backend divides the logits by T before the softmax. Empty: T = 1 (uncalibrated).
    calibration: dict[str, Any] = field(default_factory=dict)
    #: What the training cells look like (``data/appearance.py``: mean/covariance of their colour and
    #: size, the largest distance allowed); the daemon abstains crops farther away. Empty: no check.
    appearance: dict[str, Any] = field(default_factory=dict)
    #: How a field or a slide is called from its cells (``metrics.field_rule``: the score, the mean log-odds
    #: of blast or the blast fraction, and the threshold fitted on validation fields); set when the model was
    #: trained on fields labelled per field.
    field_decision: dict[str, Any] = field(default_factory=dict)
    #: The classes whose share is the blast ratio (a model of Benign / Early / Pre / Pro cells: the three
    #: B-ALL subtypes). Empty: ``all`` when the card has it, else the last class (cards before there could
    #: be more than two classes). A cell's P(blast) is the sum of these classes' probabilities.
    blast_classes: tuple[str, ...] = ()
    schema: int = CARD_SCHEMA

    def __post_init__(self) -> None:
        names = self.class_names
        if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise CheckpointError(f"model card class_names must be two or more distinct names, got {list(names)!r}")
        blast = self.blast_classes
        if blast and (not set(blast) <= set(names) or len(set(blast)) != len(blast) or len(blast) == len(names)):
            raise CheckpointError(f"model card blast_classes {list(blast)!r} must be some, not all, of its classes "
                                  f"{list(names)!r}")
        t = self.calibration.get("temperature", 1.0) if isinstance(self.calibration, dict) else None
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.01 <= float(t) <= 100:
            raise CheckpointError(f"model card calibration.temperature must be a number in [0.01, 100], got {t!r}")

    @property
    def temperature(self) -> float:
        """The logits' divisor before the softmax (1.0 when the card carries no calibration)."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def blast_names(self) -> tuple[str, ...]:
        """The classes that are blasts (see ``blast_classes``), in the card's class order."""
        if self.blast_classes:
            return tuple(n for n in self.class_names if n in self.blast_classes)
        return ("all",) if "all" in self.class_names else self.class_names[-1:]

    @property
    def blast_columns(self) -> list[int]:
        """The model outputs' columns of the blast classes."""
        return [self.class_names.index(n) for n in self.blast_names]

    def blast_probability(self, probs: Any) -> Any:
        """P(blast) of a numpy array of class probabilities (last axis the classes): the blast classes' sum."""
        return blast_sum(probs, self.blast_columns)

    @property
    def class_set(self) -> ClassSet:
        return ClassSet(self.class_names, self.blast_names)

    def copy(self) -> "ModelCard":
        """A deep, independent copy (cards hold nested dicts)."""
        return ModelCard.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input"] = asdict(self.input)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> "ModelCard":
        if not isinstance(d, dict):
            raise CheckpointError("model card is not a JSON object")
        schema = d.get("schema")
        if schema != CARD_SCHEMA:
            raise CheckpointError(f"model card schema {schema!r} is not supported (expected {CARD_SCHEMA})")
        try:
            return cls(
                variant=str(d["variant"]),
                arch=dict(d["arch"]),
                input=InputSpec.from_dict(d.get("input", {})),
                class_names=tuple(d.get("class_names", CLASS_NAMES)),
                training=dict(d.get("training", {})),
                metrics=dict(d.get("metrics", {})),
                compression=dict(d.get("compression", {})),
                quantization=dict(d.get("quantization", {})),
                calibration=dict(d.get("calibration", {})),
                appearance=dict(d.get("appearance", {})),
                field_decision=dict(d.get("field_decision", {})),
                blast_classes=tuple(d.get("blast_classes", ())),
                schema=schema,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"model card is malformed: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        return cls.from_dict(_parse_json(text, "model card"))


def _parse_json(text: str, what: str) -> Any:
    """A card's JSON text parsed; one line naming ``what`` when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{what} is not valid JSON: {exc}") from exc


#: The metadata key that carries a centre detector's card (JSON) in its ONNX file and its weights.
CENTRE_CARD_KEY = "alnett_edge.centre_card"
CENTRE_CARD_SCHEMA = 1


@dataclass(frozen=True)
class CentreCard:
    """The contract of a learned nucleus-centre detector (``alnett-edge detector train``): what its
    input is (the frame resampled to ``um_per_px``, each channel less the frame's median over
    ``norm_scale``, padded with that median to a multiple of ``pad_multiple``) and how its two outputs
    read (a heat map of cell centres at ``stride`` input pixels per map pixel, a centre being a local
    maximum at least ``threshold``; each cell's box width and height as log(size / ``size_ref_um``))."""

    arch: str = "full"
    um_per_px: float = 0.75
    stride: int = 2
    size_ref_um: float = 10.0
    norm_scale: float = 64.0
    pad_multiple: int = 4
    threshold: float = 0.3
    training: dict[str, Any] = field(default_factory=dict)
    schema: int = CENTRE_CARD_SCHEMA

    def __post_init__(self) -> None:
        nums = (self.um_per_px, self.size_ref_um, self.norm_scale)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e4 for v in nums):
            raise CheckpointError(f"centre card um_per_px, size_ref_um and norm_scale must be positive numbers, "
                                  f"got {nums!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64
                   for v in (self.stride, self.pad_multiple)):
            raise CheckpointError("centre card stride and pad_multiple must be whole numbers 1..64")
        if not isinstance(self.threshold, (int, float)) or not 0 < self.threshold < 1:
            raise CheckpointError(f"centre card threshold must be in (0, 1), got {self.threshold!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CentreCard":
        d = _parse_json(text, "centre card")
        if not isinstance(d, dict):
            raise CheckpointError("centre card is not a JSON object")
        if d.get("schema") != CENTRE_CARD_SCHEMA:
            raise CheckpointError(f"centre card schema {d.get('schema')!r} is not supported "
                                  f"(expected {CENTRE_CARD_SCHEMA})")
        known = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as exc:
            raise CheckpointError(f"centre card is malformed: {exc}") from exc
