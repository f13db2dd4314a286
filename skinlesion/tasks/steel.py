"""Steel surface inspection: the NEU surface defect database's 6 classes, its reader, its
defect boxes, and the words the page and the model card use."""
from __future__ import annotations

import hashlib
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from ..data import IMAGE_SUFFIXES, DataError, Record, offenders
from .base import DEFECT, ClassInfo, Task
from .verdicts import ManualReview

CLASSES = (  # NEU surface defect database, hot-rolled steel strip
    ClassInfo("crazing", "Crazing", "A network of fine surface cracks.", DEFECT, "#6d4c41"),
    ClassInfo("inclusion", "Inclusion", "Non-metallic particles rolled into the surface.", DEFECT, "#5e35b1"),
    ClassInfo("patches", "Patches", "Irregular darker or lighter areas of the surface.", DEFECT, "#00897b"),
    ClassInfo("pitted_surface", "Pitted surface", "Small pits and craters scattered over the surface.",
              DEFECT, "#c0ca33"),
    ClassInfo("rolled-in_scale", "Rolled-in scale", "Oxide scale pressed into the strip during rolling.",
              DEFECT, "#f4511e"),
    ClassInfo("scratches", "Scratches", "Straight grooves along the rolling direction.", DEFECT, "#1e88e5"),
)
CODES = {c.code for c in CLASSES}
NEU_IMAGES = "images"
NEU_ANNOTATIONS = "annotations"


def load_neu(root: str | Path) -> list[Record]:
    """NEU surface defects: `images/<class>_<n>.jpg`, the class is the file-name prefix.
    Byte-identical files share a group, so a duplicate pair can
    never straddle two splits (the database has one: patches_101 = patches_105)."""
    folder = Path(root) / NEU_IMAGES
    if not folder.is_dir():
        raise DataError(f"NEU image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{folder} holds no images")
    unknown = [p.name for p in paths if p.stem.rsplit("_", 1)[0] not in CODES]
    if unknown:
        raise DataError(f"{folder}: " + offenders(unknown, "file(s) whose name starts with no known class")
                        + f"; known classes: {', '.join(sorted(CODES))}")
    groups: dict[str, str] = {}
    records = []
    for p in paths:
        digest = hashlib.sha1(p.read_bytes()).hexdigest()
        groups.setdefault(digest, p.stem)  # the group is named after its first file
        records.append(Record(p.stem, groups[digest], p.stem.rsplit("_", 1)[0], p))
    return records


def neu_box_mask(root: str | Path, image_id: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The union of the Pascal-VOC defect boxes of one NEU image, as a boolean H×W mask."""
    path = Path(root) / NEU_ANNOTATIONS / f"{image_id}.xml"
    if not path.is_file():
        return None
    tree = ElementTree.parse(path).getroot()
    size = tree.find("size")
    sx = shape[1] / float(size.findtext("width")) if size is not None else 1.0
    sy = shape[0] / float(size.findtext("height")) if size is not None else 1.0
    mask = np.zeros(shape, bool)
    for box in tree.iter("bndbox"):
        x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        mask[int(y0 * sy):int(np.ceil(y1 * sy)), int(x0 * sx):int(np.ceil(x1 * sx))] = True
    return mask


CITATION = ("Song K., Yan Y. A noise robust method based on completed local binary patterns for "
            "hot-rolled steel strip surface defects. Applied Surface Science 285 (2013) 858–864")

TASK = Task(
    key="neu", title="Steel surface", subject="a grey-scale image of a hot-rolled steel strip", classes=CLASSES,
    refusal="This does not look like a steel surface image",
    unfamiliar="An image unlike the training images (another line, camera or lighting?)",
    tile_large_images=True,
    load=load_neu, annotation=neu_box_mask, annotation_name="defect boxes",
    data_folder="neu_det", dataset="NEU surface defect database",
    license="other", license_text="academic use, as the NEU surface defect database it was trained on",
    citation=CITATION,
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
shows where it looked; a part whose 90% prediction set holds more than one defect type is sent
to **manual review**: a wrong automatic label costs more than a second look. An image that does
not look like a steel surface gets no label at all.

**Data.** Trained on the NEU surface defect database (Song K., Yan Y., *Applied Surface
Science* 285, 2013, 858–864; free for academic use): 1,800 grey-scale images of hot-rolled
steel strip, 300 for each of crazing, inclusion, patches, pitted surface, rolled-in scale
and scratches. There is **no defect-free class**: a clean part still gets a defect label.
""", disclaimer="Decision support only: a person decides whether the part is released.",
    verdict=ManualReview(review="Manual review", found="Defect: {name}"))
