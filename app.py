"""Entry point of the Hugging Face Space and of the local app: python app.py

Serves the page and the /classify, /explain and /analyse API endpoints; honours
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, SKINLESION_MODEL (a model folder or Hub repo id;
default: the bundled model in assets/model) and SKINLESION_EXAMPLES (a HAM10000 folder).
"""
from skinlesion.ui import main

if __name__ == "__main__":
    main()
