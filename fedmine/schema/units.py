"""Units: the small table of conversions an organisation's mapping may declare.

A canonical feature names its unit (``unit: mg/dL``); an organisation declares
the unit its source uses (``units: {glucose: mmol/L}``) and harmonisation
converts with ``canonical = value * scale + offset``. Every unit belongs to one
dimension and is defined by its affine map onto the dimension's base unit;
two units convert only within a dimension. Molar and mass concentrations
differ by the substance's molar mass, so those conversions also need the
feature's ``quantity`` (``glucose``, ``cholesterol``, ``triglycerides``).

Spellings are matched case-insensitively after trimming; each unit lists its
aliases (``°C``, ``celsius``, ``degC``).
"""

from __future__ import annotations

from dataclasses import dataclass


class UnitError(ValueError):
    """A unit the table does not know, or two units that do not convert."""


@dataclass(frozen=True)
class Unit:
    """One unit: ``base = value * factor + offset`` in its dimension's base unit."""

    name: str
    dimension: str
    factor: float
    offset: float = 0.0
    aliases: tuple[str, ...] = ()


_DAYS_PER_YEAR = 365.25

UNITS: tuple[Unit, ...] = (
    # temperature (base: degrees Celsius)
    Unit("C", "temperature", 1.0, 0.0, ("°c", "celsius", "degc", "deg c")),
    Unit("F", "temperature", 5.0 / 9.0, -32.0 * 5.0 / 9.0, ("°f", "fahrenheit", "degf", "deg f")),
    Unit("K", "temperature", 1.0, -273.15, ("kelvin",)),
    # counts and amounts (base: units)
    Unit("units", "count", 1.0, 0.0, ("unit", "ones", "1")),
    Unit("thousands", "count", 1e3, 0.0, ("thousand", "1000", "1e3")),
    Unit("millions", "count", 1e6, 0.0, ("million", "mio", "1e6")),
    Unit("billions", "count", 1e9, 0.0, ("billion", "bn", "1e9")),
    # durations (base: days)
    Unit("seconds", "duration", 1.0 / 86400.0, 0.0, ("s", "sec", "second")),
    Unit("minutes", "duration", 1.0 / 1440.0, 0.0, ("min", "minute")),
    Unit("hours", "duration", 1.0 / 24.0, 0.0, ("h", "hour")),
    Unit("days", "duration", 1.0, 0.0, ("d", "day")),
    Unit("weeks", "duration", 7.0, 0.0, ("week", "wk")),
    Unit("months", "duration", _DAYS_PER_YEAR / 12.0, 0.0, ("month", "mo")),
    Unit("years", "duration", _DAYS_PER_YEAR, 0.0, ("year", "yr", "y")),
    # rates per period (base: per year)
    Unit("daily", "rate", _DAYS_PER_YEAR, 0.0, ("per day", "/day")),
    Unit("weekly", "rate", _DAYS_PER_YEAR / 7.0, 0.0, ("per week", "/week")),
    Unit("monthly", "rate", 12.0, 0.0, ("per month", "/month")),
    Unit("quarterly", "rate", 4.0, 0.0, ("per quarter", "/quarter")),
    Unit("yearly", "rate", 1.0, 0.0, ("per year", "/year", "annual", "annually")),
    # mass (base: kilograms)
    Unit("kg", "mass", 1.0, 0.0, ("kilogram", "kilograms")),
    Unit("g", "mass", 1e-3, 0.0, ("gram", "grams")),
    Unit("lb", "mass", 0.45359237, 0.0, ("lbs", "pound", "pounds")),
    # length (base: metres)
    Unit("m", "length", 1.0, 0.0, ("metre", "meter", "metres", "meters")),
    Unit("cm", "length", 0.01, 0.0, ("centimetre", "centimeter")),
    Unit("mm", "length", 0.001, 0.0, ("millimetre", "millimeter")),
    Unit("km", "length", 1000.0, 0.0, ("kilometre", "kilometer")),
    Unit("in", "length", 0.0254, 0.0, ("inch", "inches")),
    Unit("ft", "length", 0.3048, 0.0, ("foot", "feet")),
    # fractions (base: fraction of one)
    Unit("fraction", "ratio", 1.0, 0.0, ("ratio", "share")),
    Unit("%", "ratio", 0.01, 0.0, ("percent", "pct")),
    # concentrations (base: mg/dL); mmol/L needs the substance
    Unit("mg/dL", "concentration", 1.0, 0.0, ("mg/dl", "mg per dl")),
    Unit("g/L", "concentration", 100.0, 0.0, ("g/l",)),
    Unit("mmol/L", "molar", 1.0, 0.0, ("mmol/l",)),
)

