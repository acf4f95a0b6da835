"""Node-hours of the CPU stages for DESI DR1 (Milky Way Survey) and LAMOST DR10 on NERSC-like
CPU nodes, extrapolated from the per-core rates measured on this machine (docs/benchmarks.md).

    python benchmarks/extrapolate_surveys.py [--cores-per-node 128] [--node-gbps 5]

Arithmetic only: every rate below is a figure measured by another benchmark of this directory
(named beside it), per core (one MPI rank per core, or one process), on the project's 2-core
EPYC machine. Each stage's time on one node is the larger of its CPU time (the survey's count
over the node's rate, ``cores-per-node`` ranks) and its read time (bytes read over
``node-gbps``, a per-node file-system bandwidth; Lustre at NERSC gives a few GB/s per node).
Stages that are one process (the VAC) are given as wall hours of that process instead.
Training is not included: it runs on GPU nodes, and no GPU was lent to measure it.
"""

from __future__ import annotations

import argparse

# (stage, rate per core in spectra/s, bytes read per spectrum, where the rate was measured)
RATES = {
    # a LAMOST file (median of the 501 real ones in ../shared/data: 92 KB), read whole
    "manifest_lamost": (193.0, 92e3, "manifest_scan.py: 10,000 real LAMOST files, 1 process"),
    "preprocess_lamost": (387.0, 92e3, "the demo's preprocess_lamost: 12,000 files, CPU-s"),
    # a DESI coadd row: FIBERMAP and the B arm's flux and ivar (float32, 2,751 pixels), + mask
    "manifest_desi": (6700.0, 23e3,
                      "manifest of the 100,000-spectrum mock: 200 coadds of 500, 1 process"),
    "preprocess_desi": (4247.0, 33e3, "1,000,000 DESI spectra from FITS, per rank"),
    # a preprocessed spectrum: 1,462 pixels of flux, ivar (float32) and mask (uint8)
    "embed_with_ood": (102.0, 13.2e3,
                       "the demo's embed_desi: 3,000 spectra, 64-d SpecFormer + OOD score"),
    "embed": (400.0, 13.2e3, "the demo's embed_lamost: 12,000 spectra, 64-d SpecFormer"),
    # and its 1,024-d float32 embedding
    "infer_8": (4495.0, 17.3e3, "inference_vac.py: 10^6 spectra, 8 candidates, per rank"),
    "infer_9": (398.0, 17.3e3, "inference_vac.py: all 9 candidates one after the other"),
}
VAC_ROWS_PER_S = {"catalogue": 32617.0, "with DESI layout": 7177.0}  # vac_scale.py, 1 process

SURVEYS = {
    # name: {stage: spectra}, and the VAC's rows
    "DESI DR1 MWS": ({"manifest_desi": 20.0e6, "preprocess_desi": 6.0e6,
                      "embed_with_ood": 6.0e6, "infer_9": 6.0e6}, 6.0e6),
    "LAMOST DR10 LRS": ({"manifest_lamost": 11.0e6, "preprocess_lamost": 11.0e6,
                         "embed": 11.0e6}, 0.0),
}


def node_hours(n: float, rate: float, nbytes: float, cores: int, gbps: float
               ) -> tuple[float, float, str]:
    """(node-hours, CPU node-hours, what bounds it) of ``n`` spectra at ``rate`` per core
    and ``nbytes`` read each, on nodes of ``cores`` cores and ``gbps`` GB/s."""
    cpu_s = n / (rate * cores)
    io_s = n * nbytes / (gbps * 1e9)
    return max(cpu_s, io_s) / 3600, cpu_s / 3600, "CPU" if cpu_s >= io_s else "read"


def table(cores: int, gbps: float) -> str:
    """The markdown table of every survey and stage."""
    lines = [f"Nodes of {cores} cores, {gbps:g} GB/s read per node; one rank per core.", "",
             "| survey | stage | spectra | rate per core (/s) | node-hours | bound by | "
             "ranks x hours on 1 node |", "|---|---|---|---|---|---|---|"]
    for survey, (stages, vac_rows) in SURVEYS.items():
        total = 0.0
        for stage, n in stages.items():
            rate, nbytes, _ = RATES[stage]
            nh, _, bound = node_hours(n, rate, nbytes, cores, gbps)
            total += nh
            lines.append(f"| {survey} | {stage} | {n:,.0f} | {rate:,.0f} | {nh:.3f} | {bound} "
                         f"| {cores} x {nh:.2f} |")
        lines.append(f"| {survey} | **all CPU stages above** | | | **{total:.2f}** | | |")
        for what, r in VAC_ROWS_PER_S.items():
            if vac_rows:
                lines.append(f"| {survey} | VAC, {what} (1 process) | {vac_rows:,.0f} | "
                             f"{r:,.0f} | wall {vac_rows / r / 3600:.2f} h | CPU | 1 x "
                             f"{vac_rows / r / 3600:.2f} |")
    lines += ["", "Rates measured by: " + "; ".join(f"{k}: {v[2]}" for k, v in RATES.items())]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores-per-node", type=int, default=128,
                   help="cores of one CPU node (NERSC Perlmutter: 2 x 64)")
    p.add_argument("--node-gbps", type=float, default=5.0,
                   help="file-system read bandwidth of one node, GB/s")
    a = p.parse_args()
    print(table(a.cores_per_node, a.node_gbps))


if __name__ == "__main__":
    main()
