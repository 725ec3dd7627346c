"""Named simulator presets: ``tiny`` (tests, seconds) and ``demo`` (the demo cohort, minutes).

``demo`` / ``tiny`` inject a *presentation* bias (lesions subtler in women); ``demo-underrep`` /
``tiny-underrep`` inject *scarce positives* instead (one site's positives rare in training,
as strong as elsewhere). They are the ground truth of the augmentation study (docs/study.md).
"""

from __future__ import annotations

from collections.abc import Callable

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError
from medgen.simulate._config import (
    AgeConfig,
    AnatomyConfig,
    BiasConfig,
    DiseaseConfig,
    PopulationConfig,
    SimulationConfig,
    SiteConfig,
    SplitConfig,
)

__all__ = ["PRESETS", "preset"]


def _sites() -> list[SiteConfig]:
    return [
        SiteConfig(
            name="site_A",
            proportion=0.4,
            contrast="flair",
            manufacturer="SimScan Alpha",
            bias_field=0.2,
            noise_sigma=0.02,
            blur_fwhm_mm=0.0,
            slice_thickness_mm=3.0,
            intensity_scale=1000.0,
        ),
        SiteConfig(
            name="site_B",
            proportion=0.35,
            contrast="flair",
            manufacturer="SimScan Beta",
            bias_field=0.4,
            noise_sigma=0.04,
            blur_fwhm_mm=3.0,
            slice_thickness_mm=5.0,
            intensity_scale=600.0,
            intensity_offset=20.0,
        ),
        SiteConfig(
            name="site_C",
            proportion=0.25,
            contrast="t2",
            manufacturer="MockMed",
            bias_field=0.3,
            noise_sigma=0.03,
            blur_fwhm_mm=1.5,
            slice_thickness_mm=4.0,
            intensity_scale=1.0,
        ),
    ]


def _demo() -> SimulationConfig:
    """About 2,000 axial 64x64 FLAIR/T2-like slices from three sites.

    Injected bias: *presentation* on ``sex = F`` (lesions in women 50% subtler: smaller and
    lower contrast). Control: ``handedness`` (R 70% / L 30%) has no effect at all.

    Split 55/15/30 by subject: the 600-subject test split gives an audit of the bias enough power
    to survive multiplicity adjustment; with 300 the verdict flipped between runs that differed
    only in thread count (women's AUC 0.856 vs 0.958, raw p 0.005, Holm-adjusted 0.44).
    """
    return SimulationConfig(
        name="demo",
        seed=0,
        population=PopulationConfig(
            n_subjects=2000,
            sex={"F": 0.5, "M": 0.5},
            age=AgeConfig(mean=55.0, sd=15.0, min=20.0, max=90.0, bins=(20.0, 40.0, 60.0, 91.0)),
            attributes={"handedness": {"R": 0.7, "L": 0.3}},
        ),
        anatomy=AnatomyConfig(mode="2d", image_size=64, fov_mm=192.0),
        sites=_sites(),
        disease=DiseaseConfig(effect="lesions", prevalence=0.4),
        biases=[BiasConfig(mechanism="presentation", attribute="sex", group="F", strength=0.5)],
        split=SplitConfig(train=0.55, val=0.15, test=0.30),
    )


def _tiny() -> SimulationConfig:
    """80 axial 32x32 slices, two sites, same bias and control as ``demo``: for tests (< 10 s)."""
    cfg = _demo()
    cfg.name = "tiny"
    cfg.population.n_subjects = 80
    cfg.split = SplitConfig()  # 70/15/15: training gets most of the few subjects
    cfg.anatomy = AnatomyConfig(mode="2d", image_size=32, fov_mm=192.0)
    sites = _sites()[:2]
    sites[0].proportion = 0.6
    sites[1].proportion = 0.4
    cfg.sites = sites
    cfg.disease = DiseaseConfig(effect="lesions", prevalence=0.5, lesion_radius_mm=(5.0, 9.0))
    return cfg


