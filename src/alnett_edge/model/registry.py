"""Registered ALNett variants (timm style): a name -> default config, input size and budget; and the
torchvision baselines (model/baselines.py) under their own names."""

from __future__ import annotations

from torch import nn

from alnett_edge.errors import ConfigError
from alnett_edge.model.alnett import ALNett, ALNettConfig, Variant
from alnett_edge.model.baselines import BASELINES, DEFAULT_INPUT, create_baseline, is_baseline

_VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    if variant.name in _VARIANTS:
        raise ConfigError(f"variant {variant.name!r} is already registered")
    variant.config.validate()
    _VARIANTS[variant.name] = variant
    return variant


def list_variants() -> list[str]:
    return sorted(_VARIANTS)


def list_models() -> list[str]:
    """Every name ``--model`` takes: the ALNett variants, then the baselines."""
    return [*list_variants(), *BASELINES]


def get_variant(name: str) -> Variant:
    try:
        return _VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def check_model(name: str) -> None:
    """Raise ConfigError unless ``name`` is an ALNett variant or a baseline."""
    if not is_baseline(name):
        get_variant(name)


def default_input_size(name: str) -> int:
    return DEFAULT_INPUT if is_baseline(name) else get_variant(name).input_size


def create_model(name: str, **overrides: object) -> nn.Module:
    """Build a registered variant (keyword overrides replace fields of its default config) or a baseline
    (``num_classes`` only)."""
    if is_baseline(name):
        return create_baseline(name, **overrides)  # type: ignore[arg-type]
    base = get_variant(name).config.to_dict()
    base.update(overrides)
    return ALNett(ALNettConfig.from_dict(base))


register_variant(
    Variant(
        name="alnett",
        config=ALNettConfig(stem_channels=32, channels=(64, 128, 256, 512, 768), dropout=0.3),
        input_size=224,
        description="paper-scale ALNett, 224x224, five cluster layers",
        budgets={"max_macs": 1.0e9, "max_params": 3.0e6},
    )
)
register_variant(
    Variant(
        name="alnett-s",
        # sum fusion: the pointwise conv reads C, not 3C, channels and no concat is copied. On 2 AVX2
        # cores (ONNX Runtime, 2 threads) b1 / b8 went from 2.7-3.0 / 22-36 ms to 1.5-1.7 / 10-14 ms,
        # under MobileNetV3-Small's 2.9-3.4 / 14-19 in the same runs; accuracy: see docs/engineering/architecture.md
        config=ALNettConfig(stem_channels=16, channels=(32, 64, 128, 192, 256), dropout=0.2, fusion="sum"),
        input_size=224,
        description="Raspberry Pi sized ALNett, 224x224, branches summed",
        budgets={"max_macs": 0.25e9},
    )
)
register_variant(
    Variant(
        name="alnett-tiny",
        config=ALNettConfig(stem_channels=8, channels=(16, 32, 48), dropout=0.1),
        input_size=64,
        description="tiny ALNett for tests and the offline demo, 64x64",
        budgets={"max_macs": 0.01e9},
    )
)

