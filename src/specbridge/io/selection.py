"""Target selection, applied to manifest rows: which spectra go on to preprocessing.

The cuts come from the config's ``selection`` block (workflow/schemas/config.schema.yaml). A row
that fails a cut keeps its manifest row with the fatal bit ``NOT_SELECTED`` and a reason naming
the cut, so that every later stage skips it and the catalogue still accounts for it.

DESI (as the Milky Way Survey's value-added catalogue chooses what it fits):

- ``objtype``: FIBERMAP OBJTYPE values kept (``TGT``; sky, ``BAD`` and ``NON`` fibres are not
  targets);
- ``zwarn_reject``: redrock ZWARN bits (by name, :data:`ZWARN_BITS`) that reject a spectrum;
- ``spectype``: redrock SPECTYPE values accepted (the *class* criterion);
- ``target_bits``: ``{column: "any" | [bit name or number, ...]}``, the *target* criterion: a
  row passes when, for at least one column, any listed bit (``any``: any bit at all) is set in
  the manifest's value of that column (DESI_TARGET or MWS_TARGET, the main survey's and the
  SV1-3 columns combined, see io.manifest);
- ``combine``: ``any`` (the class *or* the target criterion, the MWS VAC's rule: MWS targets
  and every spectrum redrock calls a star) or ``all`` (both). An empty ``spectype`` or
  ``target_bits`` switches that criterion off.

LAMOST: ``class``, the pipeline CLASS values accepted (``STAR``, as LAMOST's stellar
parameter catalogues).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specbridge import flags

#: redrock's ZWARN bits (redrock.zwarning / desidatamodel bitmasks).
ZWARN_BITS: dict[str, int] = {
    "SKY": 0, "LITTLE_COVERAGE": 1, "SMALL_DELTA_CHI2": 2, "NEGATIVE_MODEL": 3,
    "MANY_OUTLIERS": 4, "Z_FITLIMIT": 5, "NEGATIVE_EMISSION": 6, "UNPLUGGED": 7,
    "BAD_TARGET": 8, "NODATA": 9, "BAD_MINFLUX": 10, "POORDATA": 11,
}
#: The DESI_TARGET bits that mean the same in the main survey and in SV1, SV2 and SV3
#: (desitarget's ``*_targetmask.yaml``); other bits are given by number.
DESI_TARGET_BITS: dict[str, int] = {"BGS_ANY": 60, "MWS_ANY": 61, "SCND_ANY": 62}
#: manifest columns that target_bits may name
TARGET_COLUMNS = ("DESI_TARGET", "MWS_TARGET")


def bit_mask(bits: Sequence[str | int], names: Mapping[str, int], what: str) -> int:
    """The integer with the given bits set; ``bits`` are names of ``names`` or bit numbers
    (0-63). ValueError naming ``what`` for an unknown name or a number out of range."""
    mask = 0
    for b in bits:
        if isinstance(b, str):
            if b not in names:
                raise ValueError(f"{what}: unknown bit {b!r}; known: {', '.join(names)}")
            b = names[b]
        if not 0 <= int(b) <= 63:
            raise ValueError(f"{what}: bit {b} outside 0..63")
        mask |= 1 << int(b)
    return mask


@dataclass(frozen=True)
class DesiSelection:
    """DESI cuts (see the module docstring). ``target_masks``: column -> bit mask, where -1
    means any bit; ``zwarn_mask``: rejecting ZWARN bits."""

    objtype: tuple[str, ...] = ("TGT",)
    spectype: tuple[str, ...] = ("STAR",)
    target_masks: dict[str, int] = field(default_factory=lambda: {
        "DESI_TARGET": 1 << DESI_TARGET_BITS["MWS_ANY"], "MWS_TARGET": -1})
    zwarn_mask: int = 0
    combine: str = "any"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DesiSelection:
        """From ``selection.desi`` of the validated config."""
        masks = {}
        for col, bits in cfg.get("target_bits", {}).items():
            if col not in TARGET_COLUMNS:
                raise ValueError(f"selection.desi.target_bits: unknown column {col!r}; "
                                 f"one of {', '.join(TARGET_COLUMNS)}")
            masks[col] = -1 if bits == "any" else bit_mask(
                bits, DESI_TARGET_BITS if col == "DESI_TARGET" else {},
                f"selection.desi.target_bits.{col}")
        return cls(tuple(v.upper() for v in cfg.get("objtype", ["TGT"])),
                   tuple(v.upper() for v in cfg.get("spectype", ["STAR"])), masks,
                   bit_mask(cfg.get("zwarn_reject", []), ZWARN_BITS,
                            "selection.desi.zwarn_reject"),
                   cfg.get("combine", "any"))


@dataclass(frozen=True)
class LamostSelection:
    """LAMOST cut: the pipeline CLASS values accepted (empty: no cut)."""

    classes: tuple[str, ...] = ("STAR",)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> LamostSelection:
        """From ``selection.lamost`` of the validated config."""
        return cls(tuple(v.upper() for v in cfg.get("class", ["STAR"])))


@dataclass(frozen=True)
class Selection:
    """The target selection of both surveys."""

    desi: DesiSelection = field(default_factory=DesiSelection)
    lamost: LamostSelection = field(default_factory=LamostSelection)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Selection:
        """From the config's ``selection`` block (missing keys: the defaults)."""
        return cls(DesiSelection.from_config(cfg.get("desi", {})),
                   LamostSelection.from_config(cfg.get("lamost", {})))


