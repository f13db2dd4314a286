"""The Gradio Blocks page and its named API endpoints (/classify, /explain, /analyse).

One page serves every task (dermoscopy, steel surface): a selector switches the examples,
class descriptions, ethics text, model tab and the model that answers. The loaded models are
the only state shared between requests; each page keeps its last image and heat-map in a
session State, so the opacity slider re-blends without recomputing.
"""
from __future__ import annotations

import atexit
import base64
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import gradio as gr

from .classes import DEFAULT_TASK, class_table
from .explain import overlay
from .inference import InputError, Predictor
from .model import read_card
from .tasks import TASKS, get_task

TITLE = "skinlesion — explainable image classifier"
TOP_CLASS = "top"  # the class selector's value for "explain the decided class" (API name kept)
QUEUE_SIZE = 64    # requests waiting beyond this are refused at once instead of timing out
CONCURRENCY = 1    # one model call at a time: on a 2-core CPU, parallel calls only contend
VERDICT_COLOURS = {"refer": "#b71c1c", "uncertain": "#e65100", "clear": "#2e7d32",
                   "review": "#e65100", "defect": "#1565c0"}
DATA_ENV = "SKINLESION_DATA"  # a folder holding ham10000/ and neu_det/, for example images
PRIVACY = """
**Privacy.** Images are processed in memory. Nothing is flagged, logged or kept: the
temporary copies the web server needs to show an image are deleted within two minutes, and
all of them when the app stops.
"""


class DecidedLabel(gr.Label):
    """gr.Label whose heading is the decided class of the model's decision rule, which need not
    be the most probable one (the rule favours rare classes in close calls); the bars are the
    calibrated probabilities. Handlers return (decided code, probabilities). Through the API
    the value is {"label": decided code, "confidences": [{"label": code, "confidence": p}, …]}."""
    is_template = True  # the page draws it with Label's own front-end component

    def postprocess(self, value):
        if not isinstance(value, tuple):
            return super().postprocess(value)
        decided, probabilities = value
        data = super().postprocess(probabilities)
        data.label = decided
        return data


def class_table_markdown(task: str) -> str:
    rows = [f"| <span style='color:{c.colour}'>■</span> **{c.code}** | {c.name} | {c.risk} | {c.description} |"
            for c in class_table(task)]
    return "| class | name | group | what it is |\n|---|---|---|---|\n" + "\n".join(rows)


def model_notice(predictor: Predictor) -> str:
    """A plain warning when the model card marks the model a placeholder."""
    meta, _ = read_card(predictor.folder)
    if meta.get("model_status") != "placeholder":
        return ""
    scores = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    return (f"⚠️ **The model behind this task is a low-accuracy placeholder** (test balanced accuracy "
            f"{scores.get('balanced_accuracy', float('nan')):.2f}, trained briefly on a CPU): treat its "
            f"answers as a demonstration of the interface, not as a classifier.")


def model_tab_markdown(predictor: Predictor) -> str:
    _, body = read_card(predictor.folder)
    lines = [line for line in body.splitlines() if not line.startswith("![")]  # the image is shown below
    return "\n".join(lines) if lines else "No model card in the model folder."


def confusion_matrix_image(predictor: Predictor) -> str | None:
    path = predictor.folder / "confusion_matrix.png"
    return str(path) if path.is_file() else None


def intro(task: str) -> str:
    t = get_task(task)
    return (f"Upload {t.subject}: the model gives the probability of each of its "
            f"{len(class_table(task))} classes, a verdict, and a Grad-CAM map of the regions that "
            f"drove the answer. **{t.disclaimer}**")


def verdict_html(level: str, headline: str, detail: str) -> str:
    colour = VERDICT_COLOURS[level]
    return (f"<div id='verdict' data-level='{level}' style='border-left:6px solid {colour};padding:8px 12px'>"
            f"<div style='font-size:1.3em;font-weight:600;color:{colour}'>{headline}</div>"
            f"<div>{detail}</div></div>")


def example_images(task: str, data_root: str | None) -> list[str]:
    """One image per class from a local copy of the task's data, when there is one (never committed)."""
    if not data_root:
        return []
    t = get_task(task)
    try:
        records = t.load(Path(data_root) / t.data_folder)
    except Exception:  # no data here, or not this layout: simply no examples
        return []
    first: dict[str, str] = {}
    for r in sorted(records, key=lambda r: r.image_id):
        first.setdefault(r.label, str(r.path))
    return [first[c.code] for c in class_table(task) if c.code in first]


