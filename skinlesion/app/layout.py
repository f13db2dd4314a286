"""The page: its components, each event declared beside the components it joins (keyword
`inputs=` / `outputs=` / `api_name=`), as in Gradio's own Blocks demos.

One page serves every task: the task selector switches everything a `TaskView` holds (texts,
model tab, examples) and the model that answers; the components that follow the task are
listed once (`follows_task`). Each page keeps its last image and heat-map in a session State,
so the opacity slider re-blends without the model. The API's endpoints are the page's own
handlers: /classify, /explain, /analyse, /compare, /batch (names and argument order are a
contract: new ones go at the end). The patient's record (age, sex, body site), optional, is the
last three values of /classify, /analyse, /explain and /compare and of the page's own events that
answer.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import gradio as gr

from ..batch import MAX_BYTES, MAX_FILES
from ..explain import GRAD_CAM, METHODS
from ..patient import MAX_AGE
from ..tasks import TASKS
from .gate import QUEUE_SIZE
from .handlers import BATCH_HEADERS, MONITOR_PLOTS, MONITOR_SPANS, Handlers
from .server import Page, UploadFiles, UploadImage
from .views import (
    NOT_ANALYSED,
    NOT_GIVEN,
    OVERLAY_OPACITY,
    SEX_CHOICES,
    TILE_CHOICES,
    TOP_CLASS,
    UNFAMILIAR,
    TaskView,
    display_name,
)

TITLE = "skinlesion — explainable image classifier"
# Model calls at a time in each queue: one on a 2-core CPU, where parallel calls only contend
# (docs/operations.md measures it); SKINLESION_CONCURRENCY sets it for a larger machine.
CONCURRENCY = int(os.environ.get("SKINLESION_CONCURRENCY", 1))
# Two queues, one model call at a time in each: answers (/classify, /similar: one forward pass)
# never wait behind maps, comparisons and batches (seconds each).
ANSWER = {"concurrency_id": "answer", "concurrency_limit": CONCURRENCY, "preprocess": False}
EXPLAIN = {**ANSWER, "concurrency_id": "explain"}
PAGE_ONLY = {"api_visibility": "private"}
# The events whose answer must follow the value set last (an image, a record, a class, a method, an
# opacity): Gradio's default for them ("once") drops a trigger while the event's previous run is
# still pending, which would leave the page answering for the value before; "always_last" runs the
# last one once the pending run is done.
LATEST = {"trigger_mode": "always_last"}
# The page's events that analyse its image again (for the heat-map, with the patient's record when
# it changes, or whole when a new image or example replaces one with a verdict): page_classify reported the
# image when it was set, so these count as requests but add no image to the metrics or the log.
PAGE_REPEATS = ("page_analyse", "page_explain", "page_record", "page_image", "page_example")
STATE_SECONDS = 300  # the page keeps its last (image, heat-map) this long after the analysis, for the opacity slider


class DecidedLabel(gr.Label):
    """gr.Label whose heading is the decided class of the model's decision rule, which need not
    be the most probable one (the rule favours rare classes in close calls); the bars are the
    calibrated probabilities. Handlers return (decided code, probabilities), (decided code,
    probabilities, prediction set) for an image unlike the training images, or (None, the
    refusal) for an image the modality check refuses (views.label_value). Through the API the
    value is {"label": decided code, "confidences": [{"label": code, "confidence": p}, …]},
    {"label": "unfamiliar image, one of mel or nv", "confidences": …}, or
    {"label": "not analysed: <the refusal>"} without confidences."""
    is_template = True  # the page draws it with Label's own front-end component

    def get_block_name(self) -> str:  # also for subclasses (NamedLabel): Label's front-end
        return "label"

    get_block_class = get_block_name

    def postprocess(self, value):
        if not isinstance(value, tuple):
            return super().postprocess(value)
        decided, probabilities, *among = value
        if decided is None:
            return super().postprocess(f"{NOT_ANALYSED}: {probabilities}")
        data = super().postprocess(probabilities)
        data.label = f"{UNFAMILIAR} {' or '.join(among[0])}" if among else decided
        return data


class NamedLabel(DecidedLabel):
    """The page's label: the same answer with each class's full name. The API's own /classify
    and /analyse outputs are plain DecidedLabels, so clients keep getting the codes."""
    NAMES = {c.code: display_name(c) for task in TASKS.values() for c in task.classes}

    def postprocess(self, value):
        if isinstance(value, tuple) and value[0] is not None:
            decided, probabilities, *among = value
            value = (self.NAMES[decided], {self.NAMES[c]: p for c, p in probabilities.items()},
                     *([tuple(self.NAMES[c] for c in among[0])] if among else []))
        return super().postprocess(value)


def build_demo(handlers: Handlers, views: dict[str, TaskView]) -> gr.Blocks:
    """The page of `handlers`' models, showing `views` (task key → what follows the task)."""
    first = views[handlers.first]
    with Page(title=TITLE) as demo:  # server.py: its own cleanup, short errors
        c = SimpleNamespace()
        gr.Markdown(f"# {TITLE}")
        c.task = gr.Radio([(TASKS[t].title, t) for t in views], value=handlers.first, label="Task", elem_id="task",
                          visible=len(views) > 1)
        c.description = gr.Markdown(first.intro)
        c.notice = gr.Markdown(first.notice, elem_id="model-notice", visible=bool(first.notice))
        c.tile = gr.Radio(TILE_CHOICES, value="auto", label="Tile long images", elem_id="tile",
                          info="Overlapping square tiles as tall as the image; the answer is the worst tile's")
        with gr.Tab("Classify"):
            classify_tab(c, handlers, views, max(len(p.codes) for p in handlers.predictors.values()))
        with gr.Tab("Batch"):
            batch_tab(c, handlers)
        with gr.Tab("Model"):
            c.model_card = gr.Markdown(first.model_card, elem_id="model-card")
            c.matrix = gr.Image(first.confusion_matrix, label="Confusion matrix (test split)", interactive=False)
            c.reliability = gr.Image(first.reliability, label="Reliability diagram (test split)", interactive=False,
                                     elem_id="reliability")
            c.subgroups = gr.Image(first.subgroups, label="Results by subgroup (test split)", interactive=False,
                                   elem_id="subgroups", visible=bool(first.subgroups))
        with gr.Tab("Monitor", elem_id="monitor-tab") as c.monitor_tab:
            monitor_tab(c, handlers)
        task_switch(c, views, handlers)
        similar_api(c, handlers)
    demo.optional = frozenset(f._id for f in c.record)  # a request may leave the record out (server.Page)
    # api_open=False: the REST routes that skip the queue (/gradio_api/run/…, /api/…) are closed
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY, api_open=False)
    for event in demo.fns.values():  # every model event reports to operations under its endpoint's name
        if event.concurrency_id in (ANSWER["concurrency_id"], EXPLAIN["concurrency_id"]):
            event.fn = handlers.observed(event.api_name, event.fn, images=event.api_name not in PAGE_REPEATS)
    return demo


