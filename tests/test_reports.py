"""Zoo per-tool reports and the HTML report, on a real ranking of demo-zoo packages."""

from __future__ import annotations

import json
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.outputs.reports import write_html_report
from bioimage_cte.outputs.zoo_reports import merge_tool_reports, publishable, write_zoo_reports, zoo_tool_report

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "resources" / "zoo"
DSB = ROOT / "resources" / "data" / "dsb2018"
RANKED = ("nuclei-small-bright", "weak-nuclei-tiny", "nuclei-dim-blurry")
CHROMIUM = Path("/usr/bin/chromium")
REPORT_KEYS = {"status", "score", "error", "details", "badge", "links"}


@pytest.fixture(scope="module")
def ranked(tmp_path_factory) -> dict:
    """A real CTE ranking and evaluation of three demo packages on two labelled DSB images."""
    from bioimage_cte.cte.estimators import CTEDropout, MeanConfidence
    from bioimage_cte.predict.images import load_labels
    from bioimage_cte.run.evaluation import evaluate_rankings
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.ranking import build_ranking, ranking_json
    from bioimage_cte.run.scoring import rank_models
    from bioimage_cte.zoo.sources import find_models

    images = sorted((DSB / "images").glob("*.tif"))[:2]
    labels = load_labels(images, str(DSB / "labels"))
    options = RankOptions()
    estimators = [CTEDropout(), MeanConfidence()]
    sources = find_models([str(ZOO / f"{name}.zip") for name in RANKED])
    results, failures = rank_models(sources, images, estimators, options, labels=labels)
    ranking = ranking_json(build_ranking(results, estimators[0], failures=failures), options,
                           images=str(DSB / "images"), n_images=len(images))
    evaluation = evaluate_rankings(results, estimators, failures=failures, n_permutations=50, n_boot=20)
    return {"ranking": ranking, "evaluation": evaluation.to_json_dict(), "images": images,
            "tmp": tmp_path_factory.mktemp("reports")}


def test_tool_report_shape_for_passed_failed_and_not_applicable():
    passed = zoo_tool_report({"name": "m", "score": 0.83, "rank": 2, "n_images": 4}, target="dsb2018", n_models=8,
                             estimator="cte-dropout", settings={"p": 0.2})
    assert set(passed) == REPORT_KEYS
    assert passed["status"] == "passed" and passed["score"] == 0.83 and passed["error"] is None
    assert passed["details"] == {"dsb2018": {"score": 0.83, "rank": 2, "n_models": 8, "n_images": 4,
                                             "estimator": "cte-dropout", "settings": {"p": 0.2}}}
    assert passed["badge"]["label"] == "CTE rank 2/8"
    assert all(passed["badge"][k].startswith("https://") for k in ("icon", "url"))
    crashed = zoo_tool_report({"name": "m", "source": "m.zip", "stage": "predict", "reason": "NaN output"},
                              target="dsb2018", n_models=8, estimator="cte-dropout")
    assert (crashed["status"], crashed["score"], crashed["error"], crashed["badge"]) == ("failed", 0.0, "NaN output",
                                                                                        None)
    no_greybox = zoo_tool_report({"name": "m", "source": "m.zip", "stage": "cte-dropout", "reason": "no state dict"},
                                 target="dsb2018", n_models=8, estimator="cte-dropout")
    assert no_greybox["status"] == "not-applicable"
    empty = zoo_tool_report({"name": "m", "score": None, "rank": 8, "note": "no foreground"}, target="t",
                            n_models=8, estimator="cte-dropout")
    assert (empty["status"], empty["score"], empty["error"]) == ("failed", 0.0, "no foreground")
    # an estimator whose scores are not in [0, 1] is reported by rank
    entropy = zoo_tool_report({"name": "m", "score": -0.4, "rank": 3, "n_images": 4}, target="t", n_models=5,
                              estimator="entropy")
    assert entropy["score"] == 0.5 and entropy["details"]["t"]["score"] == -0.4
    for report in (passed, crashed, no_greybox, empty, entropy):
        assert 0.0 <= report["score"] <= 1.0
        json.dumps(report, allow_nan=False)


