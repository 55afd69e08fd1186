"""The zoo leaderboard page: what it says about every model on every target, and that a browser renders it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.outputs.leaderboard import leaderboard_rows, read_rankings, target_summaries, write_leaderboard

CHROMIUM = Path("/usr/bin/chromium")


def _ranking(target: str, scores: dict[str, float | None], *, unfit: dict[str, str] | None = None,
             failed: dict[str, str] | None = None, saturated: tuple[str, ...] = (), tied: int = 1,
             warnings: tuple[str, ...] = ()) -> dict:
    """A ranking JSON as zoo-rank writes it (the fields the leaderboard reads)."""
    order = sorted(scores, key=lambda n: (scores[n] is None, -(scores[n] or 0.0)))
    models = [{"name": n, "source": f"zoo/{n}.zip", "score": scores[n], "rank": r, "tied_with_top": r <= tied,
               "foreground_fraction": 0.98 if n in saturated else 0.2, "note": "", "n_images": 4,
               "weights": {"format": "pytorch_state_dict"}} for r, n in enumerate(order, start=1)]
    return {"models": models,
            "failures": [{"name": n, "source": f"zoo/{n}.zip", "stage": "predict", "reason": r}
                         for n, r in (failed or {}).items()],
            "not_fitting": [{"model": n, "source": f"zoo/{n}.zip", "reason": r} for n, r in (unfit or {}).items()],
            "warnings": list(warnings), "settings": {"estimator": "tta"}, "target": {"name": target}}


def _small() -> dict[str, dict]:
    return {
        "dsb2018": _ranking("dsb2018", {"a": 0.95, "b": 0.90, "c": 0.60}, unfit={"d3": "3D model on 2D images"},
                            failed={"broken": "not a valid zip"}, tied=2),
        "tiny": _ranking("tiny", {"a": 0.70, "b": 0.99, "c": None}, unfit={"d3": "3D model on 2D images"},
                         saturated=("b",)),
        "stacks": _ranking("stacks", {"a": 0.8, "d3": 0.9}, warnings=("the candidates mix 3D models and 2D models",)),
    }


def test_rows_cells_and_flags_of_a_small_run(tmp_path):
    rankings = _small()
    rows = leaderboard_rows(rankings, read_tags=False)
    by_name = {r.name: r for r in rows}
    assert set(by_name) == {"a", "b", "c", "d3", "broken"} and all(len(r.cells) == 3 for r in rows)
    a, b = by_name["a"], by_name["b"]
    assert [c.rank for c in a.cells] == [1, 2, 2] and a.cells[0].tied_with_top and not a.cells[1].tied_with_top
    assert b.cells[1].saturated and b.cells[1].flags() == ["~top", "fg 98 %"]
    assert a.mean_position == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert [c.status for c in by_name["d3"].cells] == ["unfit", "unfit", "ranked"]
    assert [c.status for c in by_name["broken"].cells] == ["failed", "absent", "absent"]
    assert by_name["c"].cells[1].status == "unscored" and rows[-1].name == "broken"  # ranked nowhere: last

    rankings["dsb2018"]["models"][0] |= {"predicted_dice": 0.8234, "predicted_dice_interval": [0.7488, 0.8981]}
    (dsb, tiny, stacks) = target_summaries(rankings)
    assert dsb.best_dice == "Dice 0.82 (0.75-0.90)" and tiny.best_dice == ""
    assert (dsb.n_ranked, dsb.n_unfit, dsb.n_failed) == (3, 1, 1)
    assert dsb.top == ((1, "a", 0.95, ("~top",)), (2, "b", 0.90, ("~top",)), (3, "c", 0.60, ()))
    assert tiny.top[0] == (1, "b", 0.99, ("~top", "fg 98 %")) and tiny.top[2][3] == ("no score",)
    assert stacks.flags == ("mixed 2D/3D",) and dsb.flags == ()

    page = write_leaderboard(rankings, tmp_path / "board.html", links={"dsb2018": "targets/dsb2018.html"}).read_text()
    assert page.count("<tr class='model'") == 5 and len(re.findall(r"<td class='cell ", page)) == 15
    assert "targets/dsb2018.html" in page and "does not fit d3: 3D model on 2D images" in page
    assert "failed broken: not a valid zip" in page and "⚠ b marks 98 % of the pixels as foreground" in page
    assert "the candidates mix 3D models and 2D models" in page
    assert page.count("<article class='card'") == 5
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing loads from outside


def test_a_folder_of_rankings_is_read_by_target(tmp_path):
    for name, ranking in _small().items():
        (tmp_path / f"{name}.json").write_text(json.dumps(ranking))
    assert list(read_rankings(tmp_path)) == ["dsb2018", "stacks", "tiny"]
    (tmp_path / "notes.json").write_text("[1, 2]")
    with pytest.raises(BioimageCteError, match="notes.json is not a ranking"):
        read_rankings(tmp_path)
    with pytest.raises(BioimageCteError, match=f"no ranking JSON in {tmp_path / 'empty'}"):
        read_rankings(tmp_path / "empty")


def synthetic_zoo(n_models: int, n_targets: int, seed: int = 0) -> dict[str, dict]:
    """Rankings of ``n_models`` models on ``n_targets`` targets with every kind of cell (seeded)."""
    rng = np.random.default_rng(seed)
    rankings = {}
    for t in range(n_targets):
        scores, unfit, failed = {}, {}, {}
        for m in range(n_models):
            name = f"model-{m:03d}-{'unet' if m % 2 else 'resnet-encoder-decoder-long-name'}"
            draw = rng.random()
            if draw < 0.15:
                unfit[name] = "3D model (input axes zyx) but the image is 2D"
            elif draw < 0.18:
                failed[name] = "the model crashed"
            else:
                scores[name] = round(float(rng.uniform(0.4, 1.0)), 4)
        rankings[f"target-{t:02d}-{'nuclei' if t % 2 else 'cells-brightfield-large'}"] = _ranking(
            f"t{t}", scores, unfit=unfit, failed=failed, tied=2, saturated=tuple(list(scores)[:2]))
    return rankings


def chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={user_data}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


#: Run after the page's own script: filter by a tag, sort by the first target, and report what the browser laid out.
PROBE = """<script>addEventListener('load', () => {
  const root = document.documentElement;
  const report = {width: root.scrollWidth, client: root.clientWidth,
                  rows: document.querySelectorAll('tr.model').length,
                  cells: document.querySelectorAll('td.cell').length,
                  cards: document.querySelectorAll('article.card').length};
  document.querySelectorAll('table.board thead th')[2].click();
  report.first = Array.from(document.querySelectorAll('tr.model'), r => r.cells[2].dataset.v).slice(0, 3);
  const tag = document.getElementById('tag');
  tag.value = Array.from(tag.options).some(o => o.value === 'cells') ? 'cells' : '';
  tag.dispatchEvent(new Event('change'));
  report.filtered = Array.from(document.querySelectorAll('tr.model')).filter(r => !r.hidden).length;
  report.tag = tag.value;
  document.title = 'PROBE ' + JSON.stringify(report);
});</script></body>"""


def render(page: Path, tmp: Path, *, size: str = "1280,900") -> dict:
    """What headless Chromium laid out for ``page`` (a copy that runs :data:`PROBE`), and a screenshot."""
    probe = tmp / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE))
    dom = chromium(f"--window-size={size}", "--dump-dom", f"file://{probe}", user_data=tmp / "chromium-dom")
    found = re.search(r"<title>PROBE (\{.*?\})</title>", dom.stdout)
    assert found, dom.stderr[-2000:]
    shot = chromium(f"--window-size={size}", f"--screenshot={tmp / 'board.png'}", f"file://{page}",
                    user_data=tmp / "chromium-shot")
    assert (tmp / "board.png").stat().st_size > 30_000, shot.stderr[-2000:]
    return json.loads(found.group(1))


@pytest.mark.slow
def test_200_models_by_20_targets_render_without_horizontal_overflow(tmp_path):
    """The largest zoo the page is made for, in a real browser: every row and cell laid out, nothing wider than the
    window, sorting and the tag filter work (marked slow: a browser start, not a model)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (scripts/test.sh installs it: apt-get install chromium)")
    rankings = synthetic_zoo(200, 20)
    tags = {f"model-{m:03d}-{kind}": ["segmentation", "nuclei" if m % 3 else "cells"]
            for m in range(200) for kind in ("unet", "resnet-encoder-decoder-long-name")}
    rows = leaderboard_rows(rankings, tags=tags)
    page = write_leaderboard(rankings, tmp_path / "board.html", tags=tags)
    seen = render(page, tmp_path)
    assert (seen["rows"], seen["cells"], seen["cards"]) == (200, 200 * 20, 200), seen
    assert seen["width"] <= seen["client"], seen  # no horizontal overflow at 1280 px
    first = [float(v) for v in seen["first"]]  # sorted by the first target: its top model first
    assert first[0] == 1.0 and first == sorted(first, reverse=True), seen
    # the tag filter keeps exactly the models with the tag
    assert seen["tag"] == "cells" and seen["filtered"] == sum("cells" in r.tags for r in rows) == 67


def test_a_model_ranked_only_without_a_score_gets_a_card(tmp_path):
    rankings = {"stacks": _ranking("stacks", {"a": 0.8, "empty-3d": None})}
    page = write_leaderboard(rankings, tmp_path / "board.html").read_text()
    card = page[page.index("id='card-empty-3d'"):]
    assert "2/2</td><td>n/a" in card and "best: rank" not in card[:card.index("</article>")]
