"""Dermoscopy, the default task: HAM10000's 7 skin-lesion classes, its reader (both folder
layouts), its lesion masks, and the words the page and the model card use."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import IMAGE_SUFFIXES, DataError, Record, offenders
from ..patient import Patient
from .base import BENIGN, MALIGNANT, PRE_MALIGNANT, ClassInfo, Task
from .verdicts import RecallFirst

CLASSES = (
    ClassInfo("akiec", "Actinic keratosis / intraepithelial carcinoma",
              "Rough, scaly sun-damage patch that can progress to squamous cell carcinoma.",
              PRE_MALIGNANT, "#e67e22"),
    ClassInfo("bcc", "Basal cell carcinoma",
              "The most common skin cancer; grows slowly and rarely spreads, but needs treatment.",
              MALIGNANT, "#c0392b"),
    ClassInfo("bkl", "Benign keratosis-like lesion",
              "Seborrhoeic keratosis, solar lentigo or lichen-planus-like keratosis; harmless.",
              BENIGN, "#8e9e5a"),
    ClassInfo("df", "Dermatofibroma",
              "A firm, harmless nodule of the skin, often on the legs.",
              BENIGN, "#6b8e9e"),
    ClassInfo("mel", "Melanoma",
              "A cancer of pigment cells; dangerous when missed, curable when caught early.",
              MALIGNANT, "#7b1e1e"),
    ClassInfo("nv", "Melanocytic nevus",
              "A common mole; benign, and by far the most frequent class in the data.",
              BENIGN, "#2e86c1"),
    ClassInfo("vasc", "Vascular lesion",
              "Cherry angioma, angiokeratoma, pyogenic granuloma or haemorrhage; benign.",
              BENIGN, "#8e44ad"),
)
CODES = {c.code for c in CLASSES}

METADATA_FILE = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
# The flat folder of this project's copy, and the two folders of the official release.
IMAGE_FOLDERS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", ".")


def find_images(root: Path) -> dict[str, Path]:
    """Map image id → file for either layout (flat `images/` or the official part_1/part_2)."""
    found: dict[str, Path] = {}
    for folder in IMAGE_FOLDERS:
        directory = root / folder
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith("_segmentation"):
                found.setdefault(path.stem, path)
    return found


def load_ham10000(root: str | Path, metadata: str | Path | None = None) -> list[Record]:
    """Read the metadata and pair every row with its image; fail early, naming offenders.
    A record's group is the lesion (`lesion_id`): its images never straddle two splits."""
    root = Path(root)
    metadata = Path(metadata) if metadata else root / METADATA_FILE
    if not metadata.is_file():
        raise DataError(f"metadata file not found: {metadata}")
    with metadata.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{metadata} lacks column(s) {', '.join(missing)}; "
                            f"found: {', '.join(reader.fieldnames or []) or 'no header'}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{metadata} has no rows")
    unknown = [f"{r['image_id']} ({r['dx']!r})" for r in rows if r["dx"] not in CODES]
    if unknown:
        raise DataError(f"{metadata}: " + offenders(unknown, "row(s) with an unknown label")
                        + f"; known labels: {', '.join(sorted(CODES))}")
    images = find_images(root)
    absent = [r["image_id"] for r in rows if r["image_id"] not in images]
    if absent:
        raise DataError(f"{root}: " + offenders(absent, "metadata row(s) without an image file")
                        + f" (looked in {', '.join(IMAGE_FOLDERS)})")
    return [Record(r["image_id"], r["lesion_id"], r["dx"], images[r["image_id"]]) for r in rows]


# HAM10000's dx_type: how each diagnosis was confirmed (Tschandl et al. 2018).
DX_TYPES = {"histo": "histopathology", "follow_up": "follow-up", "consensus": "expert consensus",
            "confocal": "confocal microscopy"}


