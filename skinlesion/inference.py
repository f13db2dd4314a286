"""The Predictor: one image's way to an answer, in one place.

    Predictor.analyse(image, target=None, method=GRAD_CAM, tile=None) -> Analysis
      prepare: check the file → RGB (images.py), the whole image or its tiles (tiles.py) → input
      one forward pass of the answering network (ensemble.py: the folder's model, or several
      models and mirror views averaged) → logits, and the primary model's features (through
      hooks: features.py); for one model and view the heat-map's own pass (explain.py) answers
      the input check (check.py) on the features: is this an image of the kind the model knows?
      calibrated probabilities → the decided class, decided once → the 90% prediction set
      (conformal.py) → the task's verdict (verdicts.py; "not an image of this kind" when the
      check fails) → the nearest training cases of the reference gallery (gallery.py)
      the heat-map of `method` for `target` (default: the decided class); a long image's tiles
      are stitched into one map, and the answer is the worst tile's

`analyse_many` is the same without heat-maps, for many prepared images in batched passes (the
batch path and the command line); `predict` gives the probabilities alone. The heat-map, the
input check and the similar cases are the primary model's (the folder's own) also when an
ensemble answers. Presentation (the overlay, its opacity, HTML) is the app's.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .check import InputCheck
from .ensemble import Ensemble, load_ensemble
from .explain import GRAD_CAM, METHODS, attribution_map, grad_cam, last_stage, upsample_heatmap
from .features import POOLED
from .gallery import SHOWN, Case, Gallery, Neighbour
from .hub import download, looks_like_repo_id
from .images import ImageInput, InputError, load_image
from .spec import ModelSpec
from .tasks import get_task
from .tiles import TILE_CHUNK, checked_boxes, chunks, crops, stitched, where, worst_tile, worth_tiling
from .transforms import eval_transform, normalize
from .verdicts import Verdict, not_known

Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass
class Analysis:
    image: np.ndarray | None           # the checked RGB input, H×W×3 uint8 (None from analyse_many)
    probabilities: dict[str, float]    # calibrated, every class, summing to 1; a tiled image: the worst tile's
    decided: str                       # the decision rule's class
    verdict: Verdict                   # in the task's words
    prediction_set: list[str] = field(default_factory=list)  # 90% conformal set, in class order
    known: bool = True                 # the input check passed (always True for a model without one)
    check_score: float | None = None   # the input check's score (None: the model has no check) …
    check_threshold: float | None = None  # … and its threshold: known = score ≤ threshold
    heatmap: np.ndarray | None = None  # H×W float32 in 0..1: `method`'s evidence for `target`; None: not asked
    target: str | None = None          # the class the heat-map explains
    method: str | None = None          # the method behind the heat-map (explain.METHODS)
    region: Box | None = None          # a tiled image: the worst tile
    tiles: int = 0                     # the number of tiles; 0: the whole image in one view
    similar: list[Neighbour] = field(default_factory=list)  # the nearest gallery cases, most similar first
                                       # (gallery.NEIGHBOURS; empty for an unknown image or no gallery)


@dataclass
class Prepared:
    """A checked image as the model's input: one view, or its tiles."""
    x: torch.Tensor                    # n×C×H×W, normalised, on the device
    size: tuple[int, int]              # the image's height and width
    boxes: list[Box] | None = None     # the tiles' boxes; None: the whole image
    image: np.ndarray | None = None    # the RGB image, kept when a heat-map will need it


