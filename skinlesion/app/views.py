"""What the page shows, in words and markup: the texts that follow the selected task
(`TaskView`), class names, the verdict's HTML, the notices. No model runs here.

The patient's record (age, sex, body site; patient.py) is shown only by the names of the fields
an answer used, never by their values.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from .. import skintone
from ..analysis import Analysis
from ..models.card import CONFUSION_PNG, RELIABILITY_PNG, card_body, is_placeholder, read_metrics
from ..models.card_subgroups import SUBGROUPS_PNG, measured_note
from ..patient import SEXES
from ..predictor import Predictor
from ..tasks import TASKS, ClassInfo, Verdict
from ..tasks.base import ASSETS
from ..trust.gallery import CASES_SHOWN, summary

TOP_CLASS = "top"  # the class selector's value for "explain the decided class" (API name kept)
TILE_CHOICES = [(f"Auto (on for {', '.join(t.title.lower() for t in TASKS.values() if t.tile_large_images)})",
                 "auto"), ("On", "on"), ("Off", "off")]
NOT_GIVEN = "not given"  # the record's blank choice (patient.Patient.parse reads it as no value)
SEX_CHOICES = [NOT_GIVEN, *SEXES]
FEW_TRAINING_IMAGES = 100  # fewer training images of an image's skin tone: the page warns
VERDICT_COLOURS = {"unknown": "#616161", "refer": "#b71c1c", "uncertain": "#e65100", "clear": "#2e7d32",
                   "review": "#e65100", "named": "#1565c0"}
PRIVACY = """
**Privacy.** Images are processed in memory and nothing is flagged. {logged} The temporary
copies the web server needs to show an image, and a batch's CSV, are deleted within about three
minutes, and all of them when the app stops. The app reads only what is uploaded to it.
"""
NOT_LOGGED = "Nothing is logged or kept."
LOGGED = ("Whoever runs this app keeps a log of its answers: for each image, the time, the answer (decided "
          "class, probabilities, prediction set, the checks' outcome) and a fingerprint of the image (SHA-256) — "
          "never the image, its name, who sent it or the patient's record.")


@dataclass(frozen=True)
class TaskView:
    """Everything on the page that follows the selected task."""
    intro: str
    notice: str               # empty: no notice shown
    classes: str              # the "About the classes" table
    ethics: str
    model_card: str           # the Model tab, rendered from the model folder's metrics.json
    confusion_matrix: str | None
    reliability: str | None         # the reliability diagram
    subgroups: str | None           # results by subgroup (python -m train.subgroups)
    targets: list[tuple[str, str]]  # the "Explain class" choices
    examples: list[str]             # one image per class shipped in assets/examples, and from a local data copy
    example_labels: list[str]       # each example's true class
    record: str                     # the note over the patient's record; empty: the model answers from the
                                    # image alone, and the record's fields are hidden
    sites: list[str]                # the "Body site" choices: NOT_GIVEN, then the sites the record model knows

    @property
    def samples(self) -> list[list[str]]:
        return [[e] for e in self.examples]

    @classmethod
    def of(cls, predictor: Predictor, examples: list[tuple[str, str]], logged: bool = False) -> "TaskView":
        """The page for `predictor`'s task; `logged`: the decision log is on (the privacy note says so)."""
        task = predictor.task
        metrics = read_metrics(predictor.folder) if predictor.folder else None
        plots = ({name: predictor.folder / name for name in (CONFUSION_PNG, RELIABILITY_PNG, SUBGROUPS_PNG)}
                 if predictor.folder else {})
        shown = {name: str(path) if path.is_file() else None for name, path in plots.items()}
        return cls(
            intro=(f"Upload {task.subject}: the model gives the probability of each of its {len(task.classes)} "
                   f"classes, a verdict, and a Grad-CAM map of the regions that drove the answer. "
                   f"{answering_note(predictor)}**{task.disclaimer}**"),
            notice=placeholder_notice(metrics),
            classes=class_table_markdown(predictor),
            ethics=task.ethics + measured_note(metrics) + PRIVACY.format(logged=LOGGED if logged else NOT_LOGGED),
            model_card=("\n".join(line for line in card_body(predictor.spec, metrics).splitlines()
                                  if not line.startswith("![")) if metrics  # the images are shown below it
                        else "No measured results (metrics.json) in the model folder."),
            confusion_matrix=shown.get(CONFUSION_PNG), reliability=shown.get(RELIABILITY_PNG),
            subgroups=shown.get(SUBGROUPS_PNG),
            targets=[("Decided class", TOP_CLASS)] + [(display_name(c), c.code) for c in task.classes],
            examples=[path for path, _ in examples],
            example_labels=[f"{display_name(task.info(code))}, true class" for _, code in examples],
            record=record_note(predictor),
            sites=[NOT_GIVEN, *(predictor.patient_model.sites if predictor.patient_model else ())])


