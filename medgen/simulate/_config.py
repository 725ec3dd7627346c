"""Configuration of the cohort simulator: a tree of dataclasses, read from / written to dict and YAML.

Every field is validated by :meth:`SimulationConfig.validate`, which raises
:class:`~medgen.errors.ConfigError` naming the field (e.g. ``sites[1].contrast``), the rule, the
value and the fix, *before* anything is written to disk.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError

__all__ = [
    "BIAS_MECHANISMS",
    "CONTRASTS",
    "AgeConfig",
    "AnatomyConfig",
    "BiasConfig",
    "DiseaseConfig",
    "PopulationConfig",
    "SimulationConfig",
    "SiteConfig",
    "SplitConfig",
]

#: Tissue-intensity mappings known to the simulator (see ``_site.TISSUE_INTENSITIES``).
CONTRASTS: tuple[str, ...] = ("t1", "t2", "flair")

#: Named bias mechanisms, with a one-line description each (full description in docs/simulate.md).
BIAS_MECHANISMS: dict[str, str] = {
    "shortcut": "a spurious marker burned into the image of positives (observed label) of one group",
    "under_representation": "the group's share of the cohort is multiplied by (1 - strength)",
    "under_diagnosis": "a fraction `strength` of the group's true positives is recorded as label 0",
    "presentation": (
        "the group's disease is subtler: lesion contrast (or atrophy) x (1 - strength), "
        "lesion radius x (1 - strength / 2)"
    ),
    "acquisition_shift": "a fraction `strength` of the group is scanned at site `params['site']`",
    "scarce_positives": (
        "a fraction `strength` of the group's positives in the training split is never recruited: "
        "left out of the cohort; the val and test splits keep them"
    ),
}

_DISEASE_EFFECTS = ("lesions", "atrophy")
_MODES = ("2d", "3d")
_LESION_LOCATIONS = ("periventricular", "uniform")


@dataclass
class AgeConfig:
    """Age distribution (years): a normal distribution truncated to ``[min, max]``, and its bins.

    ``bins`` are the left-closed bin edges of ``age_group`` (``[20, 40)`` is labelled ``"20-39"``).
    """

    mean: float = 55.0
    sd: float = 15.0
    min: float = 20.0
    max: float = 90.0
    bins: tuple[float, ...] = (20.0, 40.0, 60.0, 91.0)


@dataclass
class PopulationConfig:
    """Who is in the cohort: size and the (independent) distribution of each attribute.

    ``sex`` and every entry of ``attributes`` map a group name to its proportion (they must sum
    to 1). ``attributes`` holds user-defined attributes (e.g. ``{"handedness": {"R": 0.7, "L": 0.3}}``),
    written to the manifest as columns of the same name.

    ``conditional`` makes the joint distribution non-independent: ``{target: {given: {group:
    proportions}}}`` draws the user attribute ``target`` from ``proportions`` for subjects whose
    ``given`` attribute (``sex``, ``age_group`` or a user attribute listed before ``target``) is
    ``group``; other subjects use ``attributes[target]``. E.g.
    ``{"smoker": {"sex": {"M": {"yes": 0.4, "no": 0.6}}}}``. Correlations between attributes and
    sites are introduced by the ``acquisition_shift`` bias mechanism.
    """

    n_subjects: int = 100
    sex: dict[str, float] = field(default_factory=lambda: {"F": 0.5, "M": 0.5})
    age: AgeConfig = field(default_factory=AgeConfig)
    attributes: dict[str, dict[str, float]] = field(default_factory=dict)
    conditional: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)


@dataclass
class AnatomyConfig:
    """Anatomy from the MNI152 2 mm template and its grey/white-matter probability maps.

    - ``mode``: ``"2d"`` (one axial slice per subject, ``image_size`` pixels over a square
      field of view of ``fov_mm``) or ``"3d"`` (a cube of ``fov_mm`` sampled at ``spacing_mm``).
    - ``slice_band_mm``: the MNI z range (mm) from which 2D slices are drawn (uniformly).
    - ``deformation_mm``: s.d. (mm) of the smooth random displacement field, defined on a
      ``deformation_grid``-point control grid per axis and interpolated cubically.
    - ``scale_sd`` (fraction) and ``rotation_deg`` (s.d., about z): global head size and pose.
    - ``intensity_jitter``: s.d. of per-subject multiplicative tissue-intensity variation.
    - ``atrophy_per_decade``: fraction of grey matter turned to CSF per decade above 20 years.
    - ``ventricle_growth_per_decade``: radial expansion (fraction) of the ventricles per decade.
    """

    mode: str = "2d"
    image_size: int = 64
    fov_mm: float = 192.0
    spacing_mm: float = 3.0
    slice_band_mm: tuple[float, float] = (0.0, 30.0)
    deformation_mm: float = 2.5
    deformation_grid: int = 5
    scale_sd: float = 0.04
    rotation_deg: float = 4.0
    intensity_jitter: float = 0.04
    atrophy_per_decade: float = 0.05
    ventricle_growth_per_decade: float = 0.05


@dataclass
class SiteConfig:
    """One acquisition site (scanner + protocol).

    - ``contrast``: ``"t1"``, ``"t2"`` or ``"flair"`` (tissue-intensity mapping).
    - ``bias_field``: maximum absolute coefficient of the log-polynomial (order 3) bias field,
      as in TorchIO's ``RandomBiasField``; 0 disables it.
    - ``noise_sigma``: Rician noise s.d., relative to the white-matter intensity (before scaling).
    - ``blur_fwhm_mm``: in-plane Gaussian blur (FWHM, mm); ``slice_thickness_mm``: through-plane
      partial-volume averaging (mm), which makes resolution anisotropic.
    - ``intensity_scale`` / ``intensity_offset``: linear mapping to the scanner's units.
    """

    name: str = "site_A"
    proportion: float = 1.0
    contrast: str = "flair"
    manufacturer: str = "SimScan"
    bias_field: float = 0.3
    noise_sigma: float = 0.03
    blur_fwhm_mm: float = 0.0
    slice_thickness_mm: float = 3.0
    intensity_scale: float = 1.0
    intensity_offset: float = 0.0


@dataclass
class DiseaseConfig:
    """The disease: a label with per-subgroup prevalence, realised as a visible effect.

    - ``effect``: ``"lesions"`` (white-matter hyperintensities) or ``"atrophy"`` (regional grey
      matter loss in a sphere at ``atrophy_center_mm`` (MNI) of ``atrophy_radius_mm``).
    - ``prevalence``: P(disease); ``prevalence_by`` overrides it per group of at most one attribute,
      e.g. ``{"sex": {"F": 0.2, "M": 0.4}}``.
    - ``severity``: range of the per-subject severity of diseased subjects (uniform); healthy is 0.
    - ``lesion_count``: mean lesion count at severity 1 (count = 1 + Poisson(severity x count)).
    - ``lesion_radius_mm``: radius range at severity 0 and 1 (interpolated, then jittered +-25%).
    - ``lesion_contrast``: fraction of the way from tissue to lesion intensity at severity 1.
    - ``lesion_location``: ``"periventricular"`` (centres drawn with weight
      ``exp(-d / 25 mm)``, d = distance to the ventricles, as white-matter hyperintensities
      cluster there) or ``"uniform"`` (anywhere in white matter).
    - ``atrophy_strength``: fraction of grey matter lost in the region at severity 1.
    - ``grades`` / ``grade_thresholds``: a graded disease label written as the manifest column
      ``grade`` when ``grades`` is given (default: no column, the output is unchanged). The
      first grade is the healthy one (severity 0); a diseased subject of severity ``s`` gets
      ``grades[1 + #(thresholds <= s)]``. E.g. ``grades=("none", "mild", "severe")``,
      ``grade_thresholds=(0.65,)``: mild below severity 0.65, severe from it. The grade follows
      the true severity (``label_true``); ``under_diagnosis`` does not change it.
    """

    effect: str = "lesions"
    prevalence: float = 0.4
    prevalence_by: dict[str, dict[str, float]] = field(default_factory=dict)
    severity: tuple[float, float] = (0.3, 1.0)
    lesion_count: float = 4.0
    lesion_radius_mm: tuple[float, float] = (3.0, 7.0)
    lesion_contrast: float = 0.8
    lesion_location: str = "periventricular"
    atrophy_center_mm: tuple[float, float, float] = (0.0, -10.0, 15.0)
    atrophy_radius_mm: float = 25.0
    atrophy_strength: float = 0.6
    grades: tuple[str, ...] = ()
    grade_thresholds: tuple[float, ...] = ()


@dataclass
class BiasConfig:
    """One injected bias: a named ``mechanism`` acting on ``group`` of ``attribute``.

    ``mechanism`` is one of :data:`BIAS_MECHANISMS`; ``strength`` is in ``[0, 1]`` (0 = no
    effect). ``params``: ``shortcut`` takes ``marker_size`` (pixels, default 3),
    ``marker_intensity`` (x white matter, default 1.5) and ``base_rate`` (P(marker) for the group's
    negatives, default 0); ``acquisition_shift`` needs ``site`` (a site name);
    ``scarce_positives`` takes none and acts on any attribute, ``site`` included (a hospital that
    contributed few positive cases to training).
    """

    mechanism: str = "shortcut"
    attribute: str = "sex"
    group: str = "F"
    strength: float = 0.5
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SplitConfig:
    """Subject-level split fractions (seeded); they must sum to 1."""

    train: float = 0.7
    val: float = 0.15
    test: float = 0.15


@dataclass
class SimulationConfig:
    """The full simulator configuration. Build it in Python, from a dict or from YAML.

    Example:
        >>> from medgen.simulate import SimulationConfig
        >>> cfg = SimulationConfig.from_dict({"population": {"n_subjects": 10}})
        >>> cfg.population.n_subjects
        10
    """

    name: str = "custom"
    seed: int = 0
    population: PopulationConfig = field(default_factory=PopulationConfig)
    anatomy: AnatomyConfig = field(default_factory=AnatomyConfig)
    sites: list[SiteConfig] = field(default_factory=lambda: [SiteConfig()])
    disease: DiseaseConfig = field(default_factory=DiseaseConfig)
    biases: list[BiasConfig] = field(default_factory=list)
    split: SplitConfig = field(default_factory=SplitConfig)

    # ---------------------------------------------------------------- conversion
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for JSON and YAML."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulationConfig:
        """Build and validate a config from a nested dict; missing fields take their defaults.

        Raises:
            ConfigError: on an unknown field (with the closest known name) or an invalid value.
        """
        cfg = _from_dict(cls, data, "config")
        cfg.validate()
        return cfg

    def to_yaml(self, path: str | pathlib.Path | None = None) -> str:
        """Return the YAML text; also write it (atomically) to ``path`` when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from medgen._internal.files import write_text_atomic

            write_text_atomic(path, text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | pathlib.Path) -> SimulationConfig:
        """Read a config from a YAML file (path) or YAML text."""
        import yaml

        source = str(path_or_text)
        p = pathlib.Path(source)
        is_file = "\n" not in source and p.suffix.lower() in (".yaml", ".yml")
        if is_file and not p.is_file():
            raise ConfigError(f"Config file {source!r} does not exist; check the path.")
        text = p.read_text() if is_file else source
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"Config {source!r} is not valid YAML: {err}") from err
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"Config {source!r} must be a YAML mapping at top level, not {type(data).__name__}."
            )
        return cls.from_dict(data)

    # ---------------------------------------------------------------- derived
    def attribute_groups(self) -> dict[str, list[str]]:
        """Every attribute a bias or prevalence may name, with its groups."""
        pop = self.population
        groups: dict[str, list[str]] = {"sex": list(pop.sex)}
        groups["age_group"] = age_group_labels(pop.age.bins)
        groups["site"] = [s.name for s in self.sites]
        for name, dist in pop.attributes.items():
            groups[name] = list(dist)
        return groups

    # ---------------------------------------------------------------- validation
    def validate(self) -> SimulationConfig:
        """Check every field; raise :class:`ConfigError` naming the first bad one. Returns self."""
        pop = self.population
        _check_int(pop.n_subjects, "population.n_subjects", minimum=1)
        _check_proportions(pop.sex, "population.sex")
        for name, dist in pop.attributes.items():
            if name in ("sex", "age", "age_group", "site", "label", "split", "subject_id"):
                raise ConfigError(
                    f"population.attributes[{name!r}]: {name!r} is a reserved column name; "
                    "rename the attribute."
                )
            _check_proportions(dist, f"population.attributes[{name!r}]")
        user = list(pop.attributes)
        for target, by_given in pop.conditional.items():
            where = f"population.conditional[{target!r}]"
            if target not in pop.attributes:
                raise ConfigError(
                    f"{where}: {target!r} is not a user attribute; declare it in "
                    f"population.attributes first (known: {user})."
                    + did_you_mean(str(target), user)
                )
            if not isinstance(by_given, dict) or len(by_given) != 1:
                raise ConfigError(
                    f"{where} must map exactly one conditioning attribute to its groups, "
                    f"not {by_given!r}."
                )
            given, cond_groups = next(iter(by_given.items()))
            allowed = ["sex", "age_group", *user[: user.index(target)]]
            if given not in allowed:
                raise ConfigError(
                    f"{where}: cannot condition on {given!r}; use one of {allowed} (user "
                    "attributes are drawn in the order they are listed)."
                    + did_you_mean(str(given), allowed)
                )
            given_groups = (
                list(pop.sex)
                if given == "sex"
                else age_group_labels(pop.age.bins)
                if given == "age_group"
                else list(pop.attributes[given])
            )
            for g, dist in cond_groups.items():
                if g not in given_groups:
                    raise ConfigError(
                        f"{where}[{given!r}]: {given!r} has no group {g!r}; its groups are "
                        f"{given_groups}." + did_you_mean(str(g), given_groups)
                    )
                _check_proportions(dist, f"{where}[{given!r}][{g!r}]")
                if set(dist) != set(pop.attributes[target]):
                    raise ConfigError(
                        f"{where}[{given!r}][{g!r}]: groups {sorted(dist)} must be those of "
                        f"population.attributes[{target!r}]: {sorted(pop.attributes[target])}."
                    )
        age = pop.age
        if not (age.min < age.max):
            raise ConfigError(f"population.age: min ({age.min}) must be below max ({age.max}).")
        if age.sd <= 0:
            raise ConfigError(f"population.age.sd must be > 0, not {age.sd}.")
        bins = list(age.bins)
        if len(bins) < 2 or any(b2 <= b1 for b1, b2 in itertools.pairwise(bins)):
            raise ConfigError(
                f"population.age.bins must be at least 2 increasing edges, not {bins}."
            )
        if bins[0] > age.min or bins[-1] <= age.max:
            raise ConfigError(
                f"population.age.bins {bins} must cover [min, max] = [{age.min}, {age.max}]: "
                f"first edge <= {age.min} and last edge > {age.max}."
            )

        an = self.anatomy
        if an.mode not in _MODES:
            raise ConfigError(
                f"anatomy.mode must be one of {list(_MODES)}, not {an.mode!r}."
                + did_you_mean(str(an.mode), _MODES)
            )
        _check_int(an.image_size, "anatomy.image_size", minimum=8)
        for fname in ("fov_mm", "spacing_mm"):
            _check_number(getattr(an, fname), f"anatomy.{fname}", minimum=1e-3)
        for fname in (
            "deformation_mm",
            "scale_sd",
            "rotation_deg",
            "intensity_jitter",
            "atrophy_per_decade",
            "ventricle_growth_per_decade",
        ):
            _check_number(getattr(an, fname), f"anatomy.{fname}", minimum=0.0)
        _check_int(an.deformation_grid, "anatomy.deformation_grid", minimum=2)
        lo, hi = _check_range(an.slice_band_mm, "anatomy.slice_band_mm")
        if lo < -70 or hi > 80:
            raise ConfigError(
                f"anatomy.slice_band_mm {an.slice_band_mm} leaves the MNI brain; use z in [-70, 80]."
            )

        if not self.sites:
            raise ConfigError("sites: at least one site is required.")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ConfigError(f"sites: site names must be unique, got {names}.")
        for i, s in enumerate(self.sites):
            where = f"sites[{i}]"
            if not isinstance(s.name, str) or not s.name:
                raise ConfigError(f"{where}.name must be a non-empty string, not {s.name!r}.")
            if s.contrast not in CONTRASTS:
                raise ConfigError(
                    f"{where}.contrast must be one of {list(CONTRASTS)}, not {s.contrast!r}."
                    + did_you_mean(str(s.contrast), CONTRASTS)
                )
            for fname in ("bias_field", "noise_sigma", "blur_fwhm_mm", "slice_thickness_mm"):
                _check_number(getattr(s, fname), f"{where}.{fname}", minimum=0.0)
            _check_number(s.intensity_scale, f"{where}.intensity_scale", minimum=1e-9)
            _check_number(s.intensity_offset, f"{where}.intensity_offset")
        _check_proportions({s.name: s.proportion for s in self.sites}, "sites[*].proportion")

        groups = self.attribute_groups()
        d = self.disease
        if d.effect not in _DISEASE_EFFECTS:
            raise ConfigError(
                f"disease.effect must be one of {list(_DISEASE_EFFECTS)}, not {d.effect!r}."
                + did_you_mean(str(d.effect), _DISEASE_EFFECTS)
            )
        _check_unit(d.prevalence, "disease.prevalence")
        if len(d.prevalence_by) > 1:
            raise ConfigError(
                f"disease.prevalence_by may name at most one attribute, got {list(d.prevalence_by)}."
            )
        for attr, per_group in d.prevalence_by.items():
            where = f"disease.prevalence_by[{attr!r}]"
            _check_attribute_group(attr, None, groups, where)
            for g, p in per_group.items():
                _check_attribute_group(attr, g, groups, f"{where}[{g!r}]")
                _check_unit(p, f"{where}[{g!r}]")
        slo, shi = _check_range(d.severity, "disease.severity")
        if slo < 0 or shi > 1:
            raise ConfigError(f"disease.severity {d.severity} must lie within [0, 1].")
        _check_number(d.lesion_count, "disease.lesion_count", minimum=0.0)
        rlo, _ = _check_range(d.lesion_radius_mm, "disease.lesion_radius_mm")
        if rlo <= 0:
            raise ConfigError(f"disease.lesion_radius_mm {d.lesion_radius_mm} must be > 0.")
        _check_unit(d.lesion_contrast, "disease.lesion_contrast")
        if d.lesion_location not in _LESION_LOCATIONS:
            raise ConfigError(
                f"disease.lesion_location must be one of {list(_LESION_LOCATIONS)}, not "
                f"{d.lesion_location!r}." + did_you_mean(str(d.lesion_location), _LESION_LOCATIONS)
            )
        _check_unit(d.atrophy_strength, "disease.atrophy_strength")
        _check_grades(d)
        _check_number(d.atrophy_radius_mm, "disease.atrophy_radius_mm", minimum=1e-3)
        if len(d.atrophy_center_mm) != 3:
            raise ConfigError(
                f"disease.atrophy_center_mm must be 3 MNI coordinates (mm), not {d.atrophy_center_mm}."
            )

        for i, b in enumerate(self.biases):
            where = f"biases[{i}]"
            if b.mechanism not in BIAS_MECHANISMS:
                raise ConfigError(
                    f"{where}.mechanism must be one of {list(BIAS_MECHANISMS)}, not {b.mechanism!r}."
                    + did_you_mean(str(b.mechanism), BIAS_MECHANISMS)
                )
            _check_attribute_group(b.attribute, b.group, groups, where)
            _check_unit(b.strength, f"{where}.strength")
            if b.mechanism == "acquisition_shift":
                site = b.params.get("site")
                if site not in groups["site"]:
                    raise ConfigError(
                        f"{where}.params['site'] must name a configured site {groups['site']}, "
                        f"not {site!r}." + did_you_mean(str(site), groups["site"])
                    )
                if b.attribute == "site":
                    raise ConfigError(f"{where}: acquisition_shift cannot act on attribute 'site'.")
            if b.mechanism == "under_representation" and b.attribute in ("age_group", "site"):
                raise ConfigError(
                    f"{where}: under_representation acts on sex or a user attribute, not "
                    f"{b.attribute!r} (change the age distribution or site proportions instead)."
                )
            if b.mechanism == "scarce_positives" and b.params:
                raise ConfigError(
                    f"{where}.params: scarce_positives takes no parameters, got "
                    f"{sorted(b.params)}; remove them."
                )
            if b.mechanism == "shortcut":
                unknown = set(b.params) - {"marker_size", "marker_intensity", "base_rate"}
                if unknown:
                    raise ConfigError(
                        f"{where}.params: unknown shortcut parameter(s) {sorted(unknown)}; "
                        "known: marker_size, marker_intensity, base_rate."
                    )
                _check_unit(b.params.get("base_rate", 0.0), f"{where}.params['base_rate']")
                _check_int(b.params.get("marker_size", 3), f"{where}.params['marker_size']", 1)

        sp = self.split
        for fname in ("train", "val", "test"):
            _check_unit(getattr(sp, fname), f"split.{fname}")
        if not math.isclose(sp.train + sp.val + sp.test, 1.0, abs_tol=1e-6):
            raise ConfigError(
                f"split fractions must sum to 1, got train+val+test = {sp.train + sp.val + sp.test:g}."
            )
        _check_int(self.seed, "seed", minimum=0)
        return self


