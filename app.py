"""The Hugging Face Space and the local app: python app.py [--log-db URL] [--log-days N]
(README: "Run the app").

Environment: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; SKINLESION_MODEL (the default task) and
SKINLESION_MODEL_<TASK> (a model folder or a Hub repo id; default: the bundled models);
SKINLESION_DATA (a folder holding each task's data, whose images become examples);
SKINLESION_LOG_DB (the decision log's database URL, as --log-db: off when unset) and
SKINLESION_LOG_DAYS (its retention, as --log-days). docs/operations.md says what a log row holds.
"""
import argparse
import os

from skinlesion.app import create_app
from skinlesion.ops import LOG_DAYS_ENV, LOG_ENV

flags = argparse.ArgumentParser(description=__doc__)
flags.add_argument("--log-db", metavar="URL", help="log one row per analysed image to this database "
                   "(SQLAlchemy URL: sqlite:///decisions.db, postgresql+psycopg://user@host/db)")
flags.add_argument("--log-days", type=float, metavar="N", help="delete log rows older than N days")
given, _ = flags.parse_known_args()  # other arguments are Gradio's (`gradio app.py` reload mode)
for name, value in ((LOG_ENV, given.log_db), (LOG_DAYS_ENV, given.log_days)):
    if value is not None:
        os.environ[name] = str(value)

app = create_app()
demo = app.demo  # the name Spaces and `gradio app.py` (reload mode) look for

if __name__ == "__main__":
    app.launch()