def record_note(predictor: Predictor) -> str:
    """What the patient's record does to the answer, for a model that has a record model."""
    if predictor.patient_model is None:
        return ""
    return (f"The answer then adds what the record says, from a model fitted on the {predictor.task.dataset} "
            "training records (and a decision rule fitted for answers with a record). Leave a field blank when "
            "it is not known; leave them all blank to answer from the image alone. Nothing of the record is "
            "stored or logged.")


def answering_note(predictor: Predictor) -> str:
    """Which models answer, and which one the map and the similar cases come from (ensemble.py)."""
    if predictor.net.single:
        return ""
    answered = predictor.net.describe(predictor.spec.input_size)
    models = answered["models"]
    if len(models) == 1:  # one model on the image and its mirror images
        return (f"The answer averages {answered['passes']} passes of {models[0]}: on the image and its mirror "
                "images; the map and the similar cases come from the image's own pass. ")
    mirrored = " and their mirror images" if len(answered["views"]) > 1 else ""
    return (f"The answer averages {len(models)} models ({', '.join(models)}) on the "
            f"image{mirrored}; the map and the similar cases come from the first of them. ")


OVERLAY_OPACITY = 0.45  # the heat-map's default weight over the image (API, page, Predictor)
COLOURS = colormaps["jet"](np.linspace(0, 1, 256))[:, :3].astype(np.float32)  # a lookup table


def heat_levels(heatmap: np.ndarray) -> np.ndarray:
    """A heat-map in 0..1 as the 256 levels the overlay draws (uint8: a quarter of float32's
    size, what the page keeps in its state)."""
    return heatmap if heatmap.dtype == np.uint8 else (heatmap * 255).round().astype(np.uint8)


def overlay(rgb: np.ndarray, heatmap: np.ndarray, opacity: float = OVERLAY_OPACITY) -> Image.Image:
    """The colour-mapped heat-map (0..1, or its `heat_levels`) blended over the image; weak
    attributions stay see-through."""
    levels = heat_levels(heatmap)
    colours = COLOURS[levels]
    alpha = float(np.clip(opacity, 0, 1)) * np.sqrt(levels / np.float32(255))[..., None]
    blended = rgb.astype(np.float32) / 255 * (1 - alpha) + colours * alpha
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def display_name(info: ClassInfo) -> str:
    """How the page names a class: the full name, with the code the API uses."""
    return f"{info.name} ({info.code})"


def sanity_flags(predictor: Predictor) -> dict[str, str]:
    """Method → a warning for the methods whose maps failed the randomisation check in the
    model folder's metrics.json (the map barely changes when the weights are randomised)."""
    metrics = read_metrics(predictor.folder) if predictor.folder else None
    methods = ((metrics or {}).get("explanations") or {}).get("methods", {})
    return {m: " ⚠ barely depends on the weights (sanity check)" for m, r in methods.items()
            if r.get("sanity", {}).get("fails")}


