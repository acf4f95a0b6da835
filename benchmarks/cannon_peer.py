"""The Cannon, the classical data-driven peer, on the same spectra and splits as the pipeline.

The Cannon (Ness et al. 2015; its maintained package ``annieslasso``, imported as
``thecannon``; quadratic model in the four labels) is trained

* on the LAMOST labelled training set the candidates were pretrained on (the same stars, the
  DESI validation and test stars left out): applied to DESI, it is the zero-shot peer;
* on the DESI fine-tuning set (the same at most ``finetune.n_train`` stars): the fine-tuned
  peer;

and tested on the DESI validation and test stars of ``results/evaluation/predictions.h5``,
on the preprocessed, continuum-normalised spectra the networks see. The score step puts both
next to the candidates and the routed catalogue: robust sigma, bias and coverage of its
errors per label, with 95 % bootstrap intervals over stars, and paired differences.

``thecannon`` needs NumPy < 2, so it lives in a virtual environment of its own and the work is
done in three steps (the middle one in that environment; it imports NumPy and thecannon only):

  python benchmarks/cannon_peer.py export --results results --out /tmp/cannon
  python3 -m venv /tmp/cannon-env && /tmp/cannon-env/bin/pip install "numpy<2" annieslasso
  /tmp/cannon-env/bin/python benchmarks/cannon_peer.py fit --data /tmp/cannon \
      --models zeroshot & /tmp/cannon-env/bin/python benchmarks/cannon_peer.py fit \
      --data /tmp/cannon --models finetuned; wait
  python benchmarks/cannon_peer.py score --results results --data /tmp/cannon \
      --markdown /tmp/cannon/answers.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

LABELS = ("teff", "logg", "feh", "alpha_fe")


def _arrays(ds, batch: int = 512) -> dict[str, np.ndarray]:
    """flux, ivar (n, npix) float32 and labels (n, 4) of a LabelledShards with ivar."""
    parts: dict[str, list[np.ndarray]] = {"flux": [], "ivar": [], "labels": []}
    for b in ds.batches(0, batch, 0, shuffle=False, drop_last=False):
        parts["flux"].append(b.flux)
        parts["ivar"].append(b.ivar)
        parts["labels"].append(b.y)
    return {k: np.concatenate(v) for k, v in parts.items()}


def export(results: Path, out: Path) -> None:
    """Write lamost_train.npz, desi_train.npz and desi_eval.npz (the evaluation rows, in the
    order of predictions.h5) under ``out``."""
    import h5py

    from specbridge.config import load_config
    from specbridge.io.shards import read_index, read_shard
    from specbridge.training.data import LabelledShards, holdout_stars

    cfg = load_config(results / "config" / "resolved.yaml")
    tr, ft = cfg["training"], cfg["finetune"]
    labels = list(cfg["labels"])
    desi = str(results / "preprocessed" / "desi" / "index.h5")
    lamost = str(results / "preprocessed" / "lamost" / "index.h5")
    out.mkdir(parents=True, exist_ok=True)
    held = holdout_stars(desi, ft["val_fraction"], ft["test_fraction"])
    sets = {
        "lamost_train": LabelledShards(lamost, labels, "train", tr["val_fraction"],
                                       with_ivar=True, exclude_stars=held),
        "desi_train": LabelledShards(desi, labels, "train", ft["val_fraction"],
                                     test_fraction=ft["test_fraction"],
                                     max_rows=ft["n_train"], with_ivar=True),
    }
    for name, ds in sets.items():
        a = _arrays(ds)
        np.savez(out / f"{name}.npz", **a)
        print(f"{name}: {a['flux'].shape[0]} spectra")
    with h5py.File(results / "evaluation" / "predictions.h5", "r") as h:
        specid = h["specid"][()]
    want = {int(s): i for i, s in enumerate(specid)}
    flux = np.full((specid.size, cfg["grid"]["npix"]), np.nan, np.float32)
    ivar = np.zeros_like(flux)
    for s in read_index(desi):
        d = read_shard(s["path"], ("specid", "flux", "ivar"))
        for j, sid in enumerate(d["specid"]):
            i = want.get(int(sid))
            if i is not None:
                flux[i], ivar[i] = d["flux"][j], d["ivar"][j]
    found = np.isfinite(flux).all(1)
    np.savez(out / "desi_eval.npz", specid=specid, flux=np.nan_to_num(flux, nan=1.0),
             ivar=ivar, found=found)
    print(f"desi_eval: {found.sum()} of {specid.size} evaluation spectra")


def fit(data: Path, threads: int = 1, which: tuple[str, ...] = ("zeroshot", "finetuned")
        ) -> None:
    """Train the Cannon models ``which`` and test them on the evaluation spectra; writes
    cannon_<key>.npz per model (<key>_value, <key>_error: (n_eval, 4), <key>_times). Two
    processes, one per model, use both cores (thecannon's own pool hung here)."""
    import contextlib
    import io
    import logging

    import thecannon as tc

    logging.getLogger("thecannon").setLevel(logging.WARNING)
    ev = np.load(data / "desi_eval.npz")
    for key, train in (("zeroshot", "lamost_train"), ("finetuned", "desi_train")):
        if key not in which:
            continue
        out: dict[str, np.ndarray] = {}
        t = np.load(data / f"{train}.npz")
        ok = np.isfinite(t["labels"]).all(1) & (t["ivar"] > 0).any(1)
        vec = tc.vectorizer.PolynomialVectorizer(tuple(LABELS), 2)
        model = tc.CannonModel(t["labels"][ok].astype(np.float64),
                               t["flux"][ok].astype(np.float64),
                               t["ivar"][ok].astype(np.float64), vec)
        quiet = contextlib.redirect_stdout(io.StringIO())  # its per-pixel progress bar
        t0 = time.perf_counter()
        with quiet, contextlib.redirect_stderr(io.StringIO()):
            model.train(threads=threads)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            lab, cov, _ = model.test(ev["flux"].astype(np.float64),
                                     ev["ivar"].astype(np.float64), threads=threads)
        t_test = time.perf_counter() - t0
        err = np.sqrt(np.clip(np.diagonal(np.asarray(cov), axis1=1, axis2=2), 0, None))
        bad = ~ev["found"]
        lab[bad], err[bad] = np.nan, np.nan
        out[f"{key}_value"], out[f"{key}_error"] = lab, err
        out[f"{key}_times"] = np.array([ok.sum(), t_train, ev["flux"].shape[0], t_test])
        print(f"{key}: trained on {ok.sum()} spectra in {t_train:.1f} s, tested "
              f"{ev['flux'].shape[0]} in {t_test:.1f} s", flush=True)
        np.savez(data / f"cannon_{key}.npz", **out)


def score(results: Path, data: Path, markdown: Path | None, level: float = 0.95,
          n_boot: int = 1000) -> str:
    """The test-split table: robust sigma [interval] per label of The Cannon (zero-shot and
    fine-tuned), the zero-shot and best fine-tuned candidates and the routed catalogue, and
    paired differences of the routed catalogue against the fine-tuned Cannon."""
    import h5py

    from specbridge.evaluation.bootstrap import bootstrap_interval, paired_difference
    from specbridge.labels import unit

    with h5py.File(results / "evaluation" / "predictions.h5", "r") as h:
        split = h["split"][()]
        ref = h["ref"][()]
        groups = h["star"][()] if "star" in h else h["specid"][()]
        names = [n for n in h.keys() if isinstance(h[n], h5py.Group)]
        pred = {n: (h[n]["value"][()], h[n]["error"][()]) for n in names
                if "value" in h[n] and "error" in h[n]}
    for key in ("zeroshot", "finetuned"):
        c = np.load(data / f"cannon_{key}.npz")
        pred[f"cannon_{key}"] = (c[f"{key}_value"], c[f"{key}_error"])
    test = split == 2
    kw = {"n_boot": n_boot, "level": level, "seed": 0}

    def sigma(name: str, i: int):
        d = pred[name][0][test, i] - ref[test, i]
        ok = np.isfinite(d)
        return bootstrap_interval("robust_sigma", d[ok], groups=groups[test][ok], **kw)

    def coverage(name: str, i: int) -> tuple[float, float]:
        z = np.abs(pred[name][0][test, i] - ref[test, i]) / pred[name][1][test, i]
        z = z[np.isfinite(z)]
        return 100 * float(np.mean(z < 1)), 100 * float(np.mean(z < 2))

    cands = [n for n in pred if n != "routed"]
    lines = [f"Test split: {int(test.sum())} DESI stars; robust sigma with {level:.0%} "
             "bootstrap intervals over stars; coverage of the quoted errors at 1 and 2 sigma "
             "(68.3 / 95.4 % nominal).", "",
             "| label | The Cannon zero-shot | The Cannon fine-tuned | best zero-shot network "
             "| best fine-tuned network | routed catalogue | routed − Cannon fine-tuned |",
             "|---|---|---|---|---|---|---|"]
    cov_lines = ["", "| label | " + " | ".join(["cannon_zeroshot", "cannon_finetuned",
                                                "routed"]) + " |", "|---|---|---|---|"]
    for i, lab in enumerate(LABELS):
        sig = {n: sigma(n, i) for n in cands + ["routed"]}
        zs = [n for n in cands if n.endswith("zeroshot") and not n.startswith("cannon")]
        fts = [n for n in cands if not n.endswith("zeroshot") and not n.startswith("cannon")]
        bz = min(zs, key=lambda n: sig[n][0])
        bf = min(fts, key=lambda n: sig[n][0])

        def cell(n: str, sig=sig) -> str:
            e, lo, hi = sig[n][:3]
            return f"{e:.3g} [{lo:.3g}, {hi:.3g}]"

        d = pred["routed"][0][test, i] - ref[test, i]
        dc = pred["cannon_finetuned"][0][test, i] - ref[test, i]
        pdiff = paired_difference("robust_sigma", d, dc, groups=groups[test], **kw)
        verdict = {"yes": "routed better", "no": "Cannon better"}.get(pdiff[3], pdiff[3])
        lines.append(f"| {lab} ({unit(lab)}) | {cell('cannon_zeroshot')} | "
                     f"{cell('cannon_finetuned')} | {bz} {cell(bz)} | {bf} {cell(bf)} | "
                     f"{cell('routed')} | {pdiff[0]:+.3g} [{pdiff[1]:+.3g}, {pdiff[2]:+.3g}] "
                     f"{verdict} |")
        peers = ("cannon_zeroshot", "cannon_finetuned", "routed")
        cov_lines.append(f"| {lab} | " + " | ".join(
            "{:.1f} / {:.1f}".format(*coverage(n, i)) for n in peers) + " |")
    text = "\n".join(lines + cov_lines) + "\n"
    if markdown:
        markdown.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    e = sub.add_parser("export", help="write the spectra and labels (main environment)")
    e.add_argument("--results", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("fit", help="train and test The Cannon (its own NumPy < 2 environment)")
    f.add_argument("--data", type=Path, required=True)
    f.add_argument("--models", nargs="+", choices=("zeroshot", "finetuned"),
                   default=["zeroshot", "finetuned"],
                   help="which Cannon models (run one per process to use two cores)")
    f.add_argument("--threads", type=int, default=1,
                   help="thecannon's worker processes (its pool hung with 2 here; 1 is safe)")
    s = sub.add_parser("score", help="the table against the candidates (main environment)")
    s.add_argument("--results", type=Path, required=True)
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--markdown", type=Path)
    a = p.parse_args(argv)
    if a.step == "export":
        export(a.results, a.out)
    elif a.step == "fit":
        fit(a.data, a.threads, tuple(a.models))
    else:
        print(score(a.results, a.data, a.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
