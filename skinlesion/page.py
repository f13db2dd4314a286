"""What the page says and does: the texts that follow the selected task, and the event
handlers behind the buttons and the API endpoints. The layout that wires them is ui.py.

Handlers receive the upload unprocessed (the events use preprocess=False), so every check and
the decoding are the Predictor's, and a bad file gets its message as a `gr.Error`.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .card import card_body, is_placeholder, read_metrics
from .explain import OVERLAY_OPACITY, overlay
from .inference import InputError, Predictor

TOP_CLASS = "top"  # the class selector's value for "explain the decided class" (API name kept)
VERDICT_COLOURS = {"refer": "#b71c1c", "uncertain": "#e65100", "clear": "#2e7d32",
                   "review": "#e65100", "defect": "#1565c0"}
PRIVACY = """
**Privacy.** Images are processed in memory. Nothing is flagged, logged or kept: the
temporary copies the web server needs to show an image are deleted within two minutes, and
all of them when the app stops.
"""


@dataclass(frozen=True)
class TaskView:
    """Everything on the page that follows the selected task."""
    intro: str
    notice: str               # empty: no notice shown
    classes: str              # the "About the classes" table
    ethics: str
    model_card: str           # the Model tab, rendered from the model folder's metrics.json
    confusion_matrix: str | None
    targets: list[tuple[str, str]]  # the "Explain class" choices
    examples: list[str]

    @classmethod
    def of(cls, predictor: Predictor, examples: list[str]) -> "TaskView":
        task = predictor.task
        metrics = read_metrics(predictor.folder) if predictor.folder else None
        matrix = predictor.folder / "confusion_matrix.png" if predictor.folder else None
        return cls(
            intro=(f"Upload {task.subject}: the model gives the probability of each of its {len(task.classes)} "
                   f"classes, a verdict, and a Grad-CAM map of the regions that drove the answer. "
                   f"**{task.disclaimer}**"),
            notice=placeholder_notice(metrics),
            classes=class_table_markdown(predictor),
            ethics=task.ethics + PRIVACY,
            model_card=("\n".join(line for line in card_body(predictor.spec, metrics).splitlines()
                                  if not line.startswith("![")) if metrics  # the image is shown below it
                        else "No measured results (metrics.json) in the model folder."),
            confusion_matrix=str(matrix) if matrix and matrix.is_file() else None,
            targets=[("Decided class", TOP_CLASS)] + [(f"{c.code} — {c.name}", c.code) for c in task.classes],
            examples=examples)


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


def verdict_html(level: str, headline: str, detail: str) -> str:
    colour = VERDICT_COLOURS[level]
    return (f"<div id='verdict' data-level='{level}' style='border-left:6px solid {colour};padding:8px 12px'>"
            f"<div style='font-size:1.3em;font-weight:600;color:{colour}'>{headline}</div>"
            f"<div>{detail}</div></div>")


def example_images(predictor: Predictor, data_root: str | None) -> list[str]:
    """One image per class from a local copy of the task's data, when there is one (never committed)."""
    if not data_root:
        return []
    task = predictor.task
    try:
        records = task.load(Path(data_root) / task.data_folder)
    except Exception:  # no data here, or not this layout: simply no examples
        return []
    first: dict[str, str] = {}
    for r in sorted(records, key=lambda r: r.image_id):
        first.setdefault(r.label, str(r.path))
    return [first[c] for c in task.codes if c in first]


def image_source(payload: dict | None) -> str | bytes | None:
    """The uploaded file as gradio hands it over unprocessed: its cached path, or the bytes of
    a data URL."""
    if not payload:
        return None
    if payload.get("path"):
        return payload["path"]
    url = payload.get("url") or ""
    if url.startswith("data:") and "," in url:
        return base64.b64decode(url.split(",", 1)[1])
    raise gr.Error("Cannot analyse this image: the upload arrived without a file.")


class Handlers:
    """The events of the page and the API, over the loaded models (task key → Predictor, the
    default task first). The models are the only state shared between requests."""

    def __init__(self, predictors: dict[str, Predictor]):
        self.predictors = predictors
        self.first = next(iter(predictors))

    def predictor(self, task: str | None) -> Predictor:
        task = task or self.first
        if task not in self.predictors:
            raise gr.Error(f"Unknown task {task!r}; this app serves: {', '.join(self.predictors)}.")
        return self.predictors[task]

    def _explained(self, image: dict | None, target: str | None, opacity: float, task: str | None):
        predictor = self.predictor(task)
        source = image_source(image)
        if source is None:
            raise gr.Error("Upload an image first.")
        try:
            return predictor, predictor.explain(source, None if target in (None, "", TOP_CLASS) else target, opacity)
        except InputError as error:
            raise gr.Error(f"Cannot analyse this image: {error}") from None

    def classify(self, image: dict | None, task: str | None = None) -> tuple[str, dict[str, float]] | None:
        """The decided class and the calibrated probability of every class, for one image."""
        predictor = self.predictor(task)
        source = image_source(image)
        if source is None:
            return None
        try:
            probabilities = predictor.predict(source)
        except InputError as error:
            raise gr.Error(f"Cannot analyse this image: {error}") from None
        return predictor.decide(probabilities), probabilities

    def explain(self, image: dict | None, target: str | None = TOP_CLASS, opacity: float = OVERLAY_OPACITY,
                task: str | None = None):
        """Grad-CAM overlay for one image: the decided class, or the class given."""
        return self._explained(image, target, opacity, task)[1].overlay

    def analyse(self, image: dict | None, target: str | None = TOP_CLASS, opacity: float = OVERLAY_OPACITY,
                task: str | None = None):
        """Verdict, probabilities and Grad-CAM overlay, from one forward/backward pass."""
        predictor, result = self._explained(image, target, opacity, task)
        verdict = predictor.triage(result.probabilities)
        return (verdict_html(verdict.level, verdict.headline, verdict.detail),
                (predictor.decide(result.probabilities), result.probabilities),
                result.overlay, (result.image, result.heatmap))

    @staticmethod
    def reblend(state, opacity: float):
        """The last heat-map over the last image at a new opacity, without the model."""
        if state is None:
            return gr.skip()
        rgb, heatmap = state
        return overlay(rgb, heatmap, opacity)
