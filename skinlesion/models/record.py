"""What a patient's record (patient.py: age, sex, body site) adds to a model folder's answer.

    PatientModel.from_config(config) -> PatientModel | None
    model.fuse(logits, patients) -> logits; model.rule: the decision rule of an answer with a record

The image model answers p(class | image). A logistic regression fitted on the training split's
records alone (no image: nothing there the image network has already fitted) gives
p(class | record); under the assumption that image and record are independent given the class,
the two combine by the product rule, p(class | image, record) ∝ p(class | image) · p(class |
record) / p(class): the record's log-likelihood ratio is added to the image's logits, scaled by a
weight chosen on validation (the assumption holds only in part: the weight says how far). Any
part of a record may be given: each subset of the fields has its own regression, fitted on those
fields alone (one fitted on every subset at once, with fields blanked, measured 0.010 lower on
validation with whole records); a record with no field is no record, and the image's own rule
answers. An answer that used a record has its own decision rule (temperature, class bias,
recall-first thresholds, conformal sets), fitted on validation on the fused logits
(train/patient.py). Written here rather than as a pickled scikit-learn model: a model folder
holds no code, only numbers config.json can carry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.special import log_softmax

from ..decision import DecisionRule
from ..patient import SEXES, Patient

CONFIG_KEY = "patient"     # config.json: the record model, its weight and its rule
AGE_SCALE = 100.0          # age enters as (age/100, (age/100)², unknown)


def encode(patients: Sequence[Patient], sites: Sequence[str]) -> np.ndarray:
    """Patients → the regression's inputs: age/100, its square, age unknown; one column per sex
    and per site (all zero: not given)."""
    rows = np.zeros((len(patients), 3 + len(SEXES) + len(sites)))
    for row, p in zip(rows, patients):
        if p.age is None:
            row[2] = 1.0
        else:
            row[0], row[1] = p.age / AGE_SCALE, (p.age / AGE_SCALE) ** 2
        if p.sex in SEXES:
            row[3 + SEXES.index(p.sex)] = 1.0
        if p.site in sites:
            row[3 + len(SEXES) + list(sites).index(p.site)] = 1.0
    return rows


def key(fields: Sequence[str]) -> str:
    """A subset of the fields as config.json names its regression: "age+site"."""
    return "+".join(fields)


@dataclass(frozen=True)
class PatientModel:
    """A regression per subset of the fields (coefficients over `encode`'s columns, and the
    intercepts), the training split's log class shares, the weight of the record's evidence and
    the rule of an answer that used it."""
    sites: tuple[str, ...]
    regressions: dict[str, tuple[np.ndarray, np.ndarray]]  # key(fields) → (classes × columns, classes)
    log_prior: np.ndarray      # classes
    weight: float
    rule: DecisionRule

    def log_ratio(self, patients: Sequence[Patient]) -> np.ndarray:
        """log p(class | record) − log p(class): what each record says, patients × classes (0 for
        a record with nothing given)."""
        out = np.zeros((len(patients), len(self.log_prior)))
        for i, p in enumerate(patients):
            if p.given:
                coef, intercept = self.regressions[key(p.fields)]
                out[i] = log_softmax(encode([p], self.sites)[0] @ coef.T + intercept) - self.log_prior
        return out

    def fuse(self, logits: np.ndarray, patients: Sequence[Patient]) -> np.ndarray:
        """The image's logits (rows × classes; one patient for all rows, or one per row) with the
        record's evidence added."""
        return np.asarray(logits, dtype=np.float64) + self.weight * self.log_ratio(patients)

    def to_config(self) -> dict[str, Any]:
        return {"sites": list(self.sites), "log_prior": self.log_prior.tolist(), "weight": self.weight,
                "regressions": {k: {"coef": np.round(c, 6).tolist(), "intercept": np.round(b, 6).tolist()}
                                for k, (c, b) in self.regressions.items()}, "rule": self.rule.to_config()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PatientModel | None":
        """The folder's record model (None when it has none)."""
        block = config.get(CONFIG_KEY)
        if not block:
            return None
        rule = DecisionRule.from_config({**block["rule"], "label_names": config["label_names"]})
        regressions = {k: (np.asarray(r["coef"], float), np.asarray(r["intercept"], float))
                       for k, r in block["regressions"].items()}
        return cls(tuple(block["sites"]), regressions, np.asarray(block["log_prior"], float),
                   float(block["weight"]), rule)
