"""Inference benchmark: python -m benchmarks.inference [--model DIR] [--runs 50] [--clients 16] [--engine torch]

Prints a Markdown table, medians over --runs after warm-up, on whatever machine runs it:
a plain forward pass of the primary model and of the answering network (`model(x)`, `net(x)`: the
same unless the folder names an ensemble, skinlesion/models/ensemble.py; eval mode under inference_mode,
the Predictor's own modules and input, so the same size, layout and threads), `Predictor.analyse` without a heat-map
(image in → input check, probabilities, decided class, prediction set, verdict, nearest
gallery cases; and the same without the check and the gallery, for their cost), the similar
cases the page shows (gallery search and thumbnails), and with Grad-CAM (against the analysis
without a map: the map backpropagates the answer's own pass), the
batch path of `python -m skinlesion predict`
(files in → CSV rows; images/s at the model's input size and at 224 px), the slower
explanation methods (Integrated Gradients, Occlusion: seconds per image), the app's cold
start (process start → first /classify answer through gradio_client), its peak RSS after a
corpus of odd files went through /classify, and --clients concurrent /classify requests.
The analyses run on --engine (default torch: PyTorch's figures; the engines side by side:
python -m benchmarks.engines); the app runs as served (the folder's engine).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skinlesion import Predictor
from skinlesion.batch import BATCH_SIZE, batch_rows, expand
from skinlesion.explain import METHODS
from skinlesion.transforms import model_input
from skinlesion.trust.gallery import CASES_SHOWN, NEIGHBOURS

from .served import ROOT, memory_mb, running_app

SAMPLE = ROOT.parent / "shared" / "data" / "ham10000" / "images" / "ISIC_0024306.jpg"


def medians(functions: dict, runs: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds of each function, run in turn (round-robin), so that a slow patch of
    the machine weighs on all of them alike instead of on whichever ran then."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(runs):
        for name, fn in functions.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def sample_image(folder: Path) -> Path:
    """A real HAM10000 image when the data is here, else a synthetic 200×150 one."""
    if SAMPLE.is_file():
        return SAMPLE
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(150, 30, (150, 200, 3)), 0, 255).astype(np.uint8)
    path = folder / "sample.jpg"
    Image.fromarray(image).save(path)
    return path


def odd_files(folder: Path, image: Path) -> list[Path]:
    """25 files a public app meets: modes, sizes, formats, damage."""
    rgb = np.asarray(Image.open(image).convert("RGB"))
    big = np.asarray(Image.fromarray(rgb).resize((4000, 3000)))
    variants = {"rgba.png": Image.fromarray(rgb).convert("RGBA"), "grey.png": Image.fromarray(rgb).convert("L"),
                "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"), "palette.gif": Image.fromarray(rgb).convert("P"),
                "i16.png": Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)), "big.jpg": Image.fromarray(big),
                "tall.png": Image.fromarray(np.concatenate([rgb] * 6, axis=0)),
                "tiny.png": Image.fromarray(rgb[:20, :20]),
                "webp.webp": Image.fromarray(rgb), "bmp.bmp": Image.fromarray(rgb), "tiff.tif": Image.fromarray(rgb)}
    paths = []
    for name, picture in variants.items():
        picture.save(folder / name)
        paths.append(folder / name)
    data = (folder / "big.jpg").read_bytes()
    for i, cut in enumerate((0.1, 0.5, 0.9)):
        (folder / f"truncated{i}.jpg").write_bytes(data[:int(len(data) * cut)])
        paths.append(folder / f"truncated{i}.jpg")
    (folder / "text.jpg").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    paths += [folder / "text.jpg", folder / "empty.png"]
    while len(paths) < 25:
        paths.append(paths[len(paths) % 11])
    return paths


def app_benchmark(image: Path, model: str | None, clients: int, corpus: list[Path]) -> dict:
    from gradio_client import Client, handle_file

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temp, running_app(Path(temp), SKINLESION_MODEL=model or "") as (url, process):
        client = Client(url, verbose=False)
        client.predict(handle_file(image), api_name="/classify")
        cold_start = time.perf_counter() - started
        for path in corpus:
            try:
                client.predict(handle_file(path), api_name="/classify")
            except Exception:  # the bad ones are refused with a message: that is the point
                pass

        def one_request(_):
            t = time.perf_counter()
            try:
                Client(url, verbose=False).predict(handle_file(image), api_name="/classify")
                return True, time.perf_counter() - t
            except Exception:
                return False, time.perf_counter() - t

        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one_request, range(clients)))
        latencies = sorted(t for ok, t in results if ok)
        return {"cold_start": cold_start, "rss": memory_mb(process.pid, "VmHWM"),
                "ok": sum(ok for ok, _ in results), "p50": np.percentile(latencies, 50) if latencies else float("nan"),
                "p95": np.percentile(latencies, 95) if latencies else float("nan")}


def batch_rate(predictor: Predictor, image: Path, size: int, folder: Path, n: int = 128) -> float:
    """Images per second of the command line's path (decode, batch, CSV rows) with the model
    run at `size` (the network takes any size; the Predictor resizes to it)."""
    from dataclasses import replace
    sized = Predictor(predictor.net, replace(predictor.spec, input_size=size), device=predictor.device)
    items = expand([image] * n)
    list(batch_rows(sized, items[:32]))  # warm-up
    started = time.perf_counter()
    rows = list(batch_rows(sized, items))
    assert len(rows) == n and not any(r["error"] for r in rows)
    return n / (time.perf_counter() - started)


def measure(predictor: Predictor, runs: int, clients: int, model: str | None) -> dict:
    """Every figure of the table, in seconds (rates in images/s), on a sample image."""
    with tempfile.TemporaryDirectory() as tmp:
        path = sample_image(Path(tmp))
        image = Image.open(path).convert("RGB")
        x = model_input([np.asarray(image)], predictor.spec)

        def forward(module):
            def run():
                with torch.inference_mode():
                    module.eval()(x)
            return run

        unchecked = Predictor(predictor.net, predictor.spec, device=predictor.device)  # no folder: no check
        pooled = predictor.trust.gallery.features[:1] if predictor.trust.gallery else None

        def similar_cases():  # the gallery search and the six thumbnails the page shows
            predictor.trust.cases(predictor.trust.gallery.nearest(pooled)[:CASES_SHOWN])

        times = medians({"forward": forward(predictor.primary), "net": forward(predictor.net),
                         "predict": lambda: predictor.analyse(image, method=None),
                         "unchecked": lambda: unchecked.analyse(image, method=None),
                         "explain": lambda: predictor.analyse(image),
                         **({"similar": similar_cases} if predictor.trust.gallery else {})}, runs)
        slow = medians({m: (lambda m=m: predictor.analyse(image, method=m)) for m in METHODS[1:]},
                       max(2, runs // 10), warmup=1)
        batch = {size: batch_rate(predictor, path, size, Path(tmp)) for size in (predictor.spec.input_size, 224)}
        app = app_benchmark(path, model, clients, odd_files(Path(tmp), path))
    return {**times, "slow": slow, "batch": batch, "app": app, "image": image.size}


def table_rows(predictor: Predictor, m: dict, clients: int) -> list[tuple[str, str, str]]:
    """The table: (measure, result, goal) per row."""
    forward, predict, explain = m["forward"], m["predict"], m["explain"]
    heatmap = explain - predict  # Grad-CAM backpropagates the answer's own pass: the head again, its backward, the map
    check = predict - m["unchecked"]
    answered, app = predictor.net.describe(predictor.spec.input_size), m["app"]
    return [
        ("plain forward pass of the primary model (`model(x)`, eval, inference_mode)", ms(forward), ""),
        (f"the answering network's pass (`net(x)`: {' + '.join(answered['models'])}; views "
         f"{' + '.join(answered['views'])})", ms(m["net"]), ""),
        ("analyse without a heat-map (image in → input check, probabilities, decided class, prediction set, "
         "verdict)", ms(predict), "p50 ≤ 60 ms"),
        ("input check's share of it (the same without the check and the gallery search)",
         f"{ms(check)} = {check / m['unchecked']:.0%} of {ms(m['unchecked'])}", "≤ 20 %"),
        (f"similar cases (the {NEIGHBOURS} nearest of the gallery, {CASES_SHOWN} thumbnails decoded)",
         ms(m["similar"]) if "similar" in m else "no gallery", "≤ 30 ms"),
        ("analyse with Grad-CAM", f"{ms(explain)} = {explain / predict:.2f} × analyse without a heat-map",
         "≤ 1.3 ×"),
        ("Grad-CAM's cost (analyse with − without a heat-map: the head again on the answer's own last-stage "
         "output, its backward pass, the map)",
         f"{ms(heatmap)} = {heatmap / forward:.2f} × the primary's forward", ""),
        *((f"{name} (image in → map and probabilities)", f"{seconds:.2f} s", "≤ 1.5 s")
          for name, seconds in m["slow"].items()),
        *((f"batch path (files → CSV rows, batches of {BATCH_SIZE}) at {s}×{s}", f"{rate:.0f} images/s",
           "≥ 40 images/s at 224" if s == 224 else "") for s, rate in m["batch"].items()),
        ("app cold start (process start → first /classify answer)", f"{app['cold_start']:.1f} s", "≤ 10 s"),
        ("app peak RSS (after 25 odd files through /classify)", f"{app['rss']:.0f} MB", "≤ 1.2 GB"),
        (f"{clients} concurrent /classify requests (gradio_client)",
         f"{app['ok']}/{clients} ok, p50 {ms(app['p50'])}, p95 {ms(app['p95'])}", f"{clients}/{clients}"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder or Hub repo id (default: the bundled model)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--engine", default="torch", help="the analyses' engine: torch (default), onnx or auto")
    args = p.parse_args(argv)
    predictor = Predictor.from_pretrained(args.model, engine=args.engine)
    measured = measure(predictor, args.runs, args.clients, args.model)
    size, (width, height) = predictor.spec.input_size, measured["image"]
    print(f"Model: {predictor.folder} ({predictor.spec.architecture}, {size}×{size}, engine {predictor.engine}); "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"medians of {args.runs} runs of each, taken in turn, after 5 warm-up rounds; "
          f"image {width}×{height}.\n")
    print("| measure | result | goal |\n|---|---|---|")
    for row in table_rows(predictor, measured, args.clients):
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
