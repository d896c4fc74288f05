"""What a spec's TAO keys became: the TAO model it was read as, TAO's defaults filled in for
the keys it leaves out, each key's translation, and the actions it cannot run.

`load_spec` attaches one to the spec (`spec.tao`, None for a spec without TAO keys); the
resolved `experiment.yaml` starts with `yaml_comment()`, the log with `summary()`, and
`oneseg tao explain` prints `explain()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oneseg.tao.defaults import NAMES, NOT_DONE
from oneseg.tao.resolve import Resolution
from oneseg.tao.table import TaoKeyError


@dataclass
class TaoReport:
    flavour: str | None  # "oneformer", "mask2former" or None (TAO keys, model not told)
    defaults: list[tuple[str, Any]]  # (TAO key, TAO's default) filled in
    resolution: Resolution

    @property
    def name(self) -> str:
        return NAMES.get(self.flavour or "", "TAO")

    def summary(self) -> str:
        """One line for the log: the model read, and the TAO defaults filled in."""
        if not self.defaults:
            return f"read as a {self.name} spec"
        keys = ", ".join(f"{k}={v!r}" for k, v in self.defaults)
        return f"read as a {self.name} spec; TAO's defaults for the keys it leaves out: {keys}"

    def yaml_comment(self) -> str:
        lines = [f"# {self.summary()}"]
        for key, what in self.resolution.lines:
            lines.append(f"#   {key}: {what}" if key else f"#   {what.strip()}")
        for action, message in self.resolution.refusals.items():
            lines.append(f"#   {action} refused: {message}")
        if self.flavour in NOT_DONE:
            lines.append(f"#   not done: {NOT_DONE[self.flavour]}")
        return "\n".join(lines) + "\n"

    def explain(self) -> str:
        """Each TAO key with what oneseg does with it, for a person to read before a run."""
        default_keys = {k for k, _ in self.defaults}
        out = [f"{self.summary()}.", ""]
        width = max((len(k) for k, _ in self.resolution.lines), default=0)
        width = min(width, 60)
        for key, what in self.resolution.lines:
            filled = [k for k in key.split(", ") if k in default_keys]
            mark = f" (TAO default: {', '.join(filled)})" if filled else ""
            mark = " (TAO default)" if filled == [key] else mark
            out.append(f"{key:<{width}}  {what}{mark}" if key else f"{'':<{width}}{what}")
        listed = {k for key, _ in self.resolution.lines for k in key.split(", ")}
        for key, value in self.defaults:  # oneseg's own keys, set to TAO's default
            if key not in listed:
                out.append(f"{key:<{width}}  = {value!r} (TAO default; spelled as oneseg's key)")
        for action, message in self.resolution.refusals.items():
            out.append(f"{action}: refused: {message}")
        if self.flavour in NOT_DONE:
            out.append(f"not done: {NOT_DONE[self.flavour]}")
        return "\n".join(out) + "\n"

    def refuse(self, action: str) -> None:
        """Raise TaoKeyError if the spec holds a TAO value `action` cannot honour."""
        message = self.resolution.refusals.get(action)
        if message:
            raise TaoKeyError(message)