def test_merging_targets():
    a = zoo_tool_report({"name": "m", "score": 0.9, "rank": 3, "n_images": 4}, target="a", n_models=4,
                        estimator="cte-dropout", links=["x"])
    b = zoo_tool_report({"name": "m", "score": 0.7, "rank": 1, "n_images": 4}, target="b", n_models=4,
                        estimator="cte-dropout", links=["x", "y"])
    c = zoo_tool_report({"name": "m", "stage": "predict", "reason": "crashed"}, target="c", n_models=4,
                        estimator="cte-dropout")
    merged = merge_tool_reports([a, b, c])
    assert set(merged) == REPORT_KEYS and set(merged["details"]) == {"a", "b", "c"}
    assert merged["status"] == "passed" and merged["score"] == pytest.approx((0.9 + 0.7 + 0.0) / 3)
    assert merged["error"] == "c: crashed" and merged["links"] == ["x", "y"]
    assert merged["badge"]["label"] == "CTE best rank 1/4 (3 targets)"
    assert merge_tool_reports([c])["status"] == "failed"


@pytest.mark.slow
def test_zoo_reports_layout(ranked, tmp_path):
    ranking = ranked["ranking"]
    # one package with a zoo id and version in its RDF: those name its folder
    folder = tmp_path / "pkg"
    with zipfile.ZipFile(ZOO / "nuclei-small-bright.zip") as zf:
        zf.extractall(folder)
    rdf = folder / "rdf.yaml"
    rdf.write_text(rdf.read_text().replace("type: model\n", "type: model\nid: affable-shark\nversion: 1.2\n"))
    second = json.loads(json.dumps(ranking))
    second["models"][0]["source"] = str(folder)
    second["failures"] = [{"name": "broken", "source": str(tmp_path / "broken.zip"), "stage": "predict",
                           "reason": "not a valid zip"}]
    out = tmp_path / "site"
    written = write_zoo_reports({"dsb2018": ranking, "dsb-copy": second}, out, tool_version="0.1.0")
    relative = sorted(str(p.relative_to(out)) for p in written)
    names = [m["name"] for m in ranking["models"]]
    expected = {f"reports/{n}/1/reports/bioimage-cte_0.1.0.json" for n in names}
    expected |= {"reports/affable-shark/1.2/reports/bioimage-cte_0.1.0.json",
                 "reports/broken/1/reports/bioimage-cte_0.1.0.json",
                 "rankings/dsb2018.json", "rankings/dsb-copy.json"}
    assert set(relative) == expected and len(relative) == len(expected)
    top = json.loads((out / f"reports/{names[0]}/1/reports/bioimage-cte_0.1.0.json").read_text())
    assert set(top) == REPORT_KEYS and list(top["details"]) == ["dsb2018"]
    assert top["details"]["dsb2018"]["rank"] == 1 and top["badge"]["label"] == f"CTE rank 1/{len(names)}"
    both = json.loads((out / f"reports/{names[1]}/1/reports/bioimage-cte_0.1.0.json").read_text())
    assert list(both["details"]) == ["dsb2018", "dsb-copy"] and both["status"] == "passed"
    broken = json.loads((out / "reports/broken/1/reports/bioimage-cte_0.1.0.json").read_text())
    assert broken["status"] == "failed" and broken["score"] == 0.0 and "not a valid zip" in broken["error"]
    # the published copy: the same ranking, its packages named relative to the zoo, no local folder
    published = json.loads((out / "rankings/dsb2018.json").read_text())
    assert published == publishable(ranking, str(ZOO)) and str(ROOT) not in json.dumps(published)
    assert [m["source"] for m in published["models"]] == [f"{m['name']}.zip" for m in ranking["models"]]
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(BioimageCteError, match="'0.1_0' is not allowed"):
        write_zoo_reports({"dsb2018": ranking}, tmp_path / "x", tool_version="0.1_0")
    with pytest.raises(BioimageCteError, match="target name '../up' cannot be a file name"):
        write_zoo_reports({"../up": ranking}, tmp_path / "x", tool_version="0.1.0")
    assert not (tmp_path / "x").exists()


