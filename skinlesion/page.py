"""What the page says and does: the texts that follow the selected task, and the event
handlers behind the buttons and the API endpoints. The layout that wires them is ui.py.

Handlers receive the request's values unprocessed (the events use preprocess=False): each
handler first checks every value against its choices (`Handlers.checked`) and takes only
uploaded files (uploads.py); the decoding is the Predictor's. Whatever is wrong gets its
message as a `gr.Error`, which echoes at most `ECHO` characters of what the client sent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from .batch import MAX_PIXELS, BatchError, analyse, check_limits, write_csv
from .card import card_body, is_placeholder, read_metrics
from .explain import GRAD_CAM, METHODS, OVERLAY_OPACITY, overlay
from .inference import InputError, Predictor, load_image
from .tasks import ClassInfo
from .tiles import TiledAnswer, analyse_tiles, tiled_answer, where, worth_tiling
from .uploads import UploadRefused, batch_csv_path, held, upload_source, uploaded_files

BATCH_HEADERS = ["file", "decided class", "probability", "verdict", "error"]
TILE_AUTO = "auto"
TILE_CHOICES = [("Auto (on for steel strips)", TILE_AUTO), ("On", "on"), ("Off", "off")]
ECHO = 40  # characters of a client's value an error message repeats
TOP_CLASS = "top"  # the class selector's value for "explain the decided class" (API name kept)
VERDICT_COLOURS = {"refer": "#b71c1c", "uncertain": "#e65100", "clear": "#2e7d32",
                   "review": "#e65100", "defect": "#1565c0"}
PRIVACY = """
**Privacy.** Images are processed in memory. Nothing is flagged, logged or kept: the
temporary copies the web server needs to show an image, and a batch's CSV, are deleted within
about three minutes, and all of them when the app stops. The app reads only what is uploaded
to it.
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
    examples: list[str]             # one image per class from a local copy of the data
    example_labels: list[str]       # each example's true class

    @property
    def samples(self) -> list[list[str]]:
        return [[e] for e in self.examples]

    @classmethod
    def of(cls, predictor: Predictor, examples: list[tuple[str, str]]) -> "TaskView":
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
            targets=[("Decided class", TOP_CLASS)] + [(display_name(c), c.code) for c in task.classes],
            examples=[path for path, _ in examples],
            example_labels=[f"{display_name(task.info(code))}, true class" for _, code in examples])


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


def verdict_html(level: str, headline: str, detail: str) -> str:
    colour = VERDICT_COLOURS[level]
    return (f"<div id='verdict' data-level='{level}' style='border-left:6px solid {colour};padding:8px 12px'>"
            f"<div style='font-size:1.3em;font-weight:600;color:{colour}'>{headline}</div>"
            f"<div>{detail}</div></div>")


def example_images(predictor: Predictor, data_root: str | None) -> list[tuple[str, str]]:
    """(file, true class) of one image per class from a local copy of the task's data, when
    there is one (never committed)."""
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
    return [(first[c], c) for c in task.codes if c in first]


def shown(value: object) -> str:
    """A client's value as an error message repeats it: its repr, cut to ECHO characters."""
    text = repr(value)
    return text if len(text) <= ECHO else text[:ECHO] + "…"


def image_source(payload: object) -> Path | bytes | None:
    """The uploaded image as gradio hands it over unprocessed: the uploaded file, or the bytes
    of a data URL (uploads.py); a gr.Error for anything else."""
    try:
        return upload_source(payload)
    except UploadRefused as error:
        raise gr.Error(f"Cannot analyse this image: {error}.") from None


def tiles_on(predictor: Predictor, choice: str | bool | None) -> bool:
    """A TILE_CHOICES value (or a bool) → whether long images are tiled for this model's task."""
    if isinstance(choice, bool):
        return choice
    return predictor.task.tile_large_images if choice in (None, "", TILE_AUTO) else choice == "on"


