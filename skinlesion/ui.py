"""The Gradio Blocks page: its layout, the events wired to page.py's handlers (each with an
`api_name`: /classify, /explain, /analyse), and how the app is assembled and launched.

One page serves every task: a selector switches everything a `TaskView` holds (texts, model
tab, examples) and the model that answers. Each page keeps its last image and heat-map in a
session State, so the opacity slider re-blends without the model.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from .explain import GRAD_CAM, METHODS, OVERLAY_OPACITY
from .inference import Predictor
from .batch import MAX_BYTES, MAX_FILES
from .page import BATCH_HEADERS, TILE_AUTO, TILE_CHOICES, TOP_CLASS, Handlers, TaskView, display_name, example_images
from .server import KEEP_SECONDS, SWEEP_SECONDS, App, UploadFiles, UploadImage, private_temp_dir
from .tasks import DEFAULT_TASK, TASKS

TITLE = "skinlesion — explainable image classifier"
QUEUE_SIZE = 64    # requests waiting beyond this are refused at once instead of timing out
CONCURRENCY = 1    # one model call at a time: on a 2-core CPU, parallel calls only contend
DATA_ENV = "SKINLESION_DATA"  # a folder holding each task's data folder, for example images
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class DecidedLabel(gr.Label):
    """gr.Label whose heading is the decided class of the model's decision rule, which need not
    be the most probable one (the rule favours rare classes in close calls); the bars are the
    calibrated probabilities. Handlers return (decided code, probabilities). Through the API
    the value is {"label": decided code, "confidences": [{"label": code, "confidence": p}, …]}."""
    is_template = True  # the page draws it with Label's own front-end component

    def get_block_name(self) -> str:  # also for subclasses (NamedLabel): Label's front-end
        return "label"

    get_block_class = get_block_name

    def postprocess(self, value):
        if not isinstance(value, tuple):
            return super().postprocess(value)
        decided, probabilities = value
        data = super().postprocess(probabilities)
        data.label = decided
        return data


class NamedLabel(DecidedLabel):
    """The page's label: the same answer with each class's full name. The API's own /classify
    and /analyse outputs are plain DecidedLabels, so clients keep getting the codes."""
    NAMES = {c.code: display_name(c) for task in TASKS.values() for c in task.classes}

    def postprocess(self, value):
        if isinstance(value, tuple):
            decided, probabilities = value
            value = (self.NAMES[decided], {self.NAMES[c]: p for c, p in probabilities.items()})
        return super().postprocess(value)


def layout(views: dict[str, TaskView], first: str, n_classes: int) -> SimpleNamespace:
    """The components, filled in for the task shown first."""
    v = views[first]
    c = SimpleNamespace()
    gr.Markdown(f"# {TITLE}")
    c.task = gr.Radio([(TASKS[t].title, t) for t in views], value=first, label="Task", elem_id="task",
                      visible=len(views) > 1)
    c.description = gr.Markdown(v.intro)
    c.notice = gr.Markdown(v.notice, elem_id="model-notice", visible=bool(v.notice))
    c.tile = gr.Radio(TILE_CHOICES, value=TILE_AUTO, label="Tile long images", elem_id="tile",
                      info="Overlapping square tiles as tall as the image; the answer is the worst tile's")
    with gr.Tab("Classify"):
        with gr.Row():
            with gr.Column():
                c.image = UploadImage(type="filepath", label="Image", elem_id="input-image",
                                   sources=["upload", "webcam", "clipboard"], height=320)
                c.button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                shown = v if v.examples else next((w for w in views.values() if w.examples), None)
                c.gallery = gr.Examples(shown.samples, inputs=c.image, cache_examples=False,
                                        example_labels=shown.example_labels,
                                        label="Examples (local copy of the data)") if shown else None
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
    with gr.Tab("Batch"):
        batch_tab(c)
    with gr.Tab("Model"):
        c.model_card = gr.Markdown(v.model_card, elem_id="model-card")
        c.matrix = gr.Image(v.confusion_matrix, label="Confusion matrix (test split)", interactive=False)
    c.state = gr.State(None, time_to_live=900)
    with gr.Column(visible=False):  # the API's endpoints: the same handlers, answers in codes
        c.api = SimpleNamespace(classify=gr.Button(), analyse=gr.Button(), label=DecidedLabel(), verdict=gr.HTML(),
                                cam=gr.Image(type="pil", format="png"), state=gr.State(None, time_to_live=60))
    return c


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


def batch_tab(c: SimpleNamespace) -> None:
    """Many images at once: the uploads, the button, the table and the CSV."""
    gr.Markdown(f"Many images at once: image files or `.zip` archives of them, up to {MAX_FILES} files "
                f"and {MAX_BYTES // 1024 ** 2} MB per batch. A file that cannot be read gets its reason "
                "in the table and the rest go on; the CSV has every class's probability.")
    c.batch_files = UploadFiles(file_count="multiple", file_types=["image", ".zip"], label="Images or .zip",
                            elem_id="batch-files")
    c.batch_button = gr.Button("Analyse all", variant="primary", elem_id="batch-run")
    c.batch_table = gr.Dataframe(headers=BATCH_HEADERS, label="Results", interactive=False, elem_id="batch-table")
    c.batch_csv = gr.File(label="Results as CSV", interactive=False, elem_id="batch-csv")


def wire(c: SimpleNamespace, handlers: Handlers, views: dict[str, TaskView]) -> None:
    """The events: the three API endpoints, the opacity re-blend, and the task switch."""
    shared = {"concurrency_id": "model", "concurrency_limit": CONCURRENCY, "preprocess": False}
    page = {**shared, "api_visibility": "private"}
    c.image.change(handlers.classify, [c.image, c.task, c.tile], c.label, api_name="page_classify", **page)
    c.api.classify.click(handlers.classify, [c.image, c.task, c.tile], c.api.label, api_name="classify", **shared)
    analyse_inputs = [c.image, c.target, c.opacity, c.task, c.tile, c.method]
    c.button.click(handlers.analyse, analyse_inputs, [c.verdict, c.label, c.cam, c.state], api_name="page_analyse",
                   **page)
    c.api.analyse.click(handlers.analyse, analyse_inputs, [c.api.verdict, c.api.label, c.api.cam, c.api.state],
                        api_name="analyse", **shared)
    c.target.input(handlers.explain, analyse_inputs, c.cam, api_name="explain", **shared)
    c.method.input(handlers.explain, analyse_inputs, c.cam, api_name="page_explain", **page)
    c.compare_button.click(handlers.compare, analyse_inputs[:4], c.compare, api_name="compare", **shared)
    c.batch_button.click(handlers.batch, [c.batch_files, c.task, c.tile], [c.batch_table, c.batch_csv],
                         api_name="batch", **shared)
    c.opacity.release(handlers.reblend, [c.state, c.opacity], c.cam, api_visibility="private")

    def switch(task: str) -> dict:
        """Everything that follows the task; the image and earlier results are cleared."""
        v = views[task]
        updates = {c.description: v.intro, c.notice: gr.Markdown(v.notice, visible=bool(v.notice)),
                   c.classes: v.classes, c.ethics: v.ethics, c.model_card: v.model_card,
                   c.matrix: gr.Image(v.confusion_matrix), c.target: gr.Dropdown(choices=v.targets, value=TOP_CLASS),
                   c.image: None, c.verdict: "", c.label: None, c.cam: None, c.state: None, c.compare: None,
                   c.batch_table: None, c.batch_csv: None}
        if c.gallery:
            updates[c.gallery.dataset] = gr.Dataset(samples=v.samples, sample_labels=v.example_labels,
                                                    visible=bool(v.examples))
        return updates

    outputs = [c.description, c.notice, c.classes, c.ethics, c.model_card, c.matrix, c.target, c.image, c.verdict,
               c.label, c.cam, c.state, c.compare, c.batch_table, c.batch_csv] + ([c.gallery.dataset] if c.gallery else [])
    c.task.change(switch, c.task, outputs, api_visibility="private")


def build_demo(handlers: Handlers, views: dict[str, TaskView]) -> gr.Blocks:
    """The page of `handlers`' models, showing `views` (task key → what follows the task)."""
    predictors = handlers.predictors
    with gr.Blocks(title=TITLE, delete_cache=(SWEEP_SECONDS, KEEP_SECONDS)) as demo:
        components = layout(views, handlers.first, max(len(p.codes) for p in predictors.values()))
        wire(components, handlers, views)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


