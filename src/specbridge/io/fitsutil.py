"""Small fitsio helpers shared by the survey readers: opening with clear errors, HDU lookup."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import fitsio


class FormatError(ValueError):
    """A file is not what its reader expects; ``flag`` names the flag bit (specbridge.flags)."""

    def __init__(self, path: str | Path, reason: str, flag: str = "UNREADABLE_FILE"):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.flag = flag


def fits_text(v) -> str:
    """A FITS string value (bytes or str, space-padded) as a stripped str."""
    return (v.decode() if isinstance(v, bytes) else str(v)).strip()


def open_fits(path: str | Path) -> fitsio.FITS:
    """Open a FITS file read-only (gzip allowed), turning every failure into a FormatError."""
    path = str(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise FormatError(path, f"cannot stat file: {exc.strerror}") from None
    if size == 0:
        raise FormatError(path, "zero-length file")
    try:
        fits = fitsio.FITS(path, "r")
    except (OSError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatError(path, f"not a readable FITS file ({msg})") from None
    # cfitsio reads every header on open but data lazily: a file cut inside the last HDU's
    # data opens fine, so compare the size the headers promise with the size on disk.
    # (Compressed .gz files are decompressed whole on open, which catches their truncation.)
    if not path.endswith((".gz", ".fz", ".bz2")):
        expected = fits[-1].get_offsets()["data_end"]
        if expected > size:
            fits.close()
            raise FormatError(path, f"truncated FITS file ({size} of {expected} bytes)")
    return fits


def extnames(fits: fitsio.FITS) -> set[str]:
    """Upper-case EXTNAMEs of all HDUs of an open file."""
    return {h.get_extname().upper() for h in fits if h.get_extname()}


def require_hdus(fits: fitsio.FITS, path: str | Path, names: list[str]) -> None:
    """Raise FormatError(flag MISSING_HDU) unless every named HDU is present."""
    missing = [n for n in names if n.upper() not in extnames(fits)]
    if missing:
        raise FormatError(path, f"missing HDU(s) {', '.join(missing)}", flag="MISSING_HDU")


def guarded_read(path: str | Path, what: str, func, *args, **kwargs):
    """Call a fitsio read and turn a low-level failure (truncated data...) into a FormatError."""
    try:
        return func(*args, **kwargs)
    except FormatError:
        raise
    except (OSError, ValueError, IndexError, KeyError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatError(path, f"cannot read {what} ({msg})") from None


@contextlib.contextmanager
def opened(source: str | Path | fitsio.FITS) -> Iterator[tuple[fitsio.FITS, str]]:
    """Yield ``(fits, path)`` for a path (opened here, closed on exit) or an already open
    fitsio.FITS (left open), so that a caller reading several HDUs opens the file once."""
    if isinstance(source, fitsio.FITS):
        yield source, str(source._filename)
        return
    fits = open_fits(source)
    try:
        yield fits, str(source)
    finally:
        fits.close()
