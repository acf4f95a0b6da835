"""The one definition of specbridge's per-spectrum flag bits.

Every table downstream of the input (manifest, preprocessed shards, predictions, VAC) carries an
integer column ``FLAGS`` built from these bits, and a spectrum that could not be processed keeps
its row with the bit that says why. Bits marked *fatal* mean the spectrum cannot be used; the
others are information (e.g. no reference label: usable for inference, not for training).

The table :data:`FLAG_BITS` is also rendered into docs/datamodel/flags.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FlagBit:
    name: str
    bit: int
    fatal: bool
    description: str

    @property
    def value(self) -> int:
        return 1 << self.bit


FLAG_BITS: tuple[FlagBit, ...] = (
    FlagBit("UNREADABLE_FILE", 0, True, "file missing, empty, truncated or not FITS"),
    FlagBit("MISSING_HDU", 1, True, "an HDU the format needs is absent"),
    FlagBit("BAD_SHAPE", 2, True, "arrays have inconsistent or unexpected shapes"),
    FlagBit("NONFINITE", 3, False, "some flux/ivar pixels are NaN or inf (they are masked)"),
    FlagBit("NO_VALID_PIXELS", 4, True, "no pixel with ivar > 0 and finite flux on the grid"),
    FlagBit("NO_COVERAGE", 5, True, "wavelengths do not cover the common grid (4000-5600 A)"),
    FlagBit("DUPLICATE_ID", 6, True, "ID repeated in this survey (DESI: in one SURVEY and "
            "PROGRAM; the highest-S/N copy is kept)"),
    FlagBit("EMPTY_FIBER", 7, True, "DESI fibre with negative TARGETID (unassigned or stuck)"),
    FlagBit("SKY_FIBER", 8, True, "sky fibre (OBJTYPE SKY)"),
    FlagBit("NO_ID", 9, False, "no survey ID in the file (a synthetic negative ID is given)"),
    FlagBit("NO_LABEL", 10, False, "no reference label matched"),
    FlagBit("AMBIGUOUS_MATCH", 11, False, "more than one label-catalogue entry within the radius"),
    FlagBit("BAD_LABEL", 12, False, "the matched reference label is flagged bad or incomplete"),
    FlagBit("NO_REDSHIFT", 13, False, "no redshift for this spectrum (rest frame assumed)"),
    FlagBit("NOT_STAR", 14, False, "survey classification is not STAR"),
    FlagBit("LOW_SNR", 15, False, "median S/N per pixel on the grid below 1"),
    FlagBit("BAD_HEADER", 16, False, "a header value is missing or malformed (NaN recorded)"),
    FlagBit("WAVE_FROM_HEADER", 17, False, "the file's wavelength row disagrees with its header "
            "(COEFF0/COEFF1) or is not increasing; the header grid was used"),
    FlagBit("NOT_SELECTED", 18, True, "left out by the target selection (config selection: "
            "SPECTYPE/CLASS, ZWARN, OBJTYPE, target bits); the reason names the cut"),
    FlagBit("PREPROCESS_FAILED", 20, True, "preprocessing raised an error for this spectrum"),
    FlagBit("PREDICTION_FAILED", 24, True, "no prediction could be made"),
    FlagBit("NOT_ROUTED", 25, False, "the router candidate gave no [Fe/H]; the regime came from "
            "another candidate's value (or none)"),
    FlagBit("OOD_SPECTRUM", 26, False, "out of domain in spectrum space: the SpecFormer's "
            "masked-reconstruction score, or its embedding's distance from the training "
            "spectra's, is above its threshold (a percentile of the survey's in-domain "
            "spectra's: labelled DESI stars outside the test split, held-out LAMOST spectra; "
            "config inference.ood)"),
    FlagBit("OOD_LABELS", 27, False, "out of domain in label space: a served label lies outside "
            "the training labels' range, or the served labels together lie far from every "
            "training star's (beyond the training labels' own nearest-neighbour distances), or "
            "the fine-tuned candidates disagree with it beyond their combined errors"),
)

BY_NAME: dict[str, FlagBit] = {f.name: f for f in FLAG_BITS}
FATAL_MASK: int = sum(f.value for f in FLAG_BITS if f.fatal)


def flag(name: str) -> int:
    """Integer value of the named bit, e.g. ``flag("NO_LABEL") == 1 << 10``."""
    return BY_NAME[name].value


def names(value: int) -> list[str]:
    """Names of the bits set in ``value``, lowest bit first."""
    return [f.name for f in FLAG_BITS if value & f.value]


def counts(values: np.ndarray) -> dict[str, int]:
    """{name: rows with that bit set} over an integer array of flag values, every bit in
    table order (0 where none)."""
    arr = np.asarray(values, dtype=np.int64)
    return {f.name: int(((arr & f.value) != 0).sum()) for f in FLAG_BITS}


def decode(values: np.ndarray | int, sep: str = ",") -> np.ndarray:
    """The bit names of each value of an integer array (any shape), joined by ``sep``, as a
    str array of the same shape ('' for 0): what a FLAG_NAMES column would hold, derived from
    FLAGS (each distinct value decoded once)."""
    arr = np.asarray(values, dtype=np.int64)
    uniq, inverse = np.unique(arr, return_inverse=True)
    text = np.array([sep.join(names(int(v))) for v in uniq] or [""], dtype=str)
    return text[inverse].reshape(arr.shape)


def is_fatal(flags: np.ndarray | int) -> np.ndarray | bool:
    """True where any fatal bit is set; works on scalars and integer arrays of any shape."""
    return (np.asarray(flags, dtype=np.int64) & FATAL_MASK) != 0


def markdown_table() -> str:
    """The bit table as markdown (for the datamodel pages)."""
    rows = ["| bit | value | name | fatal | meaning |", "|---|---|---|---|---|"]
    rows += [f"| {f.bit} | {f.value} | `{f.name}` | {'yes' if f.fatal else 'no'} | "
             f"{f.description} |" for f in FLAG_BITS]
    return "\n".join(rows)


# ---- per-pixel mask bits of the preprocessed spectra (``mask`` in the HDF5 shards) -----------

@dataclass(frozen=True)
class PixelBit:
    name: str
    bit: int
    description: str

    @property
    def value(self) -> int:
        return 1 << self.bit


PIXEL_BITS: tuple[PixelBit, ...] = (
    PixelBit("NO_DATA", 0, "no usable input pixel covers this grid pixel (ivar set to 0)"),
    PixelBit("PARTIAL", 1, "some input pixels in this grid pixel were masked or had ivar 0"),
    PixelBit("INPUT_MASK", 2, "an input pixel's survey mask (DESI MASK, LAMOST ANDMASK) was set"),
    PixelBit("CONTINUUM_BAD", 3, "the continuum fit is not positive here (ivar set to 0)"),
)
PIXEL_BY_NAME: dict[str, PixelBit] = {p.name: p for p in PIXEL_BITS}


def pixel_flag(name: str) -> int:
    """Integer value of the named pixel-mask bit."""
    return PIXEL_BY_NAME[name].value