def _chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={user_data}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.slow
def test_html_report_is_self_contained_and_renders(ranked):
    from bioimage_cte.run.overlays import report_overlays

    tmp = ranked["tmp"]
    ranking = ranked["ranking"]
    moved = json.loads(json.dumps(ranking))
    overlays = report_overlays(ranking, ranked["images"], n_images=2, n_models=1)
    assert len(overlays["indices"]) == 2 and not overlays["errors"]
    # what the overlays show is what the score measures: the better model disagrees less with itself
    shown = [m["name"] for m in ranking["models"] if m["name"] in overlays["models"]]
    disagreement = [np.mean([d[(c.foreground > 0.5) | (p.foreground > 0.5)].mean()
                             for _, c, p, d in overlays["models"][name]]) for name in shown]
    assert disagreement == sorted(disagreement), (shown, disagreement)
    path = write_html_report(ranking, tmp / "report.html", image_paths=ranked["images"],
                             evaluation_json=ranked["evaluation"], overlays=overlays)
    page = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing loads from outside
    assert "<link" not in page and "@import" not in page and "<script" not in page
    for model in ranking["models"]:
        assert f"<td>{model['name']}</td>" in page
    assert page.count("<img ") == 5  # chart, per-image scores, best and worst model, agreement scatter
    for model in moved["models"]:
        model["source"] = f"nowhere/{model['name']}.zip"  # a moved package is reported on the page, not raised
    moved_overlays = report_overlays(moved, ranked["images"], n_images=1, n_models=1)
    assert set(moved_overlays["errors"]) == {m["name"] for m in (moved["models"][0], moved["models"][-1])}
    without = write_html_report(moved, tmp / "moved.html", image_paths=ranked["images"], overlays=moved_overlays)
    assert without.read_text().count("could not run") == 2 and without.read_text().count("<img ") == 2

    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` to check the rendering")
        pytest.skip(f"{CHROMIUM} not installed")
    # The test's copy may run one inline script, which reports every image's decoded width in the title;
    # the page's own policy still allows data: images only.
    probe = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';").replace(
        "</body>", "<script>addEventListener('load', () => { document.title = 'IMAGES ' + JSON.stringify("
                   "Array.from(document.images, i => i.complete ? i.naturalWidth : -1)); });</script></body>")
    (tmp / "probe.html").write_text(probe)
    dom = _chromium("--dump-dom", f"file://{tmp / 'probe.html'}", user_data=tmp / "chromium-dom")
    title = re.search(r"<title>IMAGES (\[.*?\])</title>", dom.stdout)
    assert title, dom.stderr[-2000:]
    widths = json.loads(title.group(1))
    assert len(widths) == 5 and all(w > 100 for w in widths), widths
    rows = re.findall(r"<tr>\s*<td class=\"num\">", dom.stdout)
    assert len(rows) == len(ranking["models"])  # the ranking table survived parsing
    shot = _chromium("--screenshot=" + str(tmp / "report.png"), "--window-size=1400,3000",
                     f"file://{path}", user_data=tmp / "chromium-shot")
    assert (tmp / "report.png").stat().st_size > 50_000, shot.stderr[-2000:]


def test_html_report_renders_hand_made_overlays_without_a_model(tmp_path):
    """The report only renders: a ranking and overlays built by hand need no model."""
    from bioimage_cte.cte.consistency import disagreement_map
    from bioimage_cte.predict.segmentation import Prediction

    images = sorted((DSB / "images").glob("*.tif"))[:2]
    ranking = {
        "models": [
            {"name": "best", "source": "best.zip", "score": 0.9, "rank": 1, "n_images": 2, "n_valid": 2,
             "n_empty": 0, "per_image": [0.85, 0.95], "note": "", "interval": [0.85, 0.95]},
            {"name": "worst", "source": "worst.zip", "score": None, "rank": 2, "n_images": 2, "n_valid": 0,
             "n_empty": 2, "per_image": [None, None], "note": "no foreground predicted", "interval": [None, None]},
        ],
        "failures": [{"name": "broken", "source": "broken.zip", "stage": "predict", "reason": "not a <zip>"}],
        "settings": {"estimator": "cte-dropout", "strength": 0.2, "seed": 0, "n_images": 2},
    }
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    clean = Prediction((image > 0.5).astype(np.float32))
    perturbed = Prediction((image > 0.6).astype(np.float32))
    overlays = {"indices": [1], "perturbation": "dropout", "consistency": "soft", "captions": {1: "with dropout"},
                "summary": "cte-dropout zeroes whole feature maps with probability p = 0.2 at the bottleneck",
                "models": {"best": [(image, clean, perturbed, disagreement_map(clean.foreground,
                                                                                 perturbed.foreground))]},
                "errors": {"worst": "moved away"}}
    page = write_html_report(ranking, tmp_path / "r.html", image_paths=images, overlays=overlays).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page
    assert page.count("<img ") == 3  # chart, per-image scores, the best model's overlay
    assert "could not run worst again: moved away" in page
    assert "<td>best</td>" in page and "<td>worst</td>" in page and "not a &lt;zip&gt;" in page
    assert "zeroes whole feature maps with probability p = 0.2" in page
    assert "1 - effective invariance" in page and "spread of the median over only 2 images" in page
    plain = write_html_report(ranking, tmp_path / "plain.html", image_paths=images).read_text()
    assert plain.count("<img ") == 2 and "Predictions of the best" not in plain  # no overlays given, none shown


def test_report_failures_are_one_line(tmp_path):
    with pytest.raises(BioimageCteError, match="has no 'models'"):
        write_html_report({"oops": 1}, tmp_path / "r.html", image_paths=[])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ranking = {"models": [], "failures": [], "settings": {"estimator": "cte-dropout"}}
    with pytest.raises(BioimageCteError, match=f"cannot write {blocker}/sub/r.html"):
        write_html_report(ranking, blocker / "sub" / "r.html", image_paths=[])
    assert blocker.read_text() == "x"


@pytest.mark.slow
def test_the_default_report_draws_the_perturbed_pass_and_a_disagreement_that_differs(tmp_path):
    """The default estimator (tta+consensus) perturbs: its report shows the rotated prediction mapped back and the
    per-pixel disagreement, non-empty for the best and the worst model of a demo ranking, and different between them."""
    from bioimage_cte.run.overlays import report_overlays
    from bioimage_cte.run.pipeline import rank

    images = sorted((DSB / "images").glob("*.tif"))[:2]
    run = rank([ZOO / f"{name}.zip" for name in ("nuclei-versatile", "weak-nuclei-tiny", "nuclei-boundaries")],
               images)
    ranking = run.to_json_dict()
    assert ranking["settings"]["estimator"] == "tta+consensus"
    overlays = report_overlays(ranking, images, n_images=2, n_models=1)
    assert overlays["perturbation"] == "dihedral" and overlays["consistency"] == "hard" and not overlays["errors"]
    assert set(overlays["captions"].values()) == {"rot90, mapped back"}
    best, worst = ranking["models"][0]["name"], ranking["models"][-1]["name"]
    assert list(overlays["models"]) == [best, worst]
    maps = {name: np.stack([d for *_, d in overlays["models"][name]]) for name in (best, worst)}
    for name, disagreement in maps.items():
        assert disagreement.max() == 1.0 and set(np.unique(disagreement)) == {0.0, 1.0}, name  # masks differ: 1
    assert not np.array_equal(maps[best], maps[worst])
    page = write_html_report(ranking, tmp_path / "r.html", image_paths=images, overlays=overlays).read_text()
    assert "uses no perturbation" not in page and "compares no perturbed prediction" not in page
    assert "tta+consensus scores each image by tta (flipped and rotated: rot90, rot180, left-right flip" in page
    assert "combined into the image&#x27;s predicted Dice" in page  # html-escaped apostrophe
    assert page.count("<img ") == 4  # chart, per-image scores, the best and the worst model