def _in(values: np.ndarray, allowed: tuple[str, ...]) -> np.ndarray:
    """(n,) bool: ``values`` (str (n,)) is one of ``allowed``."""
    return np.isin(values, np.array(allowed, dtype=values.dtype))


def _target_hit(rows: np.ndarray, masks: Mapping[str, int]) -> np.ndarray:
    """(n,) bool: some column of ``masks`` has one of its bits set (-1: any bit)."""
    hit = np.zeros(rows.size, bool)
    for col, mask in masks.items():
        v = rows[col].astype(np.int64).view(np.uint64)
        hit |= (v != 0) if mask == -1 else (v & np.uint64(mask)) != 0
    return hit


def _reasons_by_group(fields: np.ndarray, bad: np.ndarray, explain) -> np.ndarray:
    """(n,) str: ``explain(one row of fields)`` where ``bad`` (n,) bool, '' elsewhere. Each
    distinct combination of ``fields`` (structured (n,)) is explained once, so that 10^7 rows
    cost a handful of string operations."""
    out = np.full(fields.size, "", dtype=object)
    idx = np.flatnonzero(bad)
    if idx.size:
        uniq, inv = np.unique(fields[idx], return_inverse=True)
        text = np.array([explain(u) for u in uniq], dtype=object)
        out[idx] = text[inv.ravel()]
    return out.astype(str) if out.size else np.zeros(0, dtype="U1")


def desi_reasons(rows: np.ndarray, sel: DesiSelection) -> np.ndarray:
    """(n,) str: per row of DESI manifest ``rows`` (n,), why it is not selected ('' if it
    is)."""
    n = rows.size
    bad_obj = ~_in(rows["OBJTYPE"], sel.objtype) if sel.objtype else np.zeros(n, bool)
    zwarn = rows["ZWARN"].astype(np.int64)
    bad_z = (zwarn > 0) & ((zwarn & sel.zwarn_mask) != 0)
    criteria = []
    if sel.spectype:
        criteria.append(_in(rows["CLASS"], sel.spectype))
    if sel.target_masks:
        criteria.append(_target_hit(rows, sel.target_masks))
    if not criteria:
        passed = np.ones(n, bool)
    elif sel.combine == "all":
        passed = np.logical_and.reduce(criteria)
    else:
        passed = np.logical_or.reduce(criteria)
    parts = [f"SPECTYPE {'/'.join(sel.spectype)}" if sel.spectype else "",
             "a selected target bit" if sel.target_masks else ""]
    want = ("not both " if sel.combine == "all" else "neither ") + \
        (" and " if sel.combine == "all" else " nor ").join(filter(None, parts))
    fields = np.zeros(n, dtype=[("obj", rows.dtype["OBJTYPE"]), ("cls", rows.dtype["CLASS"]),
                                ("zw", "i8"), ("dt", "i8"), ("mws", "i8"), ("bo", "?"),
                                ("bz", "?"), ("np", "?")])
    fields["obj"], fields["cls"] = rows["OBJTYPE"], rows["CLASS"]
    fields["zw"] = np.where(bad_z, zwarn & sel.zwarn_mask, 0)
    fields["dt"], fields["mws"] = rows["DESI_TARGET"], rows["MWS_TARGET"]
    fields["bo"], fields["bz"], fields["np"] = bad_obj, bad_z, ~passed

    def explain(f: np.void) -> str:
        why = []
        if f["bo"]:
            why.append(f"OBJTYPE {f['obj'] or '(none)'} not in {'/'.join(sel.objtype)}")
        if f["bz"]:
            why.append("ZWARN " + "|".join(k for k, b in ZWARN_BITS.items()
                                           if int(f["zw"]) & (1 << b)))
        if f["np"]:
            why.append(f"SPECTYPE {f['cls'] or '(none)'}, DESI_TARGET {int(f['dt']):#x}, "
                       f"MWS_TARGET {int(f['mws']):#x}: {want}")
        return "not selected: " + "; ".join(why)

    return _reasons_by_group(fields, bad_obj | bad_z | ~passed, explain)


def lamost_reasons(rows: np.ndarray, sel: LamostSelection) -> np.ndarray:
    """(n,) str: per row of LAMOST manifest ``rows`` (n,), why it is not selected ('' if it
    is)."""
    bad = ~_in(rows["CLASS"], sel.classes) if sel.classes else np.zeros(rows.size, bool)
    return _reasons_by_group(rows["CLASS"], bad, lambda c: f"not selected: CLASS "
                             f"{c or '(none)'} not in {'/'.join(sel.classes)}")


def selection_reasons(survey: str, rows: np.ndarray, selection: Selection) -> np.ndarray:
    """(n,) str: per manifest row of ``survey``, the reason it is not selected ('' if it is).
    Rows already carrying a fatal flag are not judged (they already say why they are out)."""
    if survey not in ("desi", "lamost"):
        raise ValueError(f"unknown survey {survey!r}")
    judge = ~flags.is_fatal(rows["FLAGS"])
    sub = rows[judge]
    reasons = (desi_reasons(sub, selection.desi) if survey == "desi"
               else lamost_reasons(sub, selection.lamost))
    out = np.full(rows.size, "", dtype=reasons.dtype if reasons.size else "U1")
    out[judge] = reasons
    return out