class Handlers:
    """The events of the page and the API, over the loaded models (task key → Predictor, the
    default task first). The models are the only state shared between requests."""

    def __init__(self, predictors: dict[str, Predictor]):
        self.predictors = predictors
        self.first = next(iter(predictors))
        self.flags = {task: sanity_flags(p) for task, p in predictors.items()}  # read once, not per request

    def predictor(self, task: object) -> Predictor:
        task = task or self.first
        if not isinstance(task, str) or task not in self.predictors:
            raise gr.Error(f"Unknown task {shown(task)}; this app serves: {', '.join(self.predictors)}.")
        return self.predictors[task]

    def checked(self, task: object, target: object = None, opacity: object = OVERLAY_OPACITY,
                tile: object = TILE_AUTO, method: object = GRAD_CAM) -> tuple[Predictor, str | None, float]:
        """Every value of a request against its choices, before anything is read or decoded:
        the task's Predictor, the class to explain (None: the decided one) and the opacity."""
        predictor = self.predictor(task)
        target = None if target in (None, "", TOP_CLASS) else target
        if target is not None and target not in predictor.codes:
            raise gr.Error(f"Unknown class {shown(target)}; choose {TOP_CLASS!r} or one of {', '.join(predictor.codes)}.")
        if tile not in (None, "", True, False, *(value for _, value in TILE_CHOICES)):
            raise gr.Error(f"Unknown tile setting {shown(tile)}; choose one of {', '.join(v for _, v in TILE_CHOICES)}.")
        if method not in (None, "", *METHODS):
            raise gr.Error(f"Unknown explanation method {shown(method)}; choose one of {', '.join(METHODS)}.")
        if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
            raise gr.Error(f"The opacity must be a number from 0 to 1, not {shown(opacity)}.")
        return predictor, target, float(opacity)

    @staticmethod
    def _decoded(image: object):
        """The upload as a checked RGB array (decoded once per request), or a gr.Error."""
        source = image_source(image)
        if source is None:
            raise gr.Error("Upload an image first.")
        try:
            return load_image(source)
        except InputError as error:
            raise gr.Error(f"Cannot analyse this image: {error}") from None

    def _explained(self, image: object, target: object, opacity: object, task: object, tile: object,
                   method: object = GRAD_CAM):
        """The Predictor and its explanation of the upload."""
        predictor, target, opacity = self.checked(task, target, opacity, tile, method)
        return predictor, self._explain(predictor, self._decoded(image), target, opacity, tile, method)

    @staticmethod
    def _explain(predictor: Predictor, rgb: np.ndarray, target: str | None, opacity: float,
                 tile: str | bool | None, method: str | None):
        """Of the whole image with `method`, or stitched from Grad-CAM tiles when tiling is on
        (TILE_CHOICES) and the image is long enough."""
        try:
            if tiles_on(predictor, tile) and worth_tiling(rgb.shape[1], rgb.shape[0]):
                return analyse_tiles(predictor, rgb, target, opacity)
            return predictor.explain(rgb, target, opacity, method or GRAD_CAM)
        except InputError as error:
            raise gr.Error(f"Cannot analyse this image: {error}") from None

    def classify(self, image: dict | None, task: str | None = None,
                 tile: str = TILE_AUTO) -> tuple[str, dict[str, float]] | None:
        """The decided class and the calibrated probability of every class, for one image (a
        long one by tiles when tiling is on: the worst tile's)."""
        predictor, _, _ = self.checked(task, tile=tile)
        source = image_source(image)
        if source is None:
            return None
        try:
            rgb = load_image(source)
            tiled = tiled_answer(predictor, rgb) if tiles_on(predictor, tile) else None
            probabilities = tiled[0] if tiled else predictor.predict(rgb)
        except InputError as error:
            raise gr.Error(f"Cannot analyse this image: {error}") from None
        return predictor.decide(probabilities), probabilities

    def explain(self, image: dict | None, target: str | None = TOP_CLASS, opacity: float = OVERLAY_OPACITY,
                task: str | None = None, tile: str = TILE_AUTO, method: str = GRAD_CAM):
        """Heat-map overlay for one image by `method` ("Grad-CAM", "Integrated Gradients",
        "Occlusion"): the decided class, or the class given; long images by Grad-CAM tiles when
        `tile` is "on", or "auto" for a task that tiles (steel)."""
        return self._explained(image, target, opacity, task, tile, method)[1].overlay

    def compare(self, image: dict | None, target: str | None = TOP_CLASS, opacity: float = OVERLAY_OPACITY,
                task: str | None = None) -> list[tuple[Image.Image, str]]:
        """Every method's overlay for one image, side by side, each captioned with its name and
        what its sanity check found (the model card's figures)."""
        predictor, target, opacity = self.checked(task, target, opacity)
        rgb = self._decoded(image)  # once, for the three methods
        flags = self.flags[predictor.task.key]
        return [(self._explain(predictor, rgb, target, opacity, "off", m).overlay, m + flags.get(m, ""))
                for m in METHODS]

    def analyse(self, image: dict | None, target: str | None = TOP_CLASS, opacity: float = OVERLAY_OPACITY,
                task: str | None = None, tile: str = TILE_AUTO, method: str = GRAD_CAM):
        """Verdict, probabilities and heat-map overlay (from the same forward pass, or from the
        Grad-CAM tiles of a long image when tiling is on: the answer is then the worst tile's)."""
        predictor, result = self._explained(image, target, opacity, task, tile, method)
        verdict = predictor.triage(result.probabilities)
        detail = verdict.detail + (f" {where(result.region, len(result.boxes))}"
                                   if isinstance(result, TiledAnswer) else "")
        return (verdict_html(verdict.level, verdict.headline, detail),
                (predictor.decide(result.probabilities), result.probabilities),
                result.overlay, (result.image, result.heatmap))

    def batch(self, files: list[dict] | None, task: str | None = None, tile: str = TILE_AUTO,
              progress=gr.Progress()):
        """Many images (or .zip archives of images) at once: per file the decided class, its
        probability and the verdict (a table), and a CSV with every class's probability."""
        predictor, _, _ = self.checked(task, tile=tile)
        try:
            uploads = uploaded_files(files)
        except UploadRefused as error:
            raise gr.Error(f"Cannot analyse this batch: {error}.") from None
        with held(uploads) as items:
            try:
                check_limits(items)
            except BatchError as error:
                raise gr.Error(str(error)) from None
            progress((0, len(items)), desc="Analysing", unit="files")
            rows = list(analyse(predictor, items, tile=tiles_on(predictor, tile), max_pixels=MAX_PIXELS,
                                progress=lambda done, total: progress((done, total), unit="files")))
        path = batch_csv_path()
        write_csv(path, predictor, rows)
        table = [[r["file"], display_name(predictor.task.info(r["decided"])), f"{r[r['decided']]:.1%}", r["verdict"], ""]
                 if not r["error"] else [r["file"], "", "", "", r["error"]] for r in rows]
        return table, str(path)

    @staticmethod
    def reblend(state, opacity: float):
        """The last heat-map over the last image at a new opacity, without the model."""
        if state is None:
            return gr.skip()
        rgb, heatmap = state
        return overlay(rgb, heatmap, opacity)
