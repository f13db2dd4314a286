"""A task = its class table (classes.py), its dataset reader, its annotation masks for
explanation quality, its bundled model folder, and the words the page and the model card use.
Dermoscopy (HAM10000) is the default; steel surface inspection (NEU) is the second."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .classes import DEFAULT_TASK
from .data import Record, ham_lesion_mask, load_ham10000, load_neu, neu_box_mask

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class Task:
    key: str
    title: str                    # the page's task selector
    subject: str                  # what an input is: "a dermoscopic image"
    load: Callable[[Path], list[Record]]
    annotation: Callable[[Path, str, tuple[int, int]], np.ndarray | None]  # where the finding is
    annotation_name: str          # "lesion masks"
    model_folder: Path
    data_folder: str              # its folder's name inside a data root such as ../shared/data
    dataset: str
    license: str                  # Hugging Face licence id of the trained weights
    license_text: str
    citation: str
    intended_use: str
    out_of_scope: str
    limitations: str              # Markdown bullet list
    ethics: str                   # the page's "Data & ethics" text
    disclaimer: str               # said with every verdict


HAM10000_CITATION = ("Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of "
                     "multi-source dermatoscopic images of common pigmented skin lesions. Sci. Data 5, "
                     "180161 (2018). doi:10.1038/sdata.2018.161")
NEU_CITATION = ("Song K., Yan Y. A noise robust method based on completed local binary patterns for "
                "hot-rolled steel strip surface defects. Applied Surface Science 285 (2013) 858–864")
RESEARCH_DEMO = "This is a research demo, not a diagnosis: only a clinician can assess a skin lesion."

DERMOSCOPY = Task(
    key="ham10000", title="Dermoscopy", subject="a dermoscopic image",
    load=load_ham10000, annotation=ham_lesion_mask, annotation_name="lesion masks",
    model_folder=ASSETS / "model", data_folder="ham10000", dataset="HAM10000", license="cc-by-nc-sa-4.0",
    license_text="CC BY-NC-SA 4.0, inherited from the HAM10000 data (non-commercial, share-alike)",
    citation=HAM10000_CITATION,
    intended_use=("Research and teaching: showing how a classifier of dermoscopic images behaves and "
                  "where it looks (Grad-CAM). **Not a medical device and not a diagnosis.**"),
    out_of_scope=("Clinical decisions, screening of patients, photographs that are not dermoscopic, skin "
                  "types and lesion kinds outside HAM10000, any use without a clinician."),
    limitations="""- HAM10000 comes from two centres (Vienna and Queensland) and is skewed to light skin types;
  performance on darker skin is unknown.
- Strong class imbalance (nv is 67 % of the images; df and vasc about 1 % each); the loss is
  class-weighted and model selection uses balanced accuracy.
- The images used here are 200×150 downscales; fine structure visible at full resolution is lost.
- Splits are grouped by lesion (no lesion in two splits), stratified by class, 70/15/15.""",
    ethics=f"""
**Not a medical device.** {RESEARCH_DEMO} The verdict favours sensitivity: it sends more people
to a dermatologist than necessary so that it misses fewer cancers.

**Data.** Trained on HAM10000 (Tschandl P., Rosendahl C., Kittler H., *Sci. Data* 5, 180161,
2018, doi:10.1038/sdata.2018.161; licence CC BY-NC-SA 4.0, which the weights inherit:
non-commercial use only). Its 10,015 dermoscopic images come from two centres (Vienna and
Queensland) and are **skewed to light skin types**: accuracy on darker skin is unknown and
likely lower. Two thirds of the images are benign moles (nv), so rare classes (df, vasc,
akiec) are seen far less often. The model only knows these 7 classes and dermoscopic images;
a phone photo, another disease or healthy skin still gets one of the 7 labels.
""", disclaimer=RESEARCH_DEMO)

STEEL = Task(
    key="neu", title="Steel surface", subject="a grey-scale image of a hot-rolled steel strip",
    load=load_neu, annotation=neu_box_mask, annotation_name="defect boxes",
    model_folder=ASSETS / "models" / "neu", data_folder="neu_det", dataset="NEU surface defect database", license="other",
    license_text="academic use, as the NEU surface defect database it was trained on",
    citation=NEU_CITATION,
    intended_use=("Research and teaching: naming the defect type on a hot-rolled steel strip image and "
                  "showing where it is (Grad-CAM), with doubtful parts routed to a person."),
    out_of_scope=("Release decisions without a person, defect-free parts (the data has no defect-free "
                  "class), other materials, cameras or lighting than the NEU database's."),
    limitations="""- 1,800 images, 300 per class, 200×200 grey-scale, from one production line: other
  lines, cameras and lighting are untested.
- Every image holds a defect: a clean surface still gets one of the 6 defect labels.
- One duplicate pair (patches_101 = patches_105) is kept in one split.""",
    ethics="""
**Decision support, not a release decision.** The model names one of six defect types and
shows where it looked; a part whose top probability is under the review threshold (chosen on
validation so that most wrong answers would have gone to a person) is sent to **manual
review**: a wrong automatic label costs more than a second look.

**Data.** Trained on the NEU surface defect database (Song K., Yan Y., *Applied Surface
Science* 285, 2013, 858–864; free for academic use): 1,800 grey-scale images of hot-rolled
steel strip, 300 for each of crazing, inclusion, patches, pitted surface, rolled-in scale
and scratches. There is **no defect-free class**: a clean part still gets a defect label.
""", disclaimer="Decision support only: a person decides whether the part is released.")

TASKS: dict[str, Task] = {t.key: t for t in (DERMOSCOPY, STEEL)}


def get_task(key: str = DEFAULT_TASK) -> Task:
    try:
        return TASKS[key]
    except KeyError:
        raise ValueError(f"unknown task {key!r}; known tasks: {', '.join(TASKS)}") from None