def placeholder_notice(metrics: dict | None) -> str:
    if not metrics or not is_placeholder(metrics):
        return ""
    return (f"⚠️ **The model behind this task is a low-accuracy placeholder** (test balanced accuracy "
            f"{metrics['splits']['test']['balanced_accuracy']:.2f}): treat its answers as a demonstration "
            f"of the interface, not as a classifier.")


def class_table_markdown(predictor: Predictor) -> str:
    rows = [f"| <span style='color:{c.colour}'>■</span> **{c.code}** | {c.name} | {c.risk} | {c.description} |"
            for c in predictor.task.classes]
    return "| class | name | group | what it is |\n|---|---|---|---|\n" + "\n".join(rows)


def verdict_html(verdict: Verdict, extra: str = "") -> str:
    colour = VERDICT_COLOURS[verdict.level]
    return (f"<div id='verdict' data-level='{verdict.level}' style='border-left:6px solid {colour};"
            f"padding:8px 12px'><div style='font-size:1.3em;font-weight:600;color:{colour}'>{verdict.headline}"
            f"</div><div>{verdict.detail}</div>{extra}</div>")


def prediction_set_text(analysis: Analysis, predictor: Predictor) -> str:
    """"90% prediction set: Melanoma, Melanocytic nevus", or why there is none to show."""
    if not analysis.known:
        return "No prediction set: the probabilities mean nothing for an image that is not of this kind."
    return "90% prediction set: " + ", ".join(predictor.task.info(c).name for c in analysis.prediction_set)


def record_used(analysis: Analysis) -> str:
    """Which fields of the patient's record an answer (not a refusal) used: their names, never
    their values."""
    if analysis.patient is None or not analysis.known:
        return ""
    return f"<div id='patient-record'>With the patient's record: {', '.join(analysis.patient.fields)}.</div>"


def method_note(analysis: Analysis) -> str:
    """Which map the overlay shows, for an answer (not a refusal) that has one."""
    if not analysis.known or analysis.method is None:
        return ""
    return f"<div id='method-note'>The {analysis.method} overlay shows where the model found it.</div>"


NOT_ANALYSED = "not analysed"  # the label of an image the modality check refuses, before its reason
UNFAMILIAR = "unfamiliar image, one of"  # the label of an image unlike the training images, before its set


def label_value(analysis: Analysis) -> tuple:
    """What the label shows: the decided class over every class's probability; for an image
    unlike the training images, its prediction set instead of one class (never more confident
    than the set), as (decided, probabilities, set); for an image the modality check refuses, no
    class and no bars, only the refusal (the label's large type is what a person reads)."""
    if not analysis.known:
        return None, analysis.verdict.headline
    if not analysis.familiar:
        return analysis.decided, analysis.probabilities, tuple(analysis.prediction_set)
    return analysis.decided, analysis.probabilities


def analyse_outputs(analysis: Analysis, predictor: Predictor, opacity: float) -> tuple:
    """What /analyse shows of an analysis: the verdict (with the prediction set), the decided
    class and probabilities, the overlay, and the (image, heat-map) state the opacity slider reblends."""
    return (answer_html(analysis, predictor), label_value(analysis),
            overlay(analysis.image, analysis.heatmap, opacity), (analysis.image, heat_levels(analysis.heatmap)))


def page_outputs(analysis: Analysis, predictor: Predictor, opacity: float) -> tuple:
    """The page's Analyse: /analyse's outputs, then the similar cases' summary and thumbnails."""
    cases = similar_cases(analysis, predictor)
    return (*analyse_outputs(analysis, predictor, opacity), similar_summary(analysis, predictor), cases)


