"""The events behind the page's buttons and the API's endpoints, over the loaded models.

Handlers receive the request's values unprocessed (the events use preprocess=False): each
first checks every value against its choices (`Handlers.checked`, and `checked_patient` for the
patient's record) and takes only uploaded files (uploads.py); then one call of
`Predictor.analyse` gives the answer, and the handler presents it (overlay, HTML). Whatever is
wrong gets its message as a `gr.Error`, which echoes at most `ECHO` characters of what the client
sent, and nothing of a patient's record.
"""
from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone

import gradio as gr
import numpy as np
from PIL import Image

from ..analysis import Analysis
from ..batch import MAX_PIXELS, BatchError, batch_rows, check_limits, write_csv
from ..explain import GRAD_CAM, METHODS
from ..images import InputError
from ..ops import Operations, drift, plots
from ..ops.drift import parse_since
from ..patient import Patient
from ..predictor import Predictor
from .uploads import UploadRefused, batch_csv_path, held, upload_source, uploaded_files
from .views import (
    NOT_ANALYSED,
    OVERLAY_OPACITY,
    TOP_CLASS,
    analyse_outputs,
    display_name,
    label_value,
    overlay,
    page_outputs,
    sanity_flags,
    similar_cases,
)

BATCH_HEADERS = ["file", "decided class", "probability", "verdict", "error"]
MONITOR_SPANS = ("1h", "24h", "7d", "30d")  # the Monitor tab's windows (drift.parse_since)
MONITOR_PLOTS = {"class_mix": "Decided classes against the reference", "scores": "Input-check scores",
                 "rates": "Refused and unfamiliar over time", "accuracy": "Estimated accuracy over time",
                 "latency": "Latency"}  # drift.figures' names → the tab's plot titles
TILING = {"auto": None, "on": True, "off": False}  # views.TILE_CHOICES → Predictor's `tile` (None: the task's default)
ECHO = 40  # characters of a client's value an error message repeats
PAGES_REMEMBERED = 10_000  # the pages a PageMemory remembers, the oldest forgotten first


def echo(value: object) -> str:
    """A client's value as an error message repeats it: its repr, cut to ECHO characters."""
    text = repr(value)
    return text if len(text) <= ECHO else text[:ECHO] + "…"


class PageMemory:
    """One value for each page (its session, `gr.Request.session_hash`): at most PAGES_REMEMBERED
    pages, the oldest forgotten first, under a lock (events of many pages run in threads)."""

    def __init__(self):
        self.values: OrderedDict[str, object] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def page(request: gr.Request | None) -> str | None:
        return getattr(request, "session_hash", None)

    def swap(self, request: gr.Request | None, value: object) -> object:
        """Remember `value` for the request's page (None: forget it); what was remembered before."""
        page = self.page(request)
        if page is None:
            return None
        with self.lock:
            before = self.values.pop(page, None)
            if value is not None:
                self.values[page] = value
                while len(self.values) > PAGES_REMEMBERED:
                    self.values.popitem(last=False)
            return before

    def get(self, request: gr.Request | None) -> object:
        with self.lock:
            return self.values.get(self.page(request))


def checked_opacity(opacity: object) -> float:
    """A number from 0 to 1 (not a bool, not NaN), or a gr.Error."""
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
        raise gr.Error(f"The opacity must be a number from 0 to 1, not {echo(opacity)}.")
    return float(opacity)


def checked_patient(predictor: Predictor, age: object, sex: object, site: object) -> Patient | None:
    """The patient's record as the page or a client sends it: None when no field is given or the
    model answers from the image alone (steel: ignored); a gr.Error saying what is wrong, without
    the value."""
    try:
        return predictor.patient(age, sex, site)
    except InputError as error:
        raise gr.Error(f"Cannot use the patient's record: {error}.") from None


def image_source(payload: object):
    """The uploaded image as gradio hands it over unprocessed: the uploaded file, or the bytes
    of a data URL (uploads.py); None when there is none; a gr.Error for anything else."""
    try:
        return upload_source(payload)
    except UploadRefused as error:
        raise gr.Error(f"Cannot analyse this image: {error}.") from None


