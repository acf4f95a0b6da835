"""The report: one HTML page with the evaluation's answers, the selection, per-regime tables
and figures (one-to-one, residuals vs [Fe/H], per-regime scatter) and the VAC's overview; the
figures are separate PNG files, also gathered by ``snakemake --report``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from specbridge.atomic import atomic_output
from specbridge.errors import UserError, describe
from specbridge.report.page import FIGURES, page_html
from specbridge.stages import declared

CONFIG_SECTIONS = ("evaluation", "inference", "report")
log = logging.getLogger("specbridge.report")


def read_evaluation(inputs: dict[str, Any]) -> dict[str, Any]:
    """The evaluation tables, the test split's reference labels (n, n_labels) and predictions
    ({candidate or 'routed': (value, error)}), and the VAC's tables."""
    import h5py
    from astropy.table import Table

    from specbridge.vac.catalogue import read_fits_tables

    try:
        out = {k: Table.read(inputs[k], format="ascii.ecsv")
               for k in ("metrics", "selection", "summary")}
        out["calibration"] = (Table.read(inputs["calibration"], format="ascii.ecsv")
                              if inputs.get("calibration") else None)
        with h5py.File(inputs["predictions"], "r") as h:
            out["labels"] = [str(v) for v in h.attrs["labels"]]
            out["candidates"] = [str(v) for v in h.attrs["candidates"]]
            test = h["split"][()] == 2
            out["ref"] = h["ref"][()][test]
            out["preds"] = {n: (h[f"{n}/value"][()][test], h[f"{n}/error"][()][test])
                            for n in [*out["candidates"], "routed"]}
        out["vac"] = read_fits_tables(inputs["vac"])
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read the evaluation or the VAC: {describe(exc)}") from None
    return out


def read_scoreboard(path: str | None) -> Any:
    """The real-data scoreboard table (None without a path)."""
    if not path:
        return None
    from astropy.table import Table

    try:
        return Table.read(path, format="ascii.ecsv")
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot read the scoreboard: {describe(exc)}") from None


def read_foundation(path: str | None) -> dict[str, Any] | None:
    """The pretrained SpecFormer checkpoint's metadata (None without a path)."""
    if not path:
        return None
    from specbridge.models.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path, ("specformer",)).meta
    except OSError as exc:
        raise UserError(f"cannot read {path}: {describe(exc)}") from None


def read_label_efficiency(path: str | None) -> Any:
    """The label-efficiency benchmark's table (None without a path); its path in meta."""
    if not path:
        return None
    from astropy.table import Table

    try:
        t = Table.read(path, format="ascii.ecsv")
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot read the label-efficiency table: "
                        f"{describe(exc)}") from None
    missing = {"strategy", "n_labelled", "label", "regime", "n_test", "sigma_spectrum",
               "sigma_embedding", "ratio", "ratio_lo", "ratio_hi",
               "embedding_better"} - set(t.colnames)
    if missing:
        raise UserError(f"{path}: not a label-efficiency table (no {sorted(missing)})")
    t.meta["path"] = str(path)
    return t


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None) -> int:
    """The report page ``outputs['page']`` (figures beside it) from the evaluation's
    ``inputs['metrics']``, ``['selection']``, ``['summary']``, ``['predictions']`` (and
    ``['calibration']``, optional), the VAC
    ``inputs['vac']``, the real-set tables ``inputs['real']`` (list, may be empty) and their
    scoreboard ``inputs['scoreboard']`` (ECSV of the scoreboard stage; optional) and the
    pretrained SpecFormer ``inputs['specformer']`` (optional: the foundation-model section) and
    the label-efficiency benchmark's table ``inputs['label_efficiency']`` (optional)."""
    from specbridge import flags
    from specbridge.report import figures

    cfg = declared(cfg, CONFIG_SECTIONS)
    out = Path(outputs["page"])
    figdir = out.parent
    figdir.mkdir(parents=True, exist_ok=True)
    ev = read_evaluation(inputs)
    labels, cands, preds, summary = ev["labels"], ev["candidates"], ev["preds"], ev["summary"]
    thr = cfg["evaluation"]["feh_threshold"]
    feh_ref = ev["ref"][:, labels.index("feh")]
    zs = str(summary["zeroshot"][labels.index("feh")]) or cands[0]
    ft = [str(v) for v in summary["finetuned"] if str(v)]
    best_ft = max(set(ft), key=ft.count) if ft else cands[-1]
    shown = {zs: preds[zs], best_ft: preds[best_ft], "routed": preds["routed"]}
    figures.one_to_one(figdir / FIGURES[0], ev["ref"], shown, labels, feh_ref, thr)
    figures.residual_vs_feh(figdir / FIGURES[1], ev["ref"], shown, labels, feh_ref, thr)
    figures.regime_sigma(figdir / FIGURES[2], ev["metrics"], labels, [*cands, "routed"])
    p = ev["vac"]["PARAMS"]
    counts = flags.counts(p["FLAGS"])
    figures.vac_overview(figdir / FIGURES[3], p, labels, {k: v for k, v in counts.items() if v})
    text = page_html(vac_path=inputs["vac"], params=p, metrics=ev["metrics"],
                     selection=ev["selection"], summary=summary, labels=labels,
                     shown=(zs, best_ft), threshold=thr,
                     router=str(ev["selection"].meta.get("router", cfg["inference"]["router"])),
                     real=inputs.get("real") or [], report_dir=out.parent,
                     scoreboard=read_scoreboard(inputs.get("scoreboard")),
                     calibration=ev["calibration"],
                     foundation=read_foundation(inputs.get("specformer")),
                     label_efficiency=read_label_efficiency(inputs.get("label_efficiency")))
    with atomic_output(out) as tmp:
        Path(tmp).write_text(text)
    log.info("wrote %s and %d figures", out, len(FIGURES))
    return 0