def classify_tab(c: SimpleNamespace, handlers: Handlers, views: dict[str, TaskView], n_classes: int) -> None:
    """One image: the upload, the verdict and probabilities, the heat-map and its controls."""
    v = views[handlers.first]
    with gr.Row():
        with gr.Column():
            c.image = UploadImage(type="filepath", label="Image", elem_id="input-image",
                                  sources=["upload", "webcam", "clipboard"], height=320)
            record_fields(c, v)
            c.button = gr.Button("Analyse", variant="primary", elem_id="analyse")
            shown = v if v.examples else next((w for w in views.values() if w.examples), None)
            c.gallery = gr.Examples(shown.samples, inputs=c.image, cache_examples=False,
                                    example_labels=shown.example_labels,
                                    label="Examples (test-split images, with their true class)") if shown else None
            if c.gallery:
                c.gallery.dataset.visible = bool(v.examples)
        with gr.Column():
            c.verdict = gr.HTML(elem_id="verdict-box")
            c.label = NamedLabel(num_top_classes=n_classes, label="Decided class · probability of each class",
                                 elem_id="probabilities")
    explanation_row(c, v)
    with gr.Accordion("About the classes", open=False):
        c.classes = gr.Markdown(v.classes, elem_id="about-classes")
    with gr.Accordion("Data & ethics", open=False):
        c.ethics = gr.Markdown(v.ethics, elem_id="ethics")
    c.state = gr.State(None, time_to_live=STATE_SECONDS)
    with gr.Column(visible=False):  # the API's own outputs: the same handlers, answers in class codes
        api = SimpleNamespace(classify=gr.Button(), analyse=gr.Button(), label=DecidedLabel(), verdict=gr.HTML(),
                              cam=gr.Image(type="pil", format="png"), state=gr.State(None, time_to_live=60))
    analyse_inputs = [c.image, c.target, c.opacity, c.task, c.tile, c.method, *c.record]
    classify_inputs = [c.image, c.task, c.tile, *c.record]
    c.image.change(handlers.page_classify, inputs=classify_inputs, outputs=c.label, api_name="page_classify",
                   **ANSWER, **PAGE_ONLY)
    api.classify.click(handlers.classify, inputs=classify_inputs, outputs=api.label, api_name="classify", **ANSWER)
    page_answer = [c.verdict, c.label, c.cam, c.state, c.similar_summary, c.similar]
    c.button.click(handlers.page_analyse, inputs=analyse_inputs, outputs=page_answer,
                   api_name="page_analyse", **EXPLAIN, **PAGE_ONLY)
    api.analyse.click(handlers.analyse, inputs=analyse_inputs, outputs=[api.verdict, api.label, api.cam, api.state],
                      api_name="analyse", **EXPLAIN)
    # the answer follows the record too: a sex or site picked, an age entered (on Enter or leaving the
    # field, not at each keystroke); the label, and the verdict and map once the page shows them
    # (the methods side by side, drawn for an earlier record or image, are taken away)
    gr.on([c.age.submit, c.age.blur, c.sex.input, c.site.input], handlers.page_record,
          inputs=[c.verdict, *analyse_inputs], outputs=[*page_answer, c.compare], api_name="page_record",
          **EXPLAIN, **PAGE_ONLY, **LATEST)
    # ... and the image: one the user sets (an upload, paste or capture; or clears) once a verdict
    # is shown is analysed whole (its label as above). `input`, not `change`: Gradio fires change
    # twice when an image replaces another, and a second analysis would be wasted work
    c.image.input(handlers.page_image, inputs=[c.verdict, *analyse_inputs], outputs=[*page_answer, c.compare],
                  api_name="page_image", **EXPLAIN, **PAGE_ONLY, **LATEST)
    if c.gallery:  # an example clicked sets the image without an input event: the same, once it is set
        c.gallery.load_input_event.then(handlers.page_image, inputs=[c.verdict, *analyse_inputs],
                                        outputs=[*page_answer, c.compare], api_name="page_example",
                                        **EXPLAIN, **PAGE_ONLY, **LATEST)
    c.target.input(handlers.explain, inputs=analyse_inputs, outputs=c.cam, api_name="explain", **EXPLAIN, **LATEST)
    c.method.input(handlers.explain, inputs=analyse_inputs, outputs=c.cam, api_name="page_explain",
                   **EXPLAIN, **PAGE_ONLY, **LATEST)
    c.compare_button.click(handlers.compare, inputs=[*analyse_inputs[:4], *c.record], outputs=c.compare,
                           api_name="compare", **EXPLAIN)
    c.opacity.release(handlers.reblend, inputs=[c.state, c.opacity], outputs=c.cam, api_visibility="private",
                      **LATEST)