def answer_html(analysis: Analysis, predictor: Predictor) -> str:
    """The verdict with the prediction set, the fields of the patient's record it used, the map's
    method and the estimated skin tone under it (the page and /analyse)."""
    return verdict_html(analysis.verdict, f"<div id='prediction-set' data-known='{int(analysis.known)}' "
                                          f"data-familiar='{int(analysis.familiar)}' "
                                          f"style='margin-top:6px;font-weight:600'>"
                                          f"{prediction_set_text(analysis, predictor)}</div>{record_used(analysis)}"
                                          f"{method_note(analysis)}{skin_tone_html(analysis, predictor)}")


@lru_cache(maxsize=None)
def training_counts(folder: Path | None) -> dict[str, dict[str, int]]:
    """Each group's count of training images (metrics.json, python -m train.subgroups), read once."""
    metrics = read_metrics(folder) if folder else None
    return ((metrics or {}).get("subgroups") or {}).get("training_counts", {})


def skin_tone_html(analysis: Analysis, predictor: Predictor) -> str:
    """The image's estimated skin tone, and a warning when the training images hold few of it
    (fewer than FEW_TRAINING_IMAGES)."""
    if analysis.skin_tone is None:
        return ""
    counts = training_counts(predictor.folder).get(skintone.ATTRIBUTE, {})
    text = (f"<div id='skin-tone' data-group='{analysis.skin_tone}'>Estimated skin tone: {analysis.skin_tone} "
            f"(ITA {analysis.skin_ita:.0f}°, from the skin around the lesion; a rough guide).</div>")
    seen = counts.get(analysis.skin_tone)
    if seen is not None and seen < FEW_TRAINING_IMAGES:
        text += (f"<div id='skin-tone-warning' style='color:{VERDICT_COLOURS['uncertain']};font-weight:600'>"
                 f"Only {seen} of the {sum(counts.values()):,} training images show {analysis.skin_tone} skin: "
                 "the model's accuracy on such skin is unknown.</div>")
    return text


EXAMPLES = ASSETS / "examples"  # TASK/CODE.jpg: one test-split image per class (python -m train.gallery --examples)


def example_images(predictor: Predictor, data_root: str | None) -> list[tuple[str, str]]:
    """(file, true class): the shipped test-split image of each class, then one image per class
    from a local copy of the task's data when there is one (never committed)."""
    task = predictor.task
    shipped = [(str(EXAMPLES / task.key / f"{c}.jpg"), c) for c in task.codes
               if (EXAMPLES / task.key / f"{c}.jpg").is_file()]
    if not data_root:
        return shipped
    try:
        records = task.load(Path(data_root) / task.data_folder)
    except Exception:  # no data here, or not this layout: the shipped examples only
        return shipped
    first: dict[str, str] = {}
    for r in sorted(records, key=lambda r: r.image_id):
        first.setdefault(r.label, str(r.path))
    return shipped + [(first[c], c) for c in task.codes if c in first]


def similar_cases(analysis: Analysis, predictor: Predictor) -> list[tuple[np.ndarray, str]]:
    """The nearest gallery cases as (thumbnail, caption): diagnosis, how it was confirmed, similarity."""
    cases = predictor.trust.cases(analysis.similar[:CASES_SHOWN])
    return [(case.thumbnail, f"{display_name(predictor.task.info(case.code))} · {case.confirmation} · "
                             f"similarity {case.similarity:.2f}") for case in cases]


def similar_summary(analysis: Analysis, predictor: Predictor) -> str:
    """One line over the nearest cases, and a warning when they disagree with the decided class."""
    if predictor.trust.gallery is None:
        return "This model ships no reference gallery."
    if not analysis.similar:
        return "No similar cases: the image is not one the model knows."
    counts = summary(analysis.similar)
    line = (f"Of the {len(analysis.similar)} most similar training images: "
            + ", ".join(f"{n} {code}" for code, n in counts.items()) + ".")
    most = next(iter(counts))
    if most != analysis.decided:
        names = {c.code: c.name for c in predictor.task.classes}
        line += (f" **Most of them are {names[most]}, not the decided {names[analysis.decided]}: the similar cases "
                 "and the classifier disagree, a reason to look closer.**")
    return line