def _demo3d() -> SimulationConfig:
    """200 volumes of 64^3 at 3 mm (for the 3D benchmark and generative 3D work)."""
    cfg = _demo()
    cfg.name = "demo3d"
    cfg.population.n_subjects = 200
    cfg.anatomy = AnatomyConfig(mode="3d", fov_mm=192.0, spacing_mm=3.0)
    return cfg


def _underrep(base: SimulationConfig, name: str, site: str, strength: float) -> SimulationConfig:
    base.name = name
    for s in base.sites:
        if s.name == site:
            # a T1-like site: lesions dark where the other sites show them bright, so a classifier
            # must see this site's positives to learn them (on T2 they are nearly invisible)
            s.contrast = "t1"
    # lesions anywhere in white matter: on T1 and T2 a periventricular lesion merges with the
    # ventricle beside it (both dark on T1, both bright on T2), so its visibility, not its count,
    # would decide; in white matter it is a dark spot on T1, a bright one on FLAIR
    base.disease.lesion_location = "uniform"
    base.biases = [
        BiasConfig(mechanism="scarce_positives", attribute="site", group=site, strength=strength)
    ]
    return base


def _demo_underrep() -> SimulationConfig:
    """``demo`` with scarce positives instead of the presentation bias: under-representation.

    Injected truth: ``site_C`` (a quarter of the cohort) is a **T1-like** site here, where lesions
    are dark (the FLAIR sites A and B show them bright), and 85% of its *training* positives were
    never recruited (``scarce_positives`` on ``site = site_C``, strength 0.85); val and test keep
    every subject. There is no presentation bias: lesions at site C are as large and as strong as
    elsewhere, only of the other polarity, and training shows few of them. (Sex would not do:
    the simulator renders women and men alike, so scarce female positives leave no gap; nor would
    ``demo``'s T2 site C, whose periventricular lesions sit next to equally bright CSF and stay
    near chance even with every positive, AUC 0.55.)

    What a correct study concludes: a classifier trained on the real rows does worse at site C
    (seed 0: AUC 0.56 against 0.98-1.00 at sites A and B); filling the site-C positive cell with
    *good* images (the oracle :class:`~medgen.simulate.SimulatedGenerator`) should shrink the
    site gap. Measured: it narrows it (site C 0.68) but does not close it (docs/simulate.md). Contrast with ``demo``: there a generator trained on the same images cannot invent
    the missing signal, and no augmentation arm should be credited with closing the gap.
    """
    return _underrep(_demo(), "demo-underrep", "site_C", 0.85)


def _tiny_underrep() -> SimulationConfig:
    """``tiny`` with a T1-like ``site_B`` and scarce positives there (strength 0.7; no
    presentation bias).

    The test-sized version of ``demo-underrep`` (same kind of truth): with 80 subjects, a
    70/15/15 split and prevalence 0.5, 0.7 leaves every label x site training cell >= 2 rows.
    """
    return _underrep(_tiny(), "tiny-underrep", "site_B", 0.7)


#: Registered presets: name -> factory returning a fresh config.
PRESETS: dict[str, Callable[[], SimulationConfig]] = {
    "tiny": _tiny,
    "demo": _demo,
    "demo3d": _demo3d,
    "demo-underrep": _demo_underrep,
    "tiny-underrep": _tiny_underrep,
}


def preset(name: str) -> SimulationConfig:
    """A fresh copy of a named preset config (``"tiny"``, ``"demo"``, ``"demo3d"``,
    ``"demo-underrep"``, ``"tiny-underrep"``; see :data:`PRESETS`).

    Raises:
        ConfigError: unknown name (lists the registered presets).
    """
    if name not in PRESETS:
        hint = did_you_mean(name, PRESETS)
        raise ConfigError(f"Unknown preset {name!r}; known presets are {sorted(PRESETS)}.{hint}")
    return PRESETS[name]().validate()