#: mg/dL per mmol/L of each substance (its molar mass / 10).
MOLAR_MASS_FACTORS: dict[str, float] = {
    "glucose": 18.016,
    "cholesterol": 38.67,
    "triglycerides": 88.57,
}

_BY_SPELLING: dict[str, Unit] = {}
for _u in UNITS:
    for _spelling in (_u.name, *_u.aliases):
        _key = _spelling.strip().lower()
        assert _BY_SPELLING.get(_key, _u) is _u, f"unit spelling {_spelling!r} is ambiguous"
        _BY_SPELLING[_key] = _u


def known_units() -> list[str]:
    """Every unit's canonical spelling, in table order."""
    return [u.name for u in UNITS]


def lookup(spelling: str) -> Unit:
    """The unit written ``spelling``.

    Raises
    ------
    UnitError
        An unknown spelling; the message lists the known units.
    """
    unit = _BY_SPELLING.get(str(spelling).strip().lower())
    if unit is None:
        raise UnitError(f"unknown unit {spelling!r}; known: {', '.join(known_units())}")
    return unit


def _same_dimension(unit: Unit) -> list[str]:
    return [u.name for u in UNITS if u.dimension == unit.dimension]


def conversion(source: str, target: str, *, quantity: str | None = None) -> tuple[float, float]:
    """``(scale, offset)`` with ``target_value = source_value * scale + offset``.

    Parameters
    ----------
    source : the organisation's unit.
    target : the canonical feature's unit.
    quantity : what is measured; needed between mmol/L and mass concentrations.

    Raises
    ------
    UnitError
        Unknown units, different dimensions, or a molar conversion without a
        known substance.
    """
    src, dst = lookup(source), lookup(target)
    molar = {"molar", "concentration"}
    if {src.dimension, dst.dimension} <= molar and src.dimension != dst.dimension:
        key = (quantity or "").strip().lower()
        if key not in MOLAR_MASS_FACTORS:
            raise UnitError(
                f"{source} -> {target} depends on the substance; set the feature's quantity to one of: "
                f"{', '.join(sorted(MOLAR_MASS_FACTORS))} (got {quantity!r})"
            )
        per_mmol = MOLAR_MASS_FACTORS[key]
        if src.dimension == "molar":  # mmol/L -> mg/dL -> target
            return per_mmol * src.factor / dst.factor, 0.0
        return src.factor / (per_mmol * dst.factor), 0.0
    if src.dimension != dst.dimension:
        raise UnitError(
            f"cannot convert {source} ({src.dimension}) to {target} ({dst.dimension}); "
            f"units of {dst.dimension}: {', '.join(_same_dimension(dst))}"
        )
    # base = v * fs + os ; target = (base - od) / fd
    scale = src.factor / dst.factor
    offset = (src.offset - dst.offset) / dst.factor
    return scale, offset


def likely_factors(quantity: str | None = None) -> list[tuple[float, str]]:
    """Scale factors that often explain a shifted distribution, each with a name for people.

    Substance factors are included only for ``quantity`` naming that substance
    (or a feature name containing it).
    """
    out: list[tuple[float, str]] = [
        (1e3, "thousands -> units"),
        (1e-3, "units -> thousands"),
        (1e6, "millions -> units"),
        (1e-6, "units -> millions"),
        (12.0, "monthly -> yearly"),
        (1 / 12.0, "yearly -> monthly, or months -> years"),
        (100.0, "fraction -> %"),
        (0.01, "% -> fraction"),
        (60.0, "minutes -> seconds"),
        (1 / 60.0, "seconds -> minutes"),
    ]
    key = (quantity or "").lower()
    for substance, f in MOLAR_MASS_FACTORS.items():
        if substance in key:
            out += [(f, f"{substance} mmol/L -> mg/dL"), (1 / f, f"{substance} mg/dL -> mmol/L")]
    return out
