"""The Gradio Blocks page and its named API endpoints (/classify, /explain, /analyse).

The loaded model is the only state shared between requests; each page keeps its own last
image and heat-map in a session State, so the opacity slider re-blends without recomputing.
"""
from __future__ import annotations

import atexit
import base64
import csv
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import gradio as gr

from .classes import class_table
from .explain import overlay
from .inference import DISCLAIMER, InputError, Predictor
from .model import read_card

TITLE = "skinlesion — explainable skin-lesion classifier"
TOP_CLASS = "top"  # the class selector's value for "explain the most likely class"
QUEUE_SIZE = 64    # requests waiting beyond this are refused at once instead of timing out
CONCURRENCY = 1    # one model call at a time: on a 2-core CPU, parallel calls only contend
VERDICT_COLOURS = {"refer": "#b71c1c", "uncertain": "#e65100", "clear": "#2e7d32"}
EXAMPLES_ENV = "SKINLESION_EXAMPLES"  # a HAM10000 folder (metadata + images) for example images

ETHICS = f"""
**Not a medical device.** {DISCLAIMER} The verdict favours sensitivity: it sends more people
to a dermatologist than necessary so that it misses fewer cancers.

**Data.** Trained on HAM10000 (Tschandl P., Rosendahl C., Kittler H., *Sci. Data* 5, 180161,
2018, doi:10.1038/sdata.2018.161; licence CC BY-NC-SA 4.0, which the weights inherit:
non-commercial use only). Its 10,015 dermoscopic images come from two centres (Vienna and
Queensland) and are **skewed to light skin types**: accuracy on darker skin is unknown and
likely lower. Two thirds of the images are benign moles (nv), so rare classes (df, vasc,
akiec) are seen far less often. The model only knows these 7 classes and dermoscopic images;
a phone photo, another disease or healthy skin still gets one of the 7 labels.

**Privacy.** Images are processed in memory. Nothing is flagged, logged or kept: the
temporary copies the web server needs to show an image are deleted within two minutes, and
all of them when the app stops.
"""


def class_table_markdown(task: str) -> str:
    rows = [f"| <span style='color:{c.colour}'>■</span> **{c.code}** | {c.name} | {c.risk} | {c.description} |"
            for c in class_table(task)]
    return "| class | name | risk group | what it is |\n|---|---|---|---|\n" + "\n".join(rows)


def model_notice(predictor: Predictor) -> str:
    """A plain warning when the model card marks the model a placeholder."""
    meta, _ = read_card(predictor.folder)
    if meta.get("model_status") != "placeholder":
        return ""
    scores = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    return (f"⚠️ **The model behind this page is a low-accuracy placeholder** (test balanced accuracy "
            f"{scores.get('balanced_accuracy', float('nan')):.2f}, trained briefly on a CPU): treat its "
            f"answers as a demonstration of the interface, not as a classifier.")


def model_tab_markdown(predictor: Predictor) -> str:
    _, body = read_card(predictor.folder)
    lines = [line for line in body.splitlines() if not line.startswith("![")]  # the image is shown below
    return "\n".join(lines) if lines else "No model card in the model folder."


def verdict_html(level: str, headline: str, detail: str) -> str:
    colour = VERDICT_COLOURS[level]
    return (f"<div id='verdict' data-level='{level}' style='border-left:6px solid {colour};padding:8px 12px'>"
            f"<div style='font-size:1.3em;font-weight:600;color:{colour}'>{headline}</div>"
            f"<div>{detail}</div></div>")


def example_images(folder: str | None) -> list[str]:
    """One image per class from a local HAM10000 folder, when one is configured (never committed)."""
    if not folder:
        return []
    root = Path(folder)
    metadata = root / "HAM10000_metadata.csv"
    if not metadata.is_file():
        return []
    chosen: dict[str, str] = {}
    with metadata.open(newline="") as f:
        for row in csv.DictReader(f):
            path = root / "images" / f"{row['image_id']}.jpg"
            if row.get("dx") and row["dx"] not in chosen and path.is_file():
                chosen[row["dx"]] = str(path)
    return [chosen[k] for k in sorted(chosen)]


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


