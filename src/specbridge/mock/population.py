"""Labels drawn from a Milky Way-like mix: thin disk, alpha-enhanced thick disk, metal-poor halo,
dwarfs and giants.

Teff and log g are drawn from the MILES stars inside the emulator's domain (with small jitter),
so the (Teff, log g) plane is populated where real stars are; [Fe/H] and [alpha/Fe] come from
the component the star is drawn into:

=========== ======== ============================== ==========================================
component   fraction [Fe/H]                          [alpha/Fe]
=========== ======== ============================== ==========================================
thin disk   0.55     N(-0.10, 0.22), clipped         N(0.02, 0.03) - 0.05 [Fe/H]
thick disk  0.25     N(-0.55, 0.25), clipped         N(0.25, 0.04), falling above [Fe/H] = -0.7
halo        0.20     N(-1.60, 0.55) in [-3.0, -0.6]  N(0.32, 0.06)
=========== ======== ============================== ==========================================

so about a fifth of the stars lie below [Fe/H] = -1 (a meaningful metal-poor test set).

With per-survey priors (``data.mock.survey_priors``) the two surveys draw from different
mixes, as their targeting makes them: the LAMOST-APOGEE overlap (APOGEE's bright,
disc-dominated, giant-rich targets: ``LAMOST_APOGEE``) and DESI MWS (faint, high-latitude,
more halo and main-sequence turn-off stars: ``DESI_MWS``); see :data:`PRIORS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specbridge.mock.emulator import DOMAIN, in_domain

COMPONENTS = (("thin", 0.55), ("thick", 0.25), ("halo", 0.20))


@dataclass(frozen=True)
class Prior:
    """A survey's label prior: the component fractions (name, fraction), and weights on the
    MILES (Teff, log g) pool: ``giant_weight`` for log g < 3.5, ``turnoff_weight`` for the
    main-sequence turn-off (3.6 <= log g <= 4.3, 5600 <= Teff <= 6800 K), 1 elsewhere."""

    components: tuple[tuple[str, float], ...]
    giant_weight: float = 1.0
    turnoff_weight: float = 1.0


#: the survey priors with ``survey_priors`` on. LAMOST-APOGEE: the overlap of two
#: bright-star, low-latitude surveys, mostly disc (about 3 % below [Fe/H] = -1) and rich in
#: giants (APOGEE's main targets); DESI MWS: r = 16-19 at high latitude, a third halo (about
#: 30 % below -1) and many turn-off stars (MWS-MAIN selects on colour, not luminosity)
PRIORS = {
    "lamost": Prior((("thin", 0.66), ("thick", 0.28), ("halo", 0.06)), giant_weight=2.0),
    "desi": Prior((("thin", 0.40), ("thick", 0.28), ("halo", 0.32)), giant_weight=0.8,
                  turnoff_weight=3.0),
}


def pool_weights(prior: Prior, teff: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """(m,) probabilities of picking each (Teff K, log g) pool star (m,) under ``prior``."""
    w = np.ones(teff.size)
    w[logg < 3.5] = prior.giant_weight
    w[(logg >= 3.6) & (logg <= 4.3) & (teff >= 5600) & (teff <= 6800)] = prior.turnoff_weight
    return w / w.sum()


def draw_labels(rng: np.random.Generator, n: int, miles_teff: np.ndarray,
                miles_logg: np.ndarray, prior: Prior | None = None) -> dict[str, np.ndarray]:
    """n label sets: teff (K), logg, feh, alpha_fe (dex) and component (str), each (n,).
    ``prior`` None: the one Milky Way mix of COMPONENTS with every pool star equally likely
    (both surveys alike)."""
    ok = in_domain(miles_teff, miles_logg, np.zeros_like(miles_teff)) \
        & np.isfinite(miles_teff) & np.isfinite(miles_logg)
    pool_t, pool_g = miles_teff[ok], miles_logg[ok]
    if prior is None:
        pick = rng.integers(0, pool_t.size, size=n)
        components = COMPONENTS
    else:
        pick = rng.choice(pool_t.size, size=n, p=pool_weights(prior, pool_t, pool_g))
        components = prior.components
    teff = np.clip(pool_t[pick] + rng.normal(0, 60, n), *DOMAIN["teff"])
    logg = np.clip(pool_g[pick] + rng.normal(0, 0.1, n), *DOMAIN["logg"])

    names = np.array([c for c, _ in components])
    comp = names[rng.choice(len(components), size=n, p=[f for _, f in components])]
    feh = np.empty(n)
    alpha = np.empty(n)
    for name in names:
        m = comp == name
        k = int(m.sum())
        if name == "thin":
            feh[m] = np.clip(rng.normal(-0.10, 0.22, k), -1.0, 0.55)
            alpha[m] = rng.normal(0.02, 0.03, k) - 0.05 * feh[m]
        elif name == "thick":
            feh[m] = np.clip(rng.normal(-0.55, 0.25, k), -1.5, 0.3)
            alpha[m] = rng.normal(0.25, 0.04, k) - 0.3 * np.clip(feh[m] + 0.7, 0, None)
        else:
            feh[m] = np.clip(rng.normal(-1.6, 0.55, k), -3.0, -0.6)
            alpha[m] = rng.normal(0.32, 0.06, k)
    alpha = np.clip(alpha, -0.2, 0.6)
    return {"teff": teff, "logg": logg, "feh": feh, "alpha_fe": alpha, "component": comp}