def record_fields(c: SimpleNamespace, v: TaskView) -> None:
    """The patient's record, optional and closed at first; shown for a model that has a record
    model (`TaskView.record`). `c.record`: its fields, in the handlers' order (age, sex, site)."""
    with gr.Accordion("The patient (optional)", open=False, visible=bool(v.record), elem_id="patient") as c.patient:
        c.record_note = gr.Markdown(v.record)
        with gr.Row():
            c.age = gr.Number(None, label="Age (years)", minimum=0, maximum=MAX_AGE, placeholder=NOT_GIVEN,
                              elem_id="patient-age")
            c.sex = gr.Dropdown(SEX_CHOICES, value=NOT_GIVEN, label="Sex", elem_id="patient-sex")
            c.site = gr.Dropdown(v.sites, value=NOT_GIVEN, label="Body site", elem_id="patient-site")
    c.record = [c.age, c.sex, c.site]


def explanation_row(c: SimpleNamespace, v: TaskView) -> None:
    """The heat-map, its controls (class, method, opacity) and the methods side by side."""
    with gr.Row():
        with gr.Column():
            c.cam = gr.Image(type="pil", format="png", label="Where the model looked", elem_id="gradcam",
                             interactive=False, height=320)
        with gr.Column():
            c.target = gr.Dropdown(v.targets, value=TOP_CLASS, label="Explain class", elem_id="target")
            c.method = gr.Dropdown(list(METHODS), value=GRAD_CAM, label="Explanation method", elem_id="method")
            c.opacity = gr.Slider(0, 1, value=OVERLAY_OPACITY, step=0.05, label="Overlay opacity")
            gr.Markdown("Red = strong evidence for the class explained. Grad-CAM is coarse (one cell "
                        "per 32 pixels of the model's input); Integrated Gradients and Occlusion are finer "
                        "and slower. The Model tab says how far each map can be trusted.")
            c.compare_button = gr.Button("Compare methods", elem_id="compare")
    c.compare = gr.Gallery(label="The methods side by side (same image, same class)", columns=len(METHODS),
                           height=300, elem_id="compare-gallery", interactive=False)
    c.similar_summary = gr.Markdown(elem_id="similar-summary")
    c.similar = gr.Gallery(label="Similar confirmed cases from the training data (diagnosis · how it was "
                                 "confirmed · similarity)", columns=6, height=220, elem_id="similar",
                           interactive=False)


