"""The app: the Gradio page over every task's model, as a Hugging Face Space, a local app
(`make run`, app.py) and named HTTP endpoints for gradio_client.

    layout.py    the page: components, and each event beside them
    handlers.py  the events: check the request, one Predictor.analyse, present the answer
    views.py     the words and markup: texts that follow the task, class names, verdict HTML
    server.py    the web server: temp folder, request limits, upload-only inputs, cleanup, launch
    uploads.py   what counts as an upload
"""
from __future__ import annotations

import os
from pathlib import Path

from ..ops import Operations
from ..predictor import Predictor
from ..tasks import DEFAULT_TASK, TASKS
from .handlers import Handlers
from .layout import build_demo
from .server import App, private_temp_dir
from .views import TaskView, example_images

DATA_ENV = "SKINLESION_DATA"  # a folder holding each task's data folder, for example images
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


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
    ../shared/data when it exists). The server's files live in a folder of this process, made
    before any component exists (components record it when they are made)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    private_temp_dir()
    predictors = load_predictors()
    data_root = os.environ.get(DATA_ENV, str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None) or None
    ops = Operations.from_env(predictors)  # metrics; the decision log when SKINLESION_LOG_DB is set
    handlers = Handlers(predictors, ops)
    views = {key: TaskView.of(p, example_images(p, data_root), logged=ops.log is not None)
             for key, p in predictors.items()}
    shown = [path for v in views.values() for path in [v.confusion_matrix, v.reliability, v.subgroups, *v.examples]
             if path]
    return App(build_demo(handlers, views), [str(Path(path).resolve()) for path in shown], ops)


__all__ = ["create_app", "App"]
