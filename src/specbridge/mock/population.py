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
"""

from __future__ import annotations

import numpy as np

from specbridge.mock.emulator import DOMAIN, in_domain

COMPONENTS = (("thin", 0.55), ("thick", 0.25), ("halo", 0.20))


def draw_labels(rng: np.random.Generator, n: int, miles_teff: np.ndarray,
                miles_logg: np.ndarray) -> dict[str, np.ndarray]:
    """n label sets: teff (K), logg, feh, alpha_fe (dex) and component (str), each (n,)."""
    ok = in_domain(miles_teff, miles_logg, np.zeros_like(miles_teff)) \
        & np.isfinite(miles_teff) & np.isfinite(miles_logg)
    pool_t, pool_g = miles_teff[ok], miles_logg[ok]
    pick = rng.integers(0, pool_t.size, size=n)
    teff = np.clip(pool_t[pick] + rng.normal(0, 60, n), *DOMAIN["teff"])
    logg = np.clip(pool_g[pick] + rng.normal(0, 0.1, n), *DOMAIN["logg"])

    names = np.array([c for c, _ in COMPONENTS])
    comp = names[rng.choice(len(COMPONENTS), size=n, p=[f for _, f in COMPONENTS])]
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