class Handlers:
    """The events of the page and the API, over the loaded models (task key → Predictor, the
    default task first). Besides the models, the only state shared between requests is two
    facts about each page (`PageMemory`): the upload it reported last and whether it shows a verdict."""

    def __init__(self, predictors: dict[str, Predictor], ops: Operations | None = None):
        self.predictors = predictors
        self.first = next(iter(predictors))
        self.flags = {task: sanity_flags(p) for task, p in predictors.items()}  # read once, not per request
        self.ops = ops or Operations(predictors)  # metrics, the decision log, the Monitor tab's window
        self.references = {task: drift.Reference.load(p.folder) for task, p in predictors.items() if p.folder}
        self.reported = PageMemory()  # each page's upload that page_classify reported last
        # the pages shown a verdict (True), as the server answered them: a page's own `verdict` value
        # is the one it had when the event was triggered, before an analysis still queued answered
        self.verdicts = PageMemory()

    def observed(self, endpoint: str, handler, images: bool = True):
        """`handler` reporting each request to operations (its time and status, and its endpoint
        for the images `_analysis` reports, unless `images` is False); a gr.Error is a bad input."""
        @functools.wraps(handler)
        def run(*args, **kwargs):
            with self.ops.request(endpoint, bad_input=(gr.Error,), images=images):
                return handler(*args, **kwargs)
        return run

    def checked(self, task: object, target: object = None, opacity: object = OVERLAY_OPACITY,
                tile: object = "auto", method: object = GRAD_CAM) -> tuple[Predictor, str | None, float, bool | None]:
        """Every value of a request against its choices, before anything is read or decoded:
        the task's Predictor, the class to explain (None: the decided one), the opacity and
        the tiling (None: the task's default)."""
        task = task or self.first
        if not isinstance(task, str) or task not in self.predictors:
            raise gr.Error(f"Unknown task {echo(task)}; this app serves: {', '.join(self.predictors)}.")
        predictor = self.predictors[task]
        target = None if target in (None, "", TOP_CLASS) else target
        if target is not None and target not in predictor.codes:
            raise gr.Error(f"Unknown class {echo(target)}; choose {TOP_CLASS!r} or one of "
                           f"{', '.join(predictor.codes)}.")
        if not (tile is None or isinstance(tile, bool) or (isinstance(tile, str) and tile in ("", *TILING))):
            raise gr.Error(f"Unknown tile setting {echo(tile)}; choose one of {', '.join(TILING)}.")
        if method not in (None, "", *METHODS):
            raise gr.Error(f"Unknown explanation method {echo(method)}; choose one of {', '.join(METHODS)}.")
        tiling = tile if isinstance(tile, bool) else TILING.get(tile or "auto")
        return predictor, target, checked_opacity(opacity), tiling

    def _analysis(self, predictor: Predictor, image, target: str | None, tile: bool | None,
                  method: str | None, report: bool = True, patient: Patient | None = None) -> Analysis:
        """`Predictor.analyse` of an upload (or an already checked array), with the checked
        `patient`'s record, errors as gr.Error; reported to operations once per image (`report`;
        never the record)."""
        source = image_source(image) if not isinstance(image, np.ndarray) else image
        if source is None:
            raise gr.Error("Upload an image first.")
        start, task = time.perf_counter(), predictor.task.key
        try:
            analysis = predictor.analyse(source, target=target, method=method, tile=tile, patient=patient)
        except InputError as error:
            message = f"Cannot analyse this image: {error}"
            if report:
                self.ops.image(task, (time.perf_counter() - start) * 1000, error=message, source=source)
            raise gr.Error(message) from None
        except Exception:
            if report:
                self.ops.image(task, (time.perf_counter() - start) * 1000, failed=True, error="failed",
                               source=source)
            raise
        if report:
            self.ops.image(task, (time.perf_counter() - start) * 1000, analysis, source=source)
        return analysis

    def classify(self, image: dict | None, task: str | None = None, tile: str = "auto", age: float | None = None,
                 sex: str | None = None, site: str | None = None) -> tuple[str | None, dict[str, float] | str] | None:
        """The decided class and the calibrated probability of every class, for one image (a
        long one by tiles when tiling is on: the worst tile's), with the patient's record when
        one is given; the refusal alone for an image the input check refuses."""
        predictor, _, _, tile = self.checked(task, tile=tile)
        patient = checked_patient(predictor, age, sex, site)
        if not image:
            return None
        return label_value(self._analysis(predictor, image, None, tile, None, patient=patient))

    def page_classify(self, image: dict | None, task: str | None = None, tile: str = "auto",
                      age: float | None = None, sex: str | None = None, site: str | None = None,
                      request: gr.Request | None = None):
        """The page's label when its image changes (`classify`), its image reported once: Gradio
        fires the change event twice when an image replaces another, so the upload a page (its
        session) reported last is answered again but not counted or logged again."""
        upload = image.get("path") if isinstance(image, dict) else None
        before = self.reported.swap(request, upload)  # a cleared image forgets it
        again = upload is not None and before == upload
        with self.ops.reporting(not again):
            return self.classify(image, task, tile, age, sex, site)

    def explain(self, image: dict | None, target: str | None = TOP_CLASS, opacity: float = OVERLAY_OPACITY,
                task: str | None = None, tile: str = "auto", method: str = GRAD_CAM, age: float | None = None,
                sex: str | None = None, site: str | None = None):
        """Heat-map overlay for one image by `method` ("Grad-CAM", "Integrated Gradients",
        "Occlusion"): the decided class (with the patient's record when one is given, as /analyse
        decides it), or the class given; long images by Grad-CAM tiles when `tile` is "on", or
        "auto" for a task that tiles (steel)."""
        analysis, _, opacity = self._checked_analysis(image, target, opacity, task, tile, method, age, sex, site)
        return overlay(analysis.image, analysis.heatmap, opacity)

    def compare(self, image: dict | None, target: str | None = TOP_CLASS, opacity: float = OVERLAY_OPACITY,
                task: str | None = None, age: float | None = None, sex: str | None = None,
                site: str | None = None) -> list[tuple[Image.Image, str]]:
        """Every method's overlay for one image, side by side, each captioned with its name and
        what its sanity check found (the model card's figures); the decided class with the
        patient's record when one is given, as /analyse decides it."""
        predictor, target, opacity, _ = self.checked(task, target, opacity)
        patient = checked_patient(predictor, age, sex, site)
        first = self._analysis(predictor, image, target, False, METHODS[0], patient=patient)  # decodes once
        analyses = [first] + [self._analysis(predictor, first.image, target, False, m, report=False, patient=patient)
                              for m in METHODS[1:]]
        flags = self.flags[predictor.task.key]
        return [(overlay(a.image, a.heatmap, opacity), a.method + flags.get(a.method, "")) for a in analyses]

    def analyse(self, image: dict | None, target: str | None = TOP_CLASS, opacity: float = OVERLAY_OPACITY,
                task: str | None = None, tile: str = "auto", method: str = GRAD_CAM, age: float | None = None,
                sex: str | None = None, site: str | None = None):
        """Verdict, probabilities and heat-map overlay, from one `Predictor.analyse` (a long
        image by its tiles when tiling is on: the answer is then the worst tile's), with the
        patient's record when one is given."""
        analysis, predictor, opacity = self._checked_analysis(image, target, opacity, task, tile, method,
                                                              age, sex, site)
        return analyse_outputs(analysis, predictor, opacity)

    def page_analyse(self, image: dict | None, target: str | None = TOP_CLASS, opacity: float = OVERLAY_OPACITY,
                     task: str | None = None, tile: str = "auto", method: str = GRAD_CAM, age: float | None = None,
                     sex: str | None = None, site: str | None = None, request: gr.Request | None = None):
        """The page's Analyse: `analyse`'s answer, and the similar cases from the same analysis;
        the page is remembered as showing a verdict."""
        analysis, predictor, opacity = self._checked_analysis(image, target, opacity, task, tile, method,
                                                              age, sex, site)
        answer = page_outputs(analysis, predictor, opacity)
        self.verdicts.swap(request, True)
        return answer

    def page_record(self, verdict: str | None, image: dict | None, target: str | None = TOP_CLASS,
                    opacity: float = OVERLAY_OPACITY, task: str | None = None, tile: str = "auto",
                    method: str = GRAD_CAM, age: float | None = None, sex: str | None = None,
                    site: str | None = None, request: gr.Request | None = None):
        """The page when the patient's record changes: the label answered again with it and, when
        the page shows a verdict (or an analysis queued before this event has answered it since),
        the whole analysis again (`page_analyse`), so that the verdict, the label and the map never
        answer for different records; the methods side by side, drawn for the class decided under
        the earlier record, are taken away."""
        if (verdict or self.verdicts.get(request)) and image is not None:
            return *self.page_analyse(image, target, opacity, task, tile, method, age, sex, site, request), None
        return gr.skip(), self.classify(image, task, tile, age, sex, site), *(gr.skip(),) * 4, None

    def page_image(self, verdict: str | None, image: dict | None, target: str | None = TOP_CLASS,
                   opacity: float = OVERLAY_OPACITY, task: str | None = None, tile: str = "auto",
                   method: str = GRAD_CAM, age: float | None = None, sex: str | None = None,
                   site: str | None = None, request: gr.Request | None = None):
        """The page when the person sets its image (an upload, paste, capture or example): once it
        shows a verdict (or an analysis queued before this event has answered it since), the new
        image's whole analysis (`page_analyse`), so that the verdict, the map and the similar cases
        never answer for another image than the label (which follows every image: `classify`); a
        removed image, or one that cannot be analysed (the label says why), takes them away. Before
        any verdict, nothing of them: an Analyse pressed at once is not undone. The methods side by
        side, drawn for the earlier image, are taken away in every case."""
        if not (verdict or self.verdicts.get(request)):
            return *(gr.skip(),) * 6, None
        if image is not None:
            try:
                return *self.page_analyse(image, target, opacity, task, tile, method, age, sex, site, request), None
            except gr.Error:
                pass
        self.verdicts.swap(request, None)
        return "", gr.skip(), None, None, "", None, None

    def page_task(self, request: gr.Request | None = None) -> None:
        """The page switched to another task, its verdict cleared: no longer remembered as shown."""
        self.verdicts.swap(request, None)

    def _checked_analysis(self, image, target, opacity, task, tile, method, age, sex,
                          site) -> tuple[Analysis, Predictor, float]:
        """The checked values' analysis, its Predictor and the checked opacity (/analyse,
        /explain, the page)."""
        predictor, target, opacity, tile = self.checked(task, target, opacity, tile, method)
        patient = checked_patient(predictor, age, sex, site)
        return self._analysis(predictor, image, target, tile, method or GRAD_CAM, patient=patient), predictor, opacity

    def similar(self, image: dict | None, task: str | None = None) -> list[tuple[np.ndarray, str]]:
        """The training images most similar to one image (the model's feature space), each
        captioned with its diagnosis, how it was confirmed and its similarity; none for an
        image the model does not know."""
        predictor, _, _, tile = self.checked(task)
        analysis = self._analysis(predictor, image, None, tile, None)
        return similar_cases(analysis, predictor)

    def batch(self, files: list[dict] | None, task: str | None = None, tile: str = "auto",
              progress=gr.Progress()):
        """Many images (or .zip archives of images) at once: per file the decided class, its
        probability and the verdict (a table), and a CSV with every class's probability."""
        predictor, _, _, tile = self.checked(task, tile=tile)
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
            answered = list(batch_rows(predictor, items, tile=tile, max_pixels=MAX_PIXELS,
                                       progress=lambda done, total: progress((done, total), unit="files"),
                                       observe=self.ops.reporter(predictor)))
        path = batch_csv_path()
        write_csv(path, predictor, answered)
        table = [[r["file"], "", "", "", r["error"]] if r["error"] else
                 [r["file"], NOT_ANALYSED, "", r["verdict"], ""] if not r["known"] else
                 [r["file"], display_name(predictor.task.info(r["decided"]))
                  + ("" if r["familiar"] else " (unfamiliar image)"), f"{r[r['decided']]:.1%}", r["verdict"], ""]
                 for r in answered]
        return table, str(path)

    def monitor(self, task: str | None, since: str = "7d"):
        """The Monitor tab: a line on the task's recent decisions and their drift (ops/drift.py),
        and its plots (MONITOR_PLOTS)."""
        predictor, *_ = self.checked(task)
        if since not in MONITOR_SPANS:
            raise gr.Error(f"Unknown span {echo(since)}; choose one of {', '.join(MONITOR_SPANS)}.")
        try:
            decisions = self.ops.recent(predictor.task.key, datetime.now(timezone.utc) - parse_since(since))
        except Exception:
            raise gr.Error("The decision log cannot be read now; the answers go on.") from None
        report = drift.report(decisions, self.references.get(predictor.task.key))
        figures = plots.figures(report)
        return (report.summary(), *[figures.get(name) for name in MONITOR_PLOTS])

    @staticmethod
    def reblend(state, opacity: float):
        """The last heat-map over the last image at a new opacity, without the model."""
        opacity = checked_opacity(opacity)
        if state is None:
            return gr.skip()
        rgb, heatmap = state
        return overlay(rgb, heatmap, opacity)