class Predictor:
    """A loaded network (a model, or an Ensemble: ensemble.py) and its spec (spec.py: task,
    classes, input size, normalisation, the decision rule), read once from the model folder's
    config.json. `model` is the primary model: the one the heat-map explains."""

    def __init__(self, model: torch.nn.Module | Ensemble, spec: ModelSpec, folder: str | Path | None = None,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        net = model if isinstance(model, Ensemble) else Ensemble([model])
        # channels_last: about twice the CPU throughput of the default layout for B0
        self.net = net.to(self.device, memory_format=torch.channels_last).eval()
        self.model = self.net.primary
        for p in self.net.parameters():  # Grad-CAM needs gradients of activations only
            p.requires_grad_(False)
        self.spec = spec
        self.folder = Path(folder) if folder is not None else None  # the card and plots live there
        self.task, self.codes, self.rule = spec.task, list(spec.codes), spec.rule
        self._transform = eval_transform(spec.input_size)
        self.layer = last_stage(self.model)
        self.check = InputCheck.load(self.folder, spec.config) if self.folder is not None else None
        self.gallery = (Gallery.load(self.folder, self.codes, self.check.gallery if self.check else None)
                        if self.folder is not None else None)
        tapped = self.check is not None or self.gallery is not None
        self._tap = self.net.tap(list(self.check.stages) if self.check else []) if tapped else None

    def _recording(self):
        """Record the features of the passes inside (for the input check)."""
        return self._tap.recording() if self._tap else nullcontext()

    def _features(self, last: bool = False) -> dict[str, torch.Tensor] | None:
        """The features of the passes since the last call, inside `_recording` (FeatureTap.take)."""
        return self._tap.take(last) if self._tap else None

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, device: str = "cpu",
                        task: str | None = None) -> "Predictor":
        """`source`: a model folder, a Hub repo id ("user/name", cached copies work offline), or
        None for the bundled model of `task` (the default task when None)."""
        folder = Path(source) if source is not None else get_task(task).model_folder
        if source is not None and not folder.exists() and looks_like_repo_id(str(source)):
            folder = download(str(source))
        net, spec = load_ensemble(folder)
        return cls(net, spec, folder=folder, device=device)

    def to_batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Checked RGB arrays → the model's normalised input batch (resized as in training)."""
        batch = torch.stack([self._transform(image=rgb)["image"] for rgb in images]).to(self.device)
        return normalize(batch, self.spec.mean, self.spec.std).contiguous(memory_format=torch.channels_last)

    def prepare(self, image: ImageInput, tile: bool | None = None, keep_image: bool = False) -> Prepared:
        """Check and decode `image`, and make the model's input: its tiles when tiling is on
        (None: the task's default) and the image is long enough, else the whole image. The
        decoded image is dropped unless `keep_image`: a batch holds only model inputs."""
        rgb = load_image(image)
        height, width = rgb.shape[:2]
        tiled = self.task.tile_large_images if tile is None else tile
        boxes = checked_boxes(width, height) if tiled and worth_tiling(width, height) else None
        x = self.to_batch(crops(rgb, boxes) if boxes else [rgb])
        return Prepared(x, (height, width), boxes, rgb if keep_image else None)

    def analyse(self, image: ImageInput, *, target: str | None = None, method: str | None = GRAD_CAM,
                tile: bool | None = None) -> Analysis:
        """The answer for one image and the heat-map of `method` (None: no heat-map) for `target`
        (None: the decided class); a long image by its tiles (`prepare`), with a stitched
        Grad-CAM map. InputError for a bad image, class or method."""
        if target is not None and target not in self.codes:
            raise InputError(f"unknown class {target!r}; choose one of {', '.join(self.codes)}")
        if method is not None and method not in METHODS:
            raise InputError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
        prepared = self.prepare(image, tile, keep_image=True)
        if method is None:
            return replace(self.analyse_many([prepared])[0], image=prepared.image)
        found: dict = {}

        def explained(logits: torch.Tensor) -> int:  # the answer, decided once, picks the class to explain
            if "answer" not in found:  # one model and view: the heat-map's own pass answers
                found["answer"] = self._answer(prepared, logits, self._features(last=True))
            return self.codes.index(target or found["answer"].decided)

        with self._recording():
            chosen = explained
            if not self.net.single:  # the ensemble answers first; the heat-map explains the primary
                with torch.inference_mode():
                    found["answer"] = self._answer(prepared, self._logits(prepared.x), self._features(last=True))
                chosen = explained(None)
            if prepared.boxes is None:
                attribution, _, index = attribution_map(self.model, self.layer, prepared.x, method, chosen)
                heatmap = upsample_heatmap(attribution, prepared.size)
            else:
                method, cams, index = GRAD_CAM, *self._tile_cams(prepared.x, chosen)
                heatmap = stitched(cams, prepared.boxes, prepared.size)
        answer = found["answer"]
        return replace(answer, image=prepared.image, heatmap=heatmap, target=self.codes[index], method=method,
                       verdict=self._verdict(answer, method))

    @torch.inference_mode()
    def analyse_many(self, prepared: Sequence[Prepared]) -> list[Analysis]:
        """Analyses without heat-maps: the whole images in one forward pass, each tiled image
        in passes of TILE_CHUNK tiles."""
        whole = [p for p in prepared if p.boxes is None]
        answers, row = [], 0
        with self._recording():
            logits = self.net(torch.cat([p.x for p in whole])) if whole else None
            features = self._features()
            for p in prepared:
                if p.boxes is None:
                    rows = {name: f[row:row + 1] for name, f in features.items()} if features else None
                    answers.append(self._answer(p, logits[row:row + 1], rows))
                    row += 1
                else:
                    answers.append(self._answer(p, self._logits(p.x), self._features()))
        return answers

    def _tile_cams(self, x: torch.Tensor, explained: int | Callable[[torch.Tensor], int]) -> tuple[torch.Tensor, int]:
        """Every tile's Grad-CAM of the class `explained` (an index, or what it picks from all
        tiles' logits: from the same pass when the tiles fit in one chunk, else the answer
        first, then the maps)."""
        if len(x) <= TILE_CHUNK:
            cams, _, index = grad_cam(self.model, self.layer, x, explained)
            return cams, index
        if isinstance(explained, int):
            index = explained
        else:
            with torch.inference_mode():
                index = explained(self._logits(x))
        return torch.cat([grad_cam(self.model, self.layer, chunk, index)[0] for chunk in chunks(x)]), index

    def _answer(self, prepared: Prepared, logits: torch.Tensor, features: dict[str, torch.Tensor] | None) -> Analysis:
        """One image's logits and features (one row, or one per tile) → the input check,
        calibrated probabilities, the decided class (the only place it is decided), the
        prediction set and the verdict. A tiled image answers with its worst tile, checked as
        that tile (the part the answer is about)."""
        probs = self.rule.probabilities(logits.detach().float().cpu().numpy())
        worst = worst_tile(probs)
        probabilities = {code: float(p) for code, p in zip(self.codes, probs[worst])}
        decided = self.codes[int(self.rule.decide(probs[worst]))]
        members = self.rule.prediction_set(probs[worst])
        answer = Analysis(prepared.image, probabilities, decided, Verdict("", "", ""),
                          prediction_set=[c for c, inside in zip(self.codes, members) if inside],
                          region=prepared.boxes[worst] if prepared.boxes else None, tiles=len(prepared.boxes or ()))
        if self.check is not None and features is not None:
            score = float(self.check.scores(features)[worst])
            answer = replace(answer, known=score <= self.check.threshold, check_score=score,
                             check_threshold=self.check.threshold)
        if self.gallery is not None and features is not None and answer.known:
            answer = replace(answer, similar=self.gallery.nearest(features[POOLED][worst]))
        return replace(answer, verdict=self._verdict(answer, None))

    def _verdict(self, answer: Analysis, method: str | None) -> Verdict:
        if not answer.known:
            return not_known(self.task, answer.check_score, answer.check_threshold)
        verdict = self.task.verdict(answer.probabilities, answer.decided, answer.prediction_set, self.rule,
                                    self.task, method)
        if answer.region is None:
            return verdict
        return replace(verdict, detail=f"{verdict.detail} {where(answer.region, answer.tiles)}")

    def similar(self, image: ImageInput, k: int = SHOWN, tile: bool | None = None) -> list[Case]:
        """The k training images of the reference gallery nearest to `image` in the model's feature
        space, most similar first, each with its class, similarity, confirmation and thumbnail;
        none for an image that fails the input check, or a model without a gallery."""
        analysis = self.analyse(image, method=None, tile=tile)
        return [self.gallery.case(n) for n in analysis.similar[:k]] if self.gallery else []

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The answering network's logits of a stack of views or tiles, in passes of TILE_CHUNK."""
        return torch.cat([self.net(chunk) for chunk in chunks(x)])

    @torch.inference_mode()
    def predict(self, image: ImageInput) -> dict[str, float]:
        """Calibrated probability of every class (summing to 1) of the whole image."""
        probs = self.rule.probabilities(self.net(self.to_batch([load_image(image)])).float().cpu().numpy())[0]
        return {code: float(p) for code, p in zip(self.codes, probs)}
