"""Where every file of the catalogue lives, in DESI's conventions (desispec's HEALPix layout,
fastspecfit's VAC pages): per-HEALPix files under
``healpix/SURVEY/PROGRAM/HPIXGROUP/HEALPIX/`` with HPIXGROUP = HEALPIX // 100, merged
catalogues per SURVEY-PROGRAM, and the catalogue's version in every file name. The one place
that builds these paths."""

from __future__ import annotations

from pathlib import Path

#: path component of an unknown (empty) SURVEY or PROGRAM
UNKNOWN = "unknown"
#: HEALPix directory and file tag of spectra without a position (HEALPIX = -1)
NOPIX = "nopix"


def part(text: str) -> str:
    """A SURVEY or PROGRAM value as a path component ('' becomes ``unknown``)."""
    return text or UNKNOWN


def hpixgroup(pixel: int) -> int:
    """desispec's HEALPix group directory of a pixel: HEALPIX // 100."""
    return int(pixel) // 100


def healpix_dir(tree: str | Path, survey: str, program: str, pixel: int) -> Path:
    """``tree/healpix/SURVEY/PROGRAM/HPIXGROUP/HEALPIX`` (``.../nopix`` for pixel -1)."""
    base = Path(tree) / "healpix" / part(survey) / part(program)
    return base / NOPIX if pixel < 0 else base / str(hpixgroup(pixel)) / str(int(pixel))


def healpix_file(tree: str | Path, name: str, version: str, survey: str, program: str,
                 pixel: int) -> Path:
    """The per-HEALPix file ``<name>-SURVEY-PROGRAM-HEALPIX-<version>.fits`` in its
    directory (:func:`healpix_dir`)."""
    tag = NOPIX if pixel < 0 else str(int(pixel))
    return healpix_dir(tree, survey, program, pixel) / (
        f"{name}-{part(survey)}-{part(program)}-{tag}-{version}.fits")


def merged_file(tree: str | Path, name: str, version: str, survey: str, program: str) -> Path:
    """The merged catalogue of one SURVEY-PROGRAM: ``tree/<name>-SURVEY-PROGRAM-<version>.fits``."""
    return Path(tree) / f"{name}-{part(survey)}-{part(program)}-{version}.fits"


def catalogue_file(directory: str | Path, name: str, version: str, ext: str) -> Path:
    """The catalogue of every observation: ``directory/<name>-<version>.<ext>``."""
    return Path(directory) / f"{name}-{version}.{ext}"