def ham_confirmations(root: str | Path) -> dict[str, str]:
    """Image id → how its diagnosis was confirmed, from the metadata's dx_type column."""
    with (Path(root) / METADATA_FILE).open(newline="") as f:
        return {r["image_id"]: DX_TYPES.get(r.get("dx_type") or "", r.get("dx_type") or "unrecorded")
                for r in csv.DictReader(f)}


AGE_BANDS = ((30, "under 30"), (45, "30–44"), (60, "45–59"), (75, "60–74"), (200, "75 and over"))


def ham_patients(root: str | Path) -> dict[str, Patient]:
    """Image id → its patient's age, sex and body site, from the metadata (None where blank or
    "unknown")."""
    with (Path(root) / METADATA_FILE).open(newline="") as f:
        return {r["image_id"]: Patient.parse(r.get("age"), r.get("sex"), r.get("localization"))
                for r in csv.DictReader(f)}


def ham_groups(root: str | Path) -> dict[str, dict[str, str]]:
    """Image id → its age band, sex and body site ("unknown" where not recorded)."""
    def band(years: float | None) -> str:
        return "unknown" if years is None else next(name for upper, name in AGE_BANDS if years < upper)

    return {image: {"age": band(p.age), "sex": p.sex or "unknown", "site": p.site or "unknown"}
            for image, p in ham_patients(root).items()}


def ham_lesion_mask(root: str | Path, image_id: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The HAM10000 lesion segmentation (lesion = pixel > 127), resized to `shape` if needed."""
    path = Path(root) / "masks" / f"{image_id}_segmentation.png"
    if not path.is_file():
        return None
    with Image.open(path) as mask:
        mask = mask.convert("L")
        if mask.size != (shape[1], shape[0]):
            mask = mask.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
        return np.asarray(mask) > 127


CITATION = ("Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of "
            "multi-source dermatoscopic images of common pigmented skin lesions. Sci. Data 5, "
            "180161 (2018). doi:10.1038/sdata.2018.161")
RESEARCH_DEMO = "This is a research demo, not a diagnosis: only a clinician can assess a skin lesion."

TASK = Task(
    key="ham10000", title="Dermoscopy", subject="a dermoscopic image of a skin lesion", classes=CLASSES,
    default=True, refusal="This does not look like a dermoscopic image of a skin lesion",
    unfamiliar="An image unlike the training images (another dermatoscope or clinic?)", acquisition_shift=2.0,
    load=load_ham10000, confirmations=ham_confirmations, groups=ham_groups, patients=ham_patients, skin=True,
    annotation=ham_lesion_mask, annotation_name="lesion masks",
    data_folder="ham10000", dataset="HAM10000", license="cc-by-nc-sa-4.0",
    license_text="CC BY-NC-SA 4.0, inherited from the HAM10000 data (non-commercial, share-alike)",
    citation=CITATION,
    intended_use=("Research and teaching: showing how a classifier of dermoscopic images behaves and "
                  "where it looks (Grad-CAM). **Not a medical device and not a diagnosis.**"),
    out_of_scope=("Clinical decisions, screening of patients, photographs that are not dermoscopic, skin "
                  "types and lesion kinds outside HAM10000, any use without a clinician."),
    limitations="""- HAM10000 comes from two centres (Vienna and Queensland) and is skewed to light skin types:
  too few images of darker skin to measure the model on it (the results by subgroup below).
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
Queensland) and are **skewed to light skin types** (the figures below). Two thirds of the
images are benign moles (nv), so rare classes (df, vasc, akiec) are seen far less often. The
model only knows these 7 classes and dermoscopic images: an image that does not look like
dermoscopy is refused, one from another dermatoscope or clinic is answered with a caution and
the accuracy measured on such images, and another disease or healthy skin still gets one of the
7 labels.
""", disclaimer=RESEARCH_DEMO,
    verdict=RecallFirst(refer="Refer to a dermatologist", uncertain="Uncertain — have it checked",
                        clear="No high-risk pattern found",
                        clear_means="no malignant or pre-malignant class reached its threshold"))