def image_source(payload: dict | None) -> str | bytes | None:
    """The uploaded file as gradio hands it over unprocessed (events use preprocess=False, so
    every check and the decoding are ours, and a bad file gets our message): its cached path,
    or the bytes of a data URL."""
    if not payload:
        return None
    if payload.get("path"):
        return payload["path"]
    url = payload.get("url") or ""
    if url.startswith("data:") and "," in url:
        return base64.b64decode(url.split(",", 1)[1])
    raise gr.Error("Cannot analyse this image: the upload arrived without a file.")


def build_demo(predictors: dict[str, Predictor], data_root: str | None = None) -> gr.Blocks:
    """The page for `predictors` (task key → Predictor; the default task first)."""
    tasks = list(predictors)
    first = DEFAULT_TASK if DEFAULT_TASK in predictors else tasks[0]
    examples = {t: example_images(t, data_root) for t in tasks}

    def predictor_for(task: str | None) -> Predictor:
        task = task or first
        if task not in predictors:
            raise gr.Error(f"Unknown task {task!r}; this app serves: {', '.join(tasks)}.")
        return predictors[task]

    def target_choices(task: str) -> list[tuple[str, str]]:
        p = predictors[task]
        return [("Decided class", TOP_CLASS)] + [(f"{c} — {p.classes[c].name}", c) for c in p.codes]

    def explained(image: dict | None, target: str | None, opacity: float, task: str | None):
        predictor = predictor_for(task)
        source = image_source(image)
        if source is None:
            raise gr.Error("Upload an image first.")
        try:
            return predictor, predictor.explain(source, None if target in (None, "", TOP_CLASS) else target, opacity)
        except InputError as error:
            raise gr.Error(f"Cannot analyse this image: {error}") from None

    def classify(image: dict | None, task: str | None = first) -> tuple[str, dict[str, float]] | None:
        """The decided class and the calibrated probability of every class, for one image."""
        predictor = predictor_for(task)
        source = image_source(image)
        if source is None:
            return None
        try:
            probabilities = predictor.predict(source)
            return predictor.decide(probabilities), probabilities
        except InputError as error:
            raise gr.Error(f"Cannot analyse this image: {error}") from None

    def explain(image: dict | None, target: str | None = TOP_CLASS, opacity: float = 0.45,
                task: str | None = first):
        """Grad-CAM overlay for one image: the top class, or the class given."""
        return explained(image, target, opacity, task)[1].overlay

    def analyse(image: dict | None, target: str | None, opacity: float, task: str | None = first):
        """Verdict, probabilities and Grad-CAM overlay, from one forward/backward pass."""
        predictor, result = explained(image, target, opacity, task)
        verdict = predictor.triage(result.probabilities)
        return (verdict_html(verdict.level, verdict.headline, verdict.detail),
                (predictor.decide(result.probabilities), result.probabilities),
                result.overlay, (result.image, result.heatmap))

    def reblend(state, opacity: float):
        if state is None:
            return gr.skip()
        rgb, heatmap = state
        return overlay(rgb, heatmap, opacity)

    def switch(task: str):
        """Everything on the page that follows the task; the image and earlier results are cleared."""
        p = predictors[task]
        return (intro(task), gr.Markdown(model_notice(p), visible=bool(model_notice(p))),
                class_table_markdown(task), get_task(task).ethics + PRIVACY,
                model_tab_markdown(p), gr.Image(confusion_matrix_image(p)),
                gr.Dropdown(choices=target_choices(task), value=TOP_CLASS),
                None, "", None, None, None) + ((gr.Dataset(samples=[[e] for e in examples[task]],
                                                   visible=bool(examples[task])),) if gallery else ())

    p0 = predictors[first]
    with gr.Blocks(title=TITLE, delete_cache=(60, 120)) as demo:
        gr.Markdown(f"# {TITLE}")
        task = gr.Radio([(get_task(t).title, t) for t in tasks], value=first, label="Task",
                        elem_id="task", visible=len(tasks) > 1)
        description = gr.Markdown(intro(first))
        notice = gr.Markdown(model_notice(p0), elem_id="model-notice", visible=bool(model_notice(p0)))
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", label="Image", elem_id="input-image",
                                     sources=["upload", "webcam", "clipboard"], height=320)
                    button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                    some = examples[first] or next((e for e in examples.values() if e), [])
                    gallery = gr.Examples([[e] for e in some], inputs=image, cache_examples=False,
                                          label="Examples (local copy of the data)") if some else None
                    if gallery:
                        gallery.dataset.visible = bool(examples[first])
                with gr.Column():
                    verdict = gr.HTML(elem_id="verdict-box")
                    label = DecidedLabel(num_top_classes=max(len(p.codes) for p in predictors.values()),
                                         label="Decided class · probability of each class",
                                         elem_id="probabilities")
            with gr.Row():
                with gr.Column():
                    cam = gr.Image(type="pil", format="png", label="Grad-CAM: where the model looked",
                                   elem_id="gradcam", interactive=False, height=320)
                with gr.Column():
                    target = gr.Dropdown(target_choices(first), value=TOP_CLASS, label="Explain class",
                                         elem_id="target")
                    opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Overlay opacity")
                    gr.Markdown("Red = strong evidence for the class explained; the map is coarse "
                                "(one cell per 32 pixels of the model's input).")
            with gr.Accordion("About the classes", open=False):
                classes_md = gr.Markdown(class_table_markdown(first), elem_id="about-classes")
            with gr.Accordion("Data & ethics", open=False):
                ethics_md = gr.Markdown(get_task(first).ethics + PRIVACY, elem_id="ethics")
        with gr.Tab("Model"):
            model_md = gr.Markdown(model_tab_markdown(p0), elem_id="model-card")
            matrix = gr.Image(confusion_matrix_image(p0), label="Confusion matrix (test split)",
                              interactive=False)

        state = gr.State(None, time_to_live=900)
        shared = {"concurrency_id": "model", "concurrency_limit": CONCURRENCY, "preprocess": False}
        image.change(classify, [image, task], label, api_name="classify", **shared)
        button.click(analyse, [image, target, opacity, task], [verdict, label, cam, state],
                     api_name="analyse", **shared)
        target.input(explain, [image, target, opacity, task], cam, api_name="explain", **shared)
        opacity.release(reblend, [state, opacity], cam, api_visibility="private")
        task.change(switch, task, [description, notice, classes_md, ethics_md, model_md, matrix, target,
                                   image, verdict, label, cam, state] + ([gallery.dataset] if gallery else []),
                    api_visibility="private")
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


