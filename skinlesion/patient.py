"""The patient's record, when the person asking gives it: age, sex and body site, each optional.

    Patient.parse(age="63", sex="male", site="back", sites=...) -> Patient   (InputError when wrong)

What a model folder does with a record — the evidence it adds to the image's logits, and the
decision rule of an answer that used one — is models/record.py's. A record is never stored,
logged or repeated in a message: an answer names the fields it used, not their values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .images import InputError

FIELDS = ("age", "sex", "site")
SEXES = ("male", "female")
MAX_AGE = 120.0
BLANK = {"", "unknown", "none", "not given"}


@dataclass(frozen=True)
class Patient:
    """The fields given; None where not given."""
    age: float | None = None
    sex: str | None = None
    site: str | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields given, in FIELDS' order."""
        return tuple(f for f in FIELDS if getattr(self, f) is not None)

    @property
    def given(self) -> bool:
        return bool(self.fields)

    @classmethod
    def parse(cls, age: object = None, sex: object = None, site: object = None,
              sites: Sequence[str] | None = None) -> "Patient":
        """The fields as a form or a client sends them (strings, numbers, blanks); InputError
        with what is wrong. `sites`: the body sites the model knows (None: any)."""
        def blank(value: object) -> bool:
            return value is None or (isinstance(value, str) and value.strip().lower() in BLANK) or \
                (isinstance(value, float) and math.isnan(value))

        years = None
        if not blank(age):
            try:
                years = float(str(age).strip())
            except ValueError:
                raise InputError("age must be a number of years") from None
            if not 0 <= years <= MAX_AGE:
                raise InputError(f"age must be between 0 and {MAX_AGE:.0f} years")
        chosen_sex = None if blank(sex) else str(sex).strip().lower()
        if chosen_sex is not None and chosen_sex not in SEXES:
            raise InputError(f"sex must be one of {', '.join(SEXES)} or left blank")
        chosen_site = None if blank(site) else str(site).strip().lower()
        if chosen_site is not None and sites is not None and chosen_site not in sites:
            raise InputError(f"unknown body site; choose one of {', '.join(sites)} or leave it blank")
        return cls(years, chosen_sex, chosen_site)
