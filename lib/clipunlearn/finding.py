"""One checked statement of a notebook's "What this shows" (:class:`Finding`) and how a check adds one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["Finding", "add_finding"]


@dataclass
class Finding:
    """One checked statement: ``key`` (its number in the notebook), ``statement``, ``holds`` and ``values``."""

    key: str
    statement: str
    holds: bool
    values: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def finding_value(value) -> float:
    """A compared number as a finding stores it: rounded to 4 decimals, None as NaN."""
    return float("nan") if value is None else round(float(value), 4)


def add_finding(out: list, key: str, statement: str, holds, **values) -> None:
    """Append the :class:`Finding` ``key`` / ``statement`` / ``holds`` with its compared ``values`` to ``out``."""
    out.append(Finding(key, statement, bool(holds), {k: finding_value(v) if not isinstance(v, str) else v
                                                    for k, v in values.items()}))