def batch_tab(c: SimpleNamespace, handlers: Handlers) -> None:
    """Many images at once: the uploads, the button, the table and the CSV."""
    gr.Markdown(f"Many images at once: image files or `.zip` archives of them, up to {MAX_FILES} files "
                f"and {MAX_BYTES // 1024 ** 2} MB per batch. A file that cannot be read gets its reason "
                "in the table and the rest go on; the CSV has every class's probability.")
    c.batch_files = UploadFiles(file_count="multiple", file_types=["image", ".zip"], label="Images or .zip",
                                elem_id="batch-files")
    c.batch_button = gr.Button("Analyse all", variant="primary", elem_id="batch-run")
    c.batch_table = gr.Dataframe(headers=BATCH_HEADERS, label="Results", interactive=False, elem_id="batch-table")
    c.batch_csv = gr.File(label="Results as CSV", interactive=False, elem_id="batch-csv")
    c.batch_button.click(handlers.batch, inputs=[c.batch_files, c.task, c.tile], outputs=[c.batch_table, c.batch_csv],
                         api_name="batch", **EXPLAIN)


def monitor_tab(c: SimpleNamespace, handlers: Handlers) -> None:
    """Drift a person can see: the recent decisions of the task against the model's reference
    (ops/drift.py), as plots, drawn when the tab is opened or refreshed."""
    c.monitor_summary = gr.Markdown(elem_id="monitor-summary")
    c.monitor_since = gr.Radio(list(MONITOR_SPANS), value="7d", label="Decisions of the last", elem_id="monitor-since")
    c.monitor_button = gr.Button("Refresh", elem_id="monitor-refresh")
    c.monitor_plots, names = [], list(MONITOR_PLOTS)
    for pair in (names[i:i + 2] for i in range(0, len(names), 2)):  # two plots a row
        with gr.Row():
            c.monitor_plots += [gr.Plot(label=MONITOR_PLOTS[name], elem_id=f"monitor-{name}", format="png")
                                for name in pair]
    for event in (c.monitor_button.click, c.monitor_tab.select, c.monitor_since.change):
        event(handlers.monitor, inputs=[c.task, c.monitor_since], outputs=[c.monitor_summary, *c.monitor_plots],
              api_visibility="private", concurrency_id="monitor", concurrency_limit=1)


def similar_api(c: SimpleNamespace, handlers: Handlers) -> None:
    """/similar, the last endpoint: the nearest training cases of an image, as a captioned gallery."""
    with gr.Column(visible=False):
        button, gallery = gr.Button(), gr.Gallery(format="jpeg")
    button.click(handlers.similar, inputs=[c.image, c.task], outputs=gallery, api_name="similar", **ANSWER)


def task_switch(c: SimpleNamespace, views: dict[str, TaskView], handlers: Handlers) -> None:
    """Everything that follows the task, listed once; the image, the patient's record and earlier
    results are cleared (`Handlers.page_task`: the page no longer shows a verdict). The updates are
    components made with render=False: made while the page is built (to list the outputs), a
    component would otherwise also be drawn on the page."""
    def follows_task(v: TaskView) -> dict:
        updates = {c.description: v.intro, c.notice: gr.Markdown(v.notice, visible=bool(v.notice), render=False),
                   c.classes: v.classes, c.ethics: v.ethics, c.model_card: v.model_card,
                   c.matrix: gr.Image(v.confusion_matrix, render=False),
                   c.reliability: gr.Image(v.reliability, render=False),
                   c.subgroups: gr.Image(v.subgroups, visible=bool(v.subgroups), render=False),
                   c.target: gr.Dropdown(choices=v.targets, value=TOP_CLASS, render=False),
                   c.patient: gr.Accordion(visible=bool(v.record), render=False), c.record_note: v.record,
                   c.age: None, c.sex: NOT_GIVEN, c.site: gr.Dropdown(choices=v.sites, value=NOT_GIVEN, render=False),
                   c.image: None, c.verdict: "", c.label: None, c.cam: None, c.state: None, c.compare: None,
                   c.batch_table: None, c.batch_csv: None, c.similar: None, c.similar_summary: ""}
        if c.gallery:
            updates[c.gallery.dataset] = gr.Dataset(samples=v.samples, sample_labels=v.example_labels,
                                                    visible=bool(v.examples), render=False)
        return updates

    def switch(task: str, request: gr.Request):
        handlers.page_task(request)
        return follows_task(views[task])

    c.task.change(switch, inputs=c.task, outputs=list(follows_task(next(iter(views.values())))),
                  api_visibility="private")