def build_demo(predictor: Predictor, examples_folder: str | None = None) -> gr.Blocks:
    codes = predictor.codes
    names = {c: predictor.classes[c].name for c in codes}

    def user_error(error: InputError) -> gr.Error:
        return gr.Error(f"Cannot analyse this image: {error}")

    def classify(image: dict | None) -> dict[str, float] | None:
        """Probabilities of every class for one image."""
        source = image_source(image)
        if source is None:
            return None
        try:
            return predictor.predict(source)
        except InputError as error:
            raise user_error(error) from None

    def explained(image: dict | None, target: str | None, opacity: float):
        source = image_source(image)
        if source is None:
            raise gr.Error("Upload an image first.")
        try:
            return predictor.explain(source, None if target in (None, "", TOP_CLASS) else target, opacity)
        except InputError as error:
            raise user_error(error) from None

    def explain(image: dict | None, target: str | None = TOP_CLASS, opacity: float = 0.45):
        """Grad-CAM overlay for one image: the top class, or the class given."""
        return explained(image, target, opacity).overlay

    def analyse(image: dict | None, target: str | None, opacity: float):
        """Verdict, probabilities and Grad-CAM overlay, from one forward/backward pass."""
        result = explained(image, target, opacity)
        verdict = predictor.triage(result.probabilities)
        return (verdict_html(verdict.level, verdict.headline, verdict.detail), result.probabilities,
                result.overlay, (result.image, result.heatmap))

    def reblend(state, opacity: float):
        if state is None:
            return gr.skip()
        rgb, heatmap = state
        return overlay(rgb, heatmap, opacity)

    with gr.Blocks(title=TITLE, delete_cache=(60, 120)) as demo:
        gr.Markdown(f"# {TITLE}\nUpload a dermoscopic image: the model gives the probability of "
                    f"each of HAM10000's {len(codes)} classes, a triage verdict, and a Grad-CAM map "
                    f"of the regions that drove the answer. **{DISCLAIMER}**")
        notice = model_notice(predictor)
        if notice:
            gr.Markdown(notice, elem_id="model-notice")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", label="Dermoscopic image", elem_id="input-image",
                                     sources=["upload", "webcam", "clipboard"], height=320)
                    button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                    examples = example_images(examples_folder)
                    if examples:
                        gr.Examples(examples, inputs=image, label="Examples (local HAM10000 copy)",
                                    cache_examples=False)
                with gr.Column():
                    verdict = gr.HTML(elem_id="verdict-box")
                    label = gr.Label(num_top_classes=len(codes), label="Probability of each class",
                                     elem_id="probabilities")
            with gr.Row():
                with gr.Column():
                    cam = gr.Image(type="pil", format="png", label="Grad-CAM: where the model looked",
                                   elem_id="gradcam", interactive=False, height=320)
                with gr.Column():
                    target = gr.Dropdown([("Most likely class", TOP_CLASS)]
                                         + [(f"{c} — {names[c]}", c) for c in codes],
                                         value=TOP_CLASS, label="Explain class", elem_id="target")
                    opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Overlay opacity")
                    gr.Markdown("Red = strong evidence for the class explained; the map is coarse "
                                "(one cell per 32 pixels of the model's input).")
            with gr.Accordion("About the classes", open=False):
                gr.Markdown(class_table_markdown(predictor.task))
            with gr.Accordion("Data & ethics", open=False):
                gr.Markdown(ETHICS)
        with gr.Tab("Model"):
            gr.Markdown(model_tab_markdown(predictor))
            matrix = predictor.folder / "confusion_matrix.png"
            if matrix.is_file():
                gr.Image(str(matrix), label="Confusion matrix (test split)", interactive=False)

        state = gr.State(None, time_to_live=900)
        shared = {"concurrency_id": "model", "concurrency_limit": CONCURRENCY, "preprocess": False}
        image.change(classify, image, label, api_name="classify", **shared)
        button.click(analyse, [image, target, opacity], [verdict, label, cam, state],
                     api_name="analyse", **shared)
        target.input(explain, [image, target, opacity], cam, api_name="explain", **shared)
        opacity.release(reblend, [state, opacity], cam, api_visibility="private")
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


def main() -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    private_temp_dir()
    predictor = Predictor.from_pretrained(os.environ.get("SKINLESION_MODEL"))
    examples = os.environ.get(EXAMPLES_ENV)
    if examples is None:
        default = Path(__file__).resolve().parents[2] / "shared" / "data" / "ham10000"
        examples = str(default) if default.is_dir() else None
    demo = build_demo(predictor, examples)
    demo.launch(show_error=True, max_file_size="25mb", footer_links=["api"],
                allowed_paths=[str(predictor.folder.resolve())] + ([examples] if examples else []))
