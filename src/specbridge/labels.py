"""The stellar labels specbridge predicts: names, FITS columns, units, descriptions and plot
labels, defined once.

The order of :data:`LABELS` is the order of the ``labels`` arrays of the preprocessed shards
(and of the manifest's label columns); a run may predict a subset (config ``labels``), kept in
this order. Units are those of the FITS ``TUNITn`` keywords: "K" for the effective temperature
and "dex" for the others (log g is log10 of g in cm s^-2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Label:
    name: str         # specbridge's name: config, shard attributes, table rows
    column: str       # FITS / HDF5 column name in the manifest and the VAC
    unit: str         # TUNITn string
    description: str  # what it is, as in the VAC column descriptions
    tex: str          # matplotlib mathtext name for figures (see axis_label)


LABELS: tuple[Label, ...] = (
    Label("teff", "TEFF", "K", "effective temperature", r"$T_\mathrm{eff}$"),
    Label("logg", "LOGG", "dex", "log10(g / cm s^-2)", r"$\log g$"),
    Label("feh", "FEH", "dex", "[Fe/H]", "[Fe/H]"),
    Label("alpha_fe", "ALPHA_FE", "dex", "[alpha/Fe]", r"[$\alpha$/Fe]"),
)

BY_NAME: dict[str, Label] = {lab.name: lab for lab in LABELS}
LABEL_NAMES: tuple[str, ...] = tuple(lab.name for lab in LABELS)
UNITS: dict[str, str] = {lab.name: lab.unit for lab in LABELS}


def label(name: str) -> Label:
    """The :class:`Label` called ``name`` (KeyError for an unknown label)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown label {name!r}; known: {', '.join(LABEL_NAMES)}") from None


def unit(name: str) -> str:
    """Unit string of a label ("" for a name that is not a label)."""
    return UNITS.get(name, "")


def column(name: str) -> str:
    """FITS/HDF5 column name of a label, e.g. ``column("alpha_fe") == "ALPHA_FE"``."""
    return label(name).column


def description(name: str) -> str:
    return label(name).description


def tex(name: str) -> str:
    """Mathtext name of a label for figures (the name itself for an unknown one)."""
    return BY_NAME[name].tex if name in BY_NAME else name


def axis_label(name: str) -> str:
    """Figure axis label with unit, e.g. ``$T_\\mathrm{eff}$ (K)``."""
    return f"{tex(name)} ({unit(name)})"


def index(name: str) -> int:
    """Position of a label in :data:`LABEL_NAMES` (the column of the shards' ``labels``)."""
    return LABEL_NAMES.index(name)