def private_temp_dir() -> str:
    """Gradio keeps uploads and outputs as files to serve them: put them in a folder of this
    process (inside GRADIO_TEMP_DIR when set) and remove it at exit, SIGTERM included."""
    path = tempfile.mkdtemp(prefix="skinlesion-", dir=os.environ.get("GRADIO_TEMP_DIR"))
    os.environ["GRADIO_TEMP_DIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return path


def load_predictors() -> dict[str, Predictor]:
    """Each task's model: SKINLESION_MODEL_<TASK> (SKINLESION_MODEL for the default task) or the
    bundled folder. A task whose bundled folder is absent is left off the page."""
    predictors = {}
    for key, t in TASKS.items():
        source = os.environ.get(f"SKINLESION_MODEL_{key.upper()}") or (
            os.environ.get("SKINLESION_MODEL") if key == DEFAULT_TASK else None)
        if source or t.model_folder.is_dir():
            predictor = Predictor.from_pretrained(source, task=key)
            if predictor.task != key:
                raise SystemExit(f"{source}: a model of task {predictor.task!r}, given for task {key!r}")
            predictors[key] = predictor
    return predictors


def main() -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    private_temp_dir()
    predictors = load_predictors()
    data_root = os.environ.get(DATA_ENV)
    if data_root is None:
        default = Path(__file__).resolve().parents[2] / "shared" / "data"
        data_root = str(default) if default.is_dir() else None
    demo = build_demo(predictors, data_root)
    demo.launch(show_error=True, max_file_size="25mb", footer_links=["api"],
                allowed_paths=[str(p.folder.resolve()) for p in predictors.values()]
                + ([data_root] if data_root else []))