def age_group_labels(bins: typing.Sequence[float]) -> list[str]:
    """Labels of the age bins, e.g. edges (20, 40, 60) -> ``["20-39", "40-59"]``."""
    out = []
    for lo, hi in itertools.pairwise(bins):
        out.append(f"{lo:g}-{math.ceil(hi) - 1:g}")
    return out


# ------------------------------------------------------------------ checks
def _check_number(value: Any, where: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, not {value!r}.")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where} must be >= {minimum:g}, not {value!r}.")
    return float(value)


def _check_int(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer, not {value!r}.")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where} must be >= {minimum}, not {value!r}.")
    return value


def _check_unit(value: Any, where: str) -> float:
    v = _check_number(value, where)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{where} must be in [0, 1], not {value!r}.")
    return v


def _check_range(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(f"{where} must be a (low, high) pair, not {value!r}.")
    lo = _check_number(value[0], f"{where}[0]")
    hi = _check_number(value[1], f"{where}[1]")
    if lo > hi:
        raise ConfigError(f"{where}: low ({lo:g}) must not exceed high ({hi:g}).")
    return lo, hi


def _check_proportions(dist: Any, where: str) -> None:
    if not isinstance(dist, dict) or not dist:
        raise ConfigError(f"{where} must be a non-empty mapping group -> proportion, not {dist!r}.")
    for g, p in dist.items():
        _check_unit(p, f"{where}[{g!r}]")
    total = float(sum(dist.values()))
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ConfigError(
            f"{where}: proportions must sum to 1, got {total:g} for {dict(dist)}; "
            "rescale them (e.g. divide each by their sum)."
        )


def _check_attribute_group(
    attr: str, group: str | None, groups: dict[str, list[str]], where: str
) -> None:
    if attr not in groups:
        raise ConfigError(
            f"{where}: unknown attribute {attr!r}; known attributes are {sorted(groups)}."
            + did_you_mean(str(attr), groups)
        )
    if group is not None and group not in groups[attr]:
        raise ConfigError(
            f"{where}: attribute {attr!r} has no group {group!r}; its groups are {groups[attr]}."
            + did_you_mean(str(group), groups[attr])
        )


# ------------------------------------------------------------------ dict <-> dataclass
def _check_grades(d: DiseaseConfig) -> None:
    """``grades`` / ``grade_thresholds``: both empty, or K >= 3 distinct names with K - 2
    increasing thresholds inside the diseased severity range (so every grade can occur)."""
    grades, thresholds = tuple(d.grades), tuple(d.grade_thresholds)
    if not grades:
        if thresholds:
            raise ConfigError(
                f"disease.grade_thresholds {list(thresholds)} is set but disease.grades is empty; "
                "name the grades, e.g. grades: [none, mild, severe]."
            )
        return
    if len(grades) < 3 or not all(isinstance(g, str) and g for g in grades):
        raise ConfigError(
            f"disease.grades must name at least 3 grades as text (the healthy one first), e.g. "
            f"[none, mild, severe], not {list(grades)}; for 2 classes use the label column."
        )
    if len(set(grades)) != len(grades):
        raise ConfigError(f"disease.grades {list(grades)} names a grade twice.")
    if len(thresholds) != len(grades) - 2:
        raise ConfigError(
            f"disease.grade_thresholds needs {len(grades) - 2} severity threshold(s) for the "
            f"{len(grades)} grades {list(grades)} (one between each pair of diseased grades), "
            f"not {len(thresholds)}: e.g. grade_thresholds: [0.65]."
        )
    lo, hi = d.severity
    for i, t in enumerate(thresholds):
        _check_number(t, f"disease.grade_thresholds[{i}]")
    if not all(lo < t < hi for t in thresholds) or list(thresholds) != sorted(set(thresholds)):
        raise ConfigError(
            f"disease.grade_thresholds {list(thresholds)} must increase strictly and lie inside "
            f"disease.severity ({lo}, {hi}), so that every grade can occur."
        )


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, not {type(data).__name__} ({data!r}).")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r}; known fields are {sorted(fields)}."
            + did_you_mean(str(unknown[0]), fields)
        )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}" if where != "config" else key)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, not {value!r}.")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list of numbers, not {value!r}.")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, not {value!r}.")
        return {k: _convert(args[1], v, f"{where}[{k!r}]") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    return value
