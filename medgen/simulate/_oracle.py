"""A perfect generator: new subjects drawn from a simulation's true population.

:class:`SimulatedGenerator` is the oracle arm of the augmentation study (docs/study.md): it knows
the population a simulated cohort was drawn from (its :class:`SimulationConfig`) and makes *new*
subjects of it on request, conditioned on manifest values (``label``, ``sex``, ``age_group``,
``site``, the user attributes), rendered by the simulator's own renderer and writer. Whatever a
trained generator does, it can at best do what this one does; what this one cannot do (invent a
signal the population does not have, e.g. visible lesions in a group with a presentation bias),
no generator can.

The true population is the config with every ``scarce_positives`` strength set to 0 (recruitment
is a property of the cohort, not of the people); every other mechanism stays, since it is part
of how the population presents. Subjects come from their own seed stream (entropy keys that
start with a tag no cohort seed reaches), so none is a copy of a cohort subject.

It keeps the protocol the study uses for :class:`medgen.generative.Synthesizer`: ``conditions``,
``training_image_ids`` (empty: it is trained on nothing), ``sample(n, where, seed=...)`` and
``write(samples, out_dir, split=...)``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pathlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError, MedgenFileNotFoundError, MedgenValueError
from medgen.simulate._config import SimulationConfig, age_group_labels

__all__ = ["OracleSamples", "SimulatedGenerator"]

#: the ``generator`` column of the manifests the oracle writes
GENERATOR = "simulator-oracle"
#: first word of every oracle entropy key ("oracle" in ASCII): no cohort seed reaches its streams
_TAG = 0x6F7261636C65
#: subjects per population draw (fixed: which subjects a seed gives must not depend on ``n``)
_CHUNK = 50_000
#: a combination none of this many subjects has is reported as having probability 0
_ZERO_AFTER = 200_000
#: most subjects drawn for one ``sample`` call
_MAX_DRAWS = 2_000_000


@dataclass
class OracleSamples:
    """Subjects drawn by :meth:`SimulatedGenerator.sample`, not rendered yet.

    Attributes:
        conditions: one row per image (index ``sample``), a column per condition of the
            generator; the given conditions as requested, the others as drawn.
        subjects: the subjects to render (index ``sample``): every column of the simulator's
            cohort table (``label_true``, ``severity``, ``presentation``, ``age``, ...), with
            ``subject_id`` the oracle's id ``oracle-s<seed>-<number>``.
        population_index: each subject's number in the seed's population draw (its id suffix
            and its render index).
        seed: the seed they were drawn with.
        key: the entropy key of the population (``(tag, simulation seed, seed)``).
        config: the population's config (``scarce_positives`` strengths 0).
    """

    conditions: pd.DataFrame
    subjects: pd.DataFrame
    population_index: np.ndarray
    seed: int
    key: tuple[int, ...]
    config: SimulationConfig

    def __len__(self) -> int:
        return len(self.subjects)

    def __repr__(self) -> str:
        return f"OracleSamples({len(self)} subjects, seed={self.seed}, config={self.config.name!r})"

    def iter_subjects(self) -> Iterator[Any]:
        """Render the subjects in memory, in order: :class:`~medgen.simulate.SimulatedSubject`\\ s
        (the images :meth:`SimulatedGenerator.write` saves)."""
        from medgen.simulate._simulate import render_subject

        for number, row in zip(
            self.population_index, self.subjects.to_dict(orient="records"), strict=True
        ):
            yield render_subject(self.config, row, int(number), self.key)


class SimulatedGenerator:
    """The simulator as a perfect conditional generator of new subjects of its population.

    Args:
        config: the simulation's config: a :class:`SimulationConfig`, a dict, a preset name or
            a YAML path. Its ``scarce_positives`` strengths are set to 0 (the population before
            recruitment); the other mechanisms stay.
        seed: the simulation's seed (default: ``config.seed``); it selects the oracle's streams,
            which never coincide with a cohort's.

    Example:
        >>> from medgen.simulate import SimulatedGenerator
        >>> gen = SimulatedGenerator("tiny-underrep")
        >>> gen.conditions
        ('label', 'sex', 'age_group', 'site', 'handedness')
        >>> samples = gen.sample(3, where={"label": 1, "sex": "F"}, seed=0)
        >>> samples.conditions[["label", "sex"]].drop_duplicates().to_dict("records")
        [{'label': 1, 'sex': 'F'}]
    """

    def __init__(
        self,
        config: SimulationConfig | Mapping[str, Any] | str | os.PathLike[str],
        *,
        seed: int | None = None,
    ) -> None:
        cfg = _as_config(config)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(
                f"SimulatedGenerator: seed must be a non-negative integer (the simulation's "
                f"seed), not {seed!r}."
            )
        self.config = copy.deepcopy(cfg)
        self.simulation_seed = int(cfg.seed if seed is None else seed)
        pop = copy.deepcopy(cfg)
        for b in pop.biases:
            if b.mechanism == "scarce_positives":
                b.strength = 0.0
        pop.population.n_subjects = _CHUNK
        self.population_config = pop.validate()
        groups = cfg.attribute_groups()
        self.vocabulary: dict[str, list[Any]] = {
            "label": [0, 1],
            "sex": groups["sex"],
            "age_group": age_group_labels(cfg.population.age.bins),
            "site": groups["site"],
        }
        self.vocabulary.update({name: groups[name] for name in cfg.population.attributes})

    @classmethod
    def from_simulation(cls, folder: str | os.PathLike[str]) -> SimulatedGenerator:
        """The oracle of a simulated cohort: its folder's ``simulation.json`` (config and seed).

        ``folder`` is the folder :func:`~medgen.simulate.simulate` wrote (or a file in it, e.g.
        its ``manifest.csv``).

        Raises:
            MedgenFileNotFoundError: no ``simulation.json`` there.
            ConfigError: the sidecar is unreadable or holds no valid config and seed.
        """
        path = pathlib.Path(folder).expanduser()
        if path.is_file():
            path = path.parent
        sidecar = path / "simulation.json"
        if not sidecar.is_file():
            raise MedgenFileNotFoundError(
                f"SimulatedGenerator.from_simulation: {str(path)!r} holds no simulation.json; "
                "pass the folder medgen simulate wrote (it holds manifest.csv and "
                "simulation.json)."
            )
        try:
            info = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ConfigError(f"{str(sidecar)!r} is not readable JSON: {err}") from err
        if not isinstance(info, dict) or "config" not in info or "seed" not in info:
            raise ConfigError(
                f"{str(sidecar)!r} has no 'config' and 'seed': it was not written by "
                "medgen.simulate; rerun the simulation."
            )
        return cls(SimulationConfig.from_dict(info["config"]), seed=info["seed"])

    # ------------------------------------------------------------------ the protocol
    @property
    def conditions(self) -> tuple[str, ...]:
        """The columns :meth:`sample` conditions on: ``label``, ``sex``, ``age_group``,
        ``site`` and the population's user attributes."""
        return tuple(self.vocabulary)

    @property
    def training_image_ids(self) -> list[str]:
        """``[]``: the oracle is trained on no image (nothing can leak from a held-out split)."""
        return []

    def __repr__(self) -> str:
        return (
            f"SimulatedGenerator(config={self.config.name!r}, seed={self.simulation_seed}, "
            f"conditions={self.conditions})"
        )

    def sample(
        self,
        n: int | None,
        where: Mapping[str, Any] | pd.DataFrame | None = None,
        *,
        seed: int = 0,
    ) -> OracleSamples:
        """Draw ``n`` new subjects of the population that match ``where``.

        Subjects are rejection-sampled from the seed's population draw (chunks of 50,000
        subjects, in order): the first unused subject that matches each condition row. The
        subjects are a pure function of ``(config, simulation seed, seed, where)``; conditions
        not given follow the population (e.g. ``{"label": 1}`` gives positives with the
        population's sex ratio among positives).

        Args:
            n: the number of subjects (``None`` with a DataFrame ``where``: one per row).
            where: ``{"label": 1, "sex": "F"}`` (the same for every subject), a DataFrame with a
                row of conditions per subject (``None``/NaN cells: not given), or ``None``.
            seed: the seed of the draw. Calls with the same seed share one population draw, so
                overlapping conditions can return the same subject (with the same id); use a
                seed per call to get distinct subjects.

        Returns:
            :class:`OracleSamples` (render them with :meth:`write` or ``iter_subjects()``).

        Raises:
            MedgenValueError: ``n <= 0`` or not matching ``where``'s rows; an unknown condition
                column or value (the message lists the known ones); a combination with
                probability 0 in the population (or too rare to draw ``n`` of).
        """
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise MedgenValueError(f"sample: seed must be a non-negative integer, not {seed!r}.")
        seed = int(seed)
        rows = self._condition_rows(n, where)
        given = {col: [self._canonical(col, v) for v in rows[col].tolist()] for col in rows.columns}
        specs: list[tuple[tuple[str, Any], ...]] = [
            tuple((col, given[col][i]) for col in rows.columns if given[col][i] is not None)
            for i in range(len(rows))
        ]
        wanted: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for i, spec in enumerate(specs):
            wanted.setdefault(spec, []).append(i)

        key = (_TAG, self.simulation_seed, seed)
        parts: list[pd.DataFrame] = []  # the matching subjects of each chunk
        part_rows: list[int] = []  # ... and the condition row each one answers
        numbers = np.full(len(rows), -1, dtype=np.int64)
        found = dict.fromkeys(wanted, 0)
        drawn, chunk = 0, 0
        while any(found[s] < len(wanted[s]) for s in wanted):
            if drawn >= _MAX_DRAWS:
                spec = next(s for s in wanted if found[s] < len(wanted[s]))
                raise MedgenValueError(
                    f"sample: only {found[spec]} of {drawn:,} subjects drawn from the population "
                    f"have {_show(spec)} (probability about {found[spec] / drawn:.2g}); "
                    f"{len(wanted[spec])} were asked for. Ask for fewer of this combination."
                )
            table = self._population_chunk(key, chunk)
            free = np.ones(len(table), dtype=bool)
            takes: list[np.ndarray] = []
            for spec, positions in wanted.items():
                need = len(positions) - found[spec]
                if need <= 0:
                    continue
                match = free.copy()
                for col, value in spec:
                    match &= (table[col] == value).to_numpy()
                take = np.flatnonzero(match)[:need]
                free[take] = False
                answered = positions[found[spec] : found[spec] + len(take)]
                numbers[answered] = chunk * _CHUNK + table.index.to_numpy()[take]
                part_rows += answered
                takes.append(take)
                found[spec] += len(take)
            if takes:
                parts.append(table.iloc[np.concatenate(takes)])
            drawn += len(table)
            chunk += 1
            if drawn >= _ZERO_AFTER:
                for spec in wanted:
                    if found[spec] == 0:
                        raise MedgenValueError(
                            f"sample: no subject of the population has {_show(spec)} (none of "
                            f"{drawn:,} drawn): this combination has probability 0 under the "
                            f"config {self.config.name!r} (e.g. a group or site with proportion 0, "
                            "or a prevalence of 0 or 1). Ask for a combination that occurs."
                        )

        subjects = pd.concat(parts, ignore_index=True)
        subjects = subjects.iloc[np.argsort(np.asarray(part_rows), kind="stable")]
        subjects["subject_id"] = [f"oracle-s{seed}-{k:07d}" for k in numbers]
        subjects["split"] = ""  # the population draw's split means nothing here; write() sets it
        subjects.index = pd.RangeIndex(len(subjects), name="sample")
        conditions = subjects[list(self.conditions)].copy()
        return OracleSamples(
            conditions=conditions,
            subjects=subjects,
            population_index=numbers,
            seed=seed,
            key=key,
            config=self.population_config,
        )

    def write(
        self,
        samples: OracleSamples,
        out_dir: str | os.PathLike[str],
        *,
        split: str = "",
        format: str = "nifti",
        progress: bool = False,
    ) -> pathlib.Path:
        """Render ``samples`` with the simulator's renderer and writer into a new or empty folder.

        Writes, atomically (the folder appears complete or not at all): ``images/<id>.nii.gz``
        (or DICOM series ``images/<id>/``), marked synthetic (:func:`medgen.io.save`
        ``synthetic=True``, DerivationDescription / NIfTI descrip ``medgen simulator oracle
        seed=<seed> ...``), ``masks/<id>_mask.nii.gz``, ``manifest.csv`` and ``synthesis.json``
        (generator, config, seeds, counts per condition, versions).

        Args:
            samples: what :meth:`sample` returned.
            out_dir: a new or empty folder.
            split: the ``split`` of the rows (``""`` or ``"train"``).
            format: ``"nifti"`` or ``"dicom"``.
            progress: show a progress bar.

        Returns:
            The path of ``manifest.csv``, in the cohort schema with the columns of a simulated
            manifest: ``subject_id`` = ``oracle-s<seed>-<number>`` and ``image_id`` =
            ``<subject_id>-0`` (never a cohort's ``sim...`` ids), ``split``, ``source =
            synthetic``, ``generator = simulator-oracle``, ``seed``, the attribute and label
            columns and the ground-truth columns (``label_true``, ``severity``, ...).

        Raises:
            OutputPathError: ``out_dir`` exists and is not an empty folder.
            MedgenValueError: ``samples`` not drawn by this generator's population; an unknown
                ``split`` or ``format``.
        """
        from tqdm.auto import tqdm

        from medgen._internal.files import atomic_dir, write_table, write_text_atomic
        from medgen._internal.provenance import package_versions
        from medgen.simulate._simulate import manifest_table, save_subject

        if not isinstance(samples, OracleSamples):
            raise MedgenValueError(
                f"write: samples must be what SimulatedGenerator.sample returned, not "
                f"{type(samples).__name__}."
            )
        if samples.config.to_dict() != self.population_config.to_dict() or samples.key[1] != (
            self.simulation_seed
        ):
            raise MedgenValueError(
                "write: these samples were drawn by another SimulatedGenerator (other config or "
                "simulation seed); write them with the generator that drew them."
            )
        from medgen._internal.conditions import check_write_target

        out = check_write_target(out_dir, format=format, split=split, what="oracle samples")
        cfg = samples.config
        description = (
            f"medgen simulator oracle seed={samples.seed} sim_seed={self.simulation_seed} "
            f"{self.config.name}"
        )
        with atomic_dir(out) as tmp:
            (tmp / "images").mkdir()
            (tmp / "masks").mkdir()
            records = []
            subjects = tqdm(
                samples.iter_subjects(),
                total=len(samples),
                disable=not progress,
                desc="oracle",
                unit="subject",
            )
            for subj in subjects:
                name = str(subj.record["subject_id"])
                subj.record["split"] = split
                rec = save_subject(
                    cfg,
                    subj,
                    tmp,
                    name=name,
                    format=format,
                    description=description,
                    source="synthetic",
                )
                rec["generator"] = GENERATOR
                rec["seed"] = samples.seed
                records.append(rec)
            manifest = manifest_table(cfg, records)
            counts = {
                col: {str(k): int(v) for k, v in manifest[col].value_counts().sort_index().items()}
                for col in self.conditions
            }
            info = {
                "generator": GENERATOR,
                "description": "medgen simulator oracle: new subjects of the simulation's true "
                "population (scarce_positives strengths 0), rendered by the simulator",
                "config": self.config.to_dict(),
                "population_config": cfg.to_dict(),
                "simulation_seed": self.simulation_seed,
                "seed": samples.seed,
                "entropy_key": list(samples.key),
                "format": format,
                "split": split,
                "n_written": len(manifest),
                "counts": counts,
                "versions": package_versions(),
            }
            write_table(manifest, tmp / "manifest.csv", what="oracle manifest")
            write_text_atomic(tmp / "synthesis.json", json.dumps(info, indent=1, default=_plain))
        return out / "manifest.csv"

    # ------------------------------------------------------------------ helpers
    def _population_chunk(self, key: tuple[int, ...], chunk: int) -> pd.DataFrame:
        """Population subjects ``chunk * 50,000 ...``: the cohort table of the population
        config under the key ``(*key, 0, chunk)`` (the render key is ``(*key, 1, number)``)."""
        from medgen.simulate._bias import draw_cohort

        table, _ = draw_cohort(self.population_config, (*key, 0, chunk))
        return table

    def _condition_rows(
        self, n: int | None, where: Mapping[str, Any] | pd.DataFrame | None
    ) -> pd.DataFrame:
        from medgen._internal.conditions import condition_rows

        rows = condition_rows(n, where, unit="subjects")
        unknown = [str(c) for c in rows.columns if c not in self.vocabulary]
        if unknown:
            raise MedgenValueError(
                f"sample(where=...): {unknown} are not conditions of this generator; its "
                f"conditions are {list(self.conditions)}."
                + did_you_mean(unknown[0], self.conditions)
            )
        return rows

    def _canonical(self, col: str, value: Any) -> Any:
        """The vocabulary value ``value`` names (``None``: not given)."""
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return None
        known = self.vocabulary[col]
        for k in known:
            if str(value) == str(k):
                return k
            numeric = isinstance(value, int | float | np.integer | np.floating)
            if isinstance(k, int) and numeric and not isinstance(value, bool) and value == k:
                return k
        raise MedgenValueError(
            f"sample(where=...): {col}={value!r} is not a value of the population; known values "
            f"of {col!r}: {known}." + did_you_mean(str(value), [str(k) for k in known])
        )


def _as_config(config: Any) -> SimulationConfig:
    if isinstance(config, SimulationConfig):
        return config.validate()
    if isinstance(config, Mapping):
        return SimulationConfig.from_dict(dict(config))
    if isinstance(config, str) and not config.lower().endswith((".yaml", ".yml")):
        from medgen.simulate._presets import preset

        return preset(config)
    if isinstance(config, str | os.PathLike):
        return SimulationConfig.from_yaml(pathlib.Path(config))
    raise ConfigError(
        f"SimulatedGenerator: config must be a SimulationConfig, a dict, a preset name or a YAML "
        f"path, not {type(config).__name__}."
    )


def _show(spec: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{c}={v!r}" for c, v in spec) if spec else "any values"


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
