"""The Hugging Face Space and the local app: python app.py (README: "Run the app").

Environment: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; SKINLESION_MODEL (the default task) and
SKINLESION_MODEL_<TASK> (a model folder or a Hub repo id; default: the bundled models);
SKINLESION_DATA (a folder holding each task's data, whose images become examples).
"""
from skinlesion.app import create_app

app = create_app()
demo = app.demo  # the name Spaces and `gradio app.py` (reload mode) look for

if __name__ == "__main__":
    app.launch()
