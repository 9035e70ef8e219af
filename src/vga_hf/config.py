"""`VGAConfig`: every option of Value-State Gated Attention, validated (spec section 1)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

#: Version of the serialized VGA configuration / gate format. Bump on incompatible change.
FORMAT_VERSION = 1

GRANULARITIES = ("head", "element")
GATE_INPUTS = ("value", "head_value", "input", "value_normalized")
POSITIONS = ("value", "output")


@dataclass
class VGAConfig:
    """How the value gate `g = scale * sigmoid(W u + b)` is built and where it acts.

    The defaults (`head` granularity, gate from the whole value vector, `scale=2`, `W=0`, `b=0`)
    give `g == 1` exactly, so a freshly patched model computes bit-for-bit what it did before.
    """

    granularity: str = field(
        default="head",
        metadata={"help": "'head': one scalar gate per key/value head and token (the paper). "
                  "'element': one gate per value channel."},
    )
    gate_input: str = field(
        default="value",
        metadata={"help": "What the gate reads. 'value': the token's whole value vector, all kv heads "
                  "(paper's W_g in R^{d x h}). 'head_value': each head's own value only. "
                  "'value_normalized': the whole value vector divided by its RMS (the logit no longer "
                  "scales with the value's norm). 'input': the layer input x that the value "
                  "projection reads (the IGA baseline)."},
    )
    position: str = field(
        default="value",
        metadata={"help": "'value': gate each value vector before the KV cache and attention (VGA). "
                  "'output': gate each head's attention output z_i by g(v_i) (paper appendix; research only)."},
    )
    scale: float = field(
        default=2.0,
        metadata={"help": "s in g = s * sigmoid(.). With bias_init=0, s=2 is the identity at init; "
                  "s=1 is the paper's from-scratch form (g=0.5 at init)."},
    )
    bias_init: float = field(default=0.0, metadata={"help": "Initial value of the gate bias b."})
    weight_init_std: float = field(
        default=0.0,
        metadata={"help": "Std of the normal init of W. 0 (default) keeps the gate constant at init."},
    )
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "Indices of the decoder layers to patch (negative indices count from the end). "
                  "None patches every decoder self-attention layer."},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("gate_input", self.gate_input, GATE_INPUTS)
        _choice("position", self.position, POSITIONS)
        for name in ("scale", "bias_init", "weight_init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"VGAConfig.{name} must be a number, got {value!r}.")
            setattr(self, name, float(value))
        if not self.scale > 0:
            raise ValueError(f"VGAConfig.scale must be > 0, got {self.scale}.")
        if self.weight_init_std < 0:
            raise ValueError(f"VGAConfig.weight_init_std must be >= 0, got {self.weight_init_std}.")
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.layers
            ):
                raise ValueError(
                    f"VGAConfig.layers must be None (all layers) or a list of ints, got {self.layers!r}."
                )
            self.layers = list(self.layers)
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"VGAConfig.layers has duplicates: {self.layers}.")

    @property
    def is_identity_at_init(self) -> bool:
        """True when a freshly patched model computes exactly what the original did."""
        import math

        return self.weight_init_std == 0 and self.scale / (1 + math.exp(-self.bias_init)) == 1.0

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["format_version"] = FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VGAConfig":
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"This VGA configuration was written with format version {version}, but the installed "
                f"vga_hf reads versions <= {FORMAT_VERSION}. Upgrade vga_hf (pip install -U vga-hf)."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown VGAConfig field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_string(cls, text: str) -> "VGAConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **overrides: Any) -> "VGAConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"Unknown VGAConfig option(s) {unknown}; known options: {sorted(known)}.")
        return dataclasses.replace(self, **overrides)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"VGAConfig.{name}={value!r} is not valid; allowed values: {', '.join(allowed)}.")
