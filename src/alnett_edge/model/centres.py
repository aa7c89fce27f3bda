"""The learned nucleus-centre detector's networks (``alnett-edge detector train``; run on the device by
:mod:`alnett_edge.vision.centres`). Each takes a frame at its card's µm per pixel (channels less their
medians) and gives a heat map of cell centres (sigmoid) and each cell's box size (log of size over the
card's ``size_ref_um``) at half the input's resolution. ``full``: a plain stem, two strides down, a cluster
of depthwise convolutions at dilations 1, 2 and 4 (as ALNett's cluster layers), one up; ``light``: the
same plan at about a fifth of the multiply-adds (docs/engineering/crowded.md measures both)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from alnett_edge.card import CENTRE_CARD_KEY, CentreCard
from alnett_edge.errors import CheckpointError


class CentreNet(nn.Module):
    """Two strides down, a cluster of depthwise convolutions at dilations 1, 2, 4 (as ALNett's), one up."""

    def __init__(self, w: int = 24) -> None:
        super().__init__()

        def conv(i, o, s=1, d=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, s, d, d, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.stem = conv(3, 16)
        self.down1 = nn.Sequential(conv(16, w, 2), conv(w, w))
        self.down2 = conv(w, 2 * w, 2)
        self.cluster = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, 1, d, d, groups=2 * w, bias=False), nn.BatchNorm2d(2 * w),
                          nn.ReLU(inplace=True)) for d in (1, 2, 4))
        self.mix = nn.Sequential(nn.Conv2d(6 * w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
                                 conv(2 * w, 2 * w, d=2))
        self.up = conv(3 * w, w)
        self.heat = nn.Conv2d(w, 1, 1)
        self.size = nn.Conv2d(w, 2, 1)
        nn.init.constant_(self.heat.bias, -2.2)

    def forward(self, x):
        a = self.down1(self.stem(x))
        b = self.down2(a)
        b = self.mix(torch.cat([m(b) for m in self.cluster], 1))
        b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        u = self.up(torch.cat([a, b], 1))
        return torch.sigmoid(self.heat(u)), self.size(u)


class LightNet(nn.Module):
    """The same plan at about a fifth of the multiply-adds: a strided stem, depthwise-separable
    convolutions, and the coarse features added to the fine ones instead of concatenated."""

    def __init__(self, w: int = 24) -> None:
        super().__init__()

        def bn_relu(o):
            return [nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        def sep(i, o, s=1, d=1):
            return nn.Sequential(nn.Conv2d(i, i, 3, s, d, d, groups=i, bias=False), *bn_relu(i),
                                 nn.Conv2d(i, o, 1, bias=False), *bn_relu(o))

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), *bn_relu(16), sep(16, w))
        self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), *bn_relu(2 * w))
        self.cluster = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, 1, d, d, groups=2 * w, bias=False), *bn_relu(2 * w))
            for d in (1, 2, 4))
        self.mix = nn.Sequential(nn.Conv2d(6 * w, 2 * w, 1, bias=False), *bn_relu(2 * w), sep(2 * w, 2 * w, d=2),
                                 sep(2 * w, 2 * w, d=4), nn.Conv2d(2 * w, w, 1, bias=False), nn.BatchNorm2d(w))
        self.up = sep(w, w)
        self.heat = nn.Conv2d(w, 1, 1)
        self.size = nn.Conv2d(w, 2, 1)
        nn.init.constant_(self.heat.bias, -2.2)

    def forward(self, x):
        a = self.stem(x)
        b = self.down(a)
        b = self.mix(torch.cat([m(b) for m in self.cluster], 1))
        u = self.up(a + F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False))
        return torch.sigmoid(self.heat(u)), self.size(u)


#: ``--arch`` -> network class; the card's ``arch`` names it
CENTRE_ARCHS: dict[str, type[nn.Module]] = {"full": CentreNet, "light": LightNet}


def centre_net(card: CentreCard) -> nn.Module:
    if card.arch not in CENTRE_ARCHS:
        raise CheckpointError(f"centre card arch {card.arch!r} is not one of {', '.join(CENTRE_ARCHS)}")
    return CENTRE_ARCHS[card.arch]()


def weights_path(onnx_path: Path) -> Path:
    """Where a centre detector's training weights lie: beside its ONNX file (what a fine-tune starts from)."""
    return onnx_path.with_suffix(".safetensors")


def save_centres(net: nn.Module, card: CentreCard, dest: Path) -> Path:
    """``dest`` (.onnx, any input height and width, the card in its metadata) and the weights beside it
    (:func:`weights_path`, the card in their metadata). The TorchScript exporter: the network is plain
    convolutions and an interpolation, and its dynamic height and width export without shape guards."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice: not the user's concern
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 96, 128),), buf, input_names=["x"], output_names=["heat", "size"],
                          dynamic_axes={"x": {2: "h", 3: "w"}, "heat": {2: "hh", 3: "ww"}, "size": {2: "hh", 3: "ww"}},
                          opset_version=18, dynamo=False)
    write_centres_onnx(onnx.load_model_from_string(buf.getvalue()), card, dest)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tmp = weights_path(dest).with_name(weights_path(dest).name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", CENTRE_CARD_KEY: card.to_json()})
    tmp.replace(weights_path(dest))
    return dest


def write_centres_onnx(proto: onnx.ModelProto, card: CentreCard, dest: Path) -> None:
    """``proto`` with ``card`` as its only centre card in its metadata, written to ``dest`` atomically (the
    trainer's export, the int8 quantizer's output)."""
    keep = [p for p in proto.metadata_props if p.key != CENTRE_CARD_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CENTRE_CARD_KEY, card.to_json()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(dest)


def load_centres(path: Path) -> tuple[nn.Module, CentreCard]:
    """The network and card of a centre detector (its ONNX file's path, or its weights' own)."""
    path = weights_path(path) if path.suffix.lower() == ".onnx" else path
    if not path.is_file():
        raise CheckpointError(f"centre detector weights not found: {path} (the ONNX file runs; a fine-tune starts "
                              "from the .safetensors written beside it)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    if CENTRE_CARD_KEY not in meta:
        raise CheckpointError(f"{path} carries no centre card (not a centre detector's weights)")
    card = CentreCard.from_json(meta[CENTRE_CARD_KEY])
    net = centre_net(card)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the card's {card.arch!r} network "
                              f"({str(exc).strip().splitlines()[0]})") from exc
    return net.eval(), card