def load_predictors() -> dict[str, Predictor]:
    """Each task's model: SKINLESION_MODEL_<TASK> (SKINLESION_MODEL for the default task) or the
    bundled folder. A task whose bundled folder is absent is left off the page."""
    predictors = {}
    for key, task in TASKS.items():
        source = os.environ.get(f"SKINLESION_MODEL_{key.upper()}") or (
            os.environ.get("SKINLESION_MODEL") if key == DEFAULT_TASK else None)
        if source or task.model_folder.is_dir():
            predictor = Predictor.from_pretrained(source, task=key)
            if predictor.task.key != key:
                raise SystemExit(f"{source}: a model of task {predictor.task.key!r}, given for task {key!r}")
            predictors[key] = predictor
    return predictors


def create_app() -> App:
    """The page with every task's model; example images from SKINLESION_DATA (default
    ../shared/data when it exists)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    private_temp_dir()
    predictors = load_predictors()
    data_root = os.environ.get(DATA_ENV, str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None) or None
    handlers = Handlers(predictors)
    views = {key: TaskView.of(p, example_images(p, data_root)) for key, p in predictors.items()}
    shown = [path for v in views.values() for path in [v.confusion_matrix, *v.examples] if path]
    return App(build_demo(handlers, views), [str(Path(path).resolve()) for path in shown])
