"""The cohort report: figures, methods from config and model card, self-contained HTML that
a real browser renders; and the cohort rules under Snakemake, `--report` included."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from test_cohort_stage import command, gather, synth_cohort, write_pipeline
from test_workflow import check, copy_workflow, snakemake

from myoflow.cohort.figures import MONTAGE
from myoflow.cohort.report import ReportInputs, read_report_inputs, render_report
from myoflow.commands import analyse, plot, report

ROOT = Path(__file__).parents[2]
CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
)
CARD = {
    "config": {"architecture": "vnet", "in_channels": 2, "labels": ["iliopsoas"], "width": 0.5},
    "weights_sha256": "ab" * 32,
    "held_out": {"participants": 4, "dice": {"iliopsoas": {"n": 8, "mean": 0.912, "sd": 0.02}}},
}


def overlay(path: Path, value: int) -> None:
    """A stand-in overlay PNG (the QC stage draws the real ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((376, 1500, 3), value, dtype=np.uint8)  # an overlay's size
    image[100:250, 300:600] = (220, 40, 40)
    Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """60 participants gathered, analysed (with manual annotations), plotted, reported."""
    folder = tmp_path_factory.mktemp("report")
    phenotypes, truth = synth_cohort(folder / "synth", 60, seed=21)
    for column in [c for c in truth.columns if c.startswith("ff_") and c != "ff_muscle"]:
        # metrics.json has fat fractions per side (0-1); truth has them per muscle
        truth[f"{column}_left"], truth[f"{column}_right"] = truth[column], truth[column] + 0.002
    write_pipeline(folder, phenotypes, truth, excluded={"ukbb000003": ("convert", "corrupt_file")})
    assert gather(folder) == 0
    cohort = folder / "cohort"
    manual = truth[[c for c in truth.columns if c == "participant_id"]].iloc[:20].copy()
    manual["manual_vol_iliopsoas_total_ml"] = truth["vol_iliopsoas_total_ml"].iloc[:20] * 0.97
    manual.to_csv(folder / "manual.tsv", sep="\t", index=False)
    for pid in truth["participant_id"]:
        overlay(folder / "participants" / pid / "qc" / "overlay.png", 40)
    stats = json.dumps(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["stats"])
    assert (
        command(
            analyse,
            f"--participants={cohort / 'participants.tsv'}",
            f"--profiles={cohort / 'csa_profiles.tsv'}",
            f"--exclusions={cohort / 'exclusions.tsv'}",
            f"--manual={folder / 'manual.tsv'}",
            f"--stats={stats}",
            f"--out={cohort / 'tables'}",
        )
        == 0
    )
    assert (
        command(
            plot,
            f"--tables={cohort / 'tables'}",
            f"--participants={cohort / 'participants.tsv'}",
            f"--participants-dir={folder / 'participants'}",
            f"--stats={stats}",
            f"--out={cohort / 'figures'}",
        )
        == 0
    )
    (folder / "model").mkdir()
    (folder / "model" / "model_card.json").write_text(json.dumps(CARD))
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert (
        command(
            report,
            f"--tables={cohort / 'tables'}",
            f"--figures={cohort / 'figures'}",
            f"--config={json.dumps(config)}",
            f"--model-card={folder / 'model' / 'model_card.json'}",
            f"--out={cohort / 'report.html'}",
        )
        == 0
    )
    return folder


class Resources(HTMLParser):
    """Every tag and every URL-valued attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data") and value:
                self.urls.append(value)


def test_the_report_loads_nothing_from_elsewhere(built):
    text = (built / "cohort" / "report.html").read_text()
    page = Resources()
    page.feed(text)
    # images embedded; the one link is the QC montage at full resolution beside the page
    local = [u for u in page.urls if not u.startswith(("data:image/png;base64,", "#"))]
    assert page.urls and set(local) == {"figures/qc_montage.png"}
    assert (built / "cohort" / local[0]).is_file()
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    lowered = text.lower()
    for marker in ("http:", "https:", "//cdn", "@import", "url("):
        assert marker not in lowered, marker


def test_every_figure_is_embedded_with_its_caption(built):
    index = pd.read_csv(built / "cohort" / "figures" / "figures.tsv", sep="\t")
    assert {
        "volume_height",
        "imi_bmi",
        "gam_imi_ml_m2",
        "percentiles_age",
        "percentiles_bmi",
    } <= set(index["name"])
    assert {"csa_profiles_age", "csa_profiles_bmi", "bland_altman", MONTAGE} <= set(index["name"])
    # the papers' figures first, the Bland-Altman grid after the biology
    names = list(index["name"])
    assert (
        names.index("volume_height") < names.index("percentiles_age") < names.index("bland_altman")
    )
    for name in index["name"]:
        assert (built / "cohort" / "figures" / f"{name}.png").is_file()
        if name != MONTAGE:
            assert (built / "cohort" / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    text = (built / "cohort" / "report.html").read_text()
    images = text.split('src="data:image/png;base64,')[1:]
    assert len(images) == len(index)
    for chunk, expected in zip(images, index["file"], strict=True):
        png = base64.b64decode(chunk.split('"', 1)[0])
        assert Image.open(io.BytesIO(png)).size[0] > 100
        assert png == (built / "cohort" / "figures" / expected).read_bytes()
    full = Image.open(built / "cohort" / "figures" / f"{MONTAGE}.png")
    thumbnail = Image.open(built / "cohort" / "figures" / f"{MONTAGE}_thumbnail.png")
    assert full.mode == "RGB" and thumbnail.size[0] <= full.size[0]
    for caption in index["caption"]:
        assert caption.replace("'", "&#x27;").split(":")[0] in text


def test_methods_come_from_config_model_card_and_counts(built):
    text = (built / "cohort" / "report.html").read_text()
    flow = pd.read_csv(built / "cohort" / "tables" / "flow.tsv", sep="\t")
    assert f"Of {flow['n_in'].iloc[0]} participants on the sheet, {flow['n_out'].iloc[-1]}" in text
    assert "1 at ingestion" in text
    assert "vnet network (width x0.5)" in text and "ab" * 32 in text
    assert "iliopsoas 0.912 (n = 8)" in text
    assert "2.23 x 2.23 x 3 mm" in text
    assert (
        "Iliopsoas muscle index, IMI (ml/m²) ~ np.minimum(Age (years) - 60, 0) + "
        "np.maximum(Age (years) - 60, 0)" in html.unescape(text)
    )
    assert "myoflow 0.1.0" in text and "statsmodels" in text
    assert "Bland-Altman" in text


def test_a_missing_or_sparse_model_card_is_said_not_fatal(built):
    tables = built / "cohort" / "tables"
    bare = read_report_inputs(tables, None, {}, None)
    assert "No model card was found" in render_report(bare)
    sparse = ReportInputs(tables=bare.tables, model_card={"weights_sha256": "cd" * 32})
    html = render_report(sparse)
    assert "cd" * 32 in html and "Held-out Dice" not in html


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_chromium_renders_the_report(built, tmp_path):
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # root in containers
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,3000",
            (built / "cohort" / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    image = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert image.shape == (3000, 1200, 3)
    assert image.std() > 10  # text, tables and figures, not a blank or uniform page
    assert (image.reshape(-1, 3) < 100).all(axis=1).mean() > 0.002  # dark text drawn


PROBE = """<script>
window.addEventListener("load", () => {
  const raw = %s;
  const text = document.body.innerText;
  const clip = e => {
    for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === "auto" || o === "scroll" || o === "hidden") return p;
    }
    return null;
  };
  const out = {
    degenerate: text.match(/\\b-?(nan|inf|infinity)\\b/gi) || [],
    raw: raw.filter(name => text.includes(name)),
    fat: (text.match(/fat fraction/gi) || []).length,
    scrollWidth: document.documentElement.scrollWidth,
    viewport: window.innerWidth,
    wide: [...document.querySelectorAll("body *")]
      .filter(e => (clip(e) || e).getBoundingClientRect().right > window.innerWidth + 1)
      .map(e => e.tagName + "#" + e.id).slice(0, 10),
    montage: [...document.querySelectorAll("img[data-text-px]")].map(
      i => i.getBoundingClientRect().width / i.naturalWidth * parseFloat(i.dataset.textPx)),
    notEstimable: (text.match(/not estimable \\(n = \\d+/g) || []).length,
  };
  document.body.innerHTML = '<pre id="probe">' + JSON.stringify(out) + "</pre>";
});
</script>"""


def probe_in_chromium(page: Path, raw_names: list[str], width: int = 1400) -> dict:
    """What a reader sees of ``page`` in Chromium at ``width`` px: a copy of the page with a
    script that measures the rendered page (its text, element boxes, the montage's text
    size on screen) and writes the result in place of the page, read back by --dump-dom."""
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE % json.dumps(raw_names) + "</body>"))
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},1000"]
        + ["--virtual-time-budget=20000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    probe.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    return json.loads(html.unescape(found[1]))


def raw_column_names(participants: Path) -> list[str]:
    """The analysis table's column names a reader should never see (and the % fat fractions)."""
    columns = pd.read_csv(participants, sep="\t", nrows=1).columns
    named = [c for c in columns if "_" in c and c != "participant_id"]
    return named + [f"{c}_pct" for c in named if c.startswith("ff_") and c.count("_") >= 2]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_in_chromium_the_report_reads_as_a_paper(built):
    """No nan, inf or raw column names visible, fat fraction present, nothing wider than
    the page (tables scroll inside it), the QC montage's text at least 10 px on screen."""
    cohort = built / "cohort"
    seen = probe_in_chromium(cohort / "report.html", raw_column_names(cohort / "participants.tsv"))
    assert seen["degenerate"] == []
    assert seen["raw"] == []
    assert seen["fat"] >= 2
    assert seen["scrollWidth"] <= seen["viewport"] and seen["wide"] == []
    assert seen["montage"] and min(seen["montage"]) >= 10.0


DEMO = ROOT / "results" / "demo" / "cohort" / "report.html"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
@pytest.mark.skipif(not DEMO.is_file(), reason="no demo report (run `make demo` first)")
def test_in_chromium_the_demo_report_reads_as_a_paper(tmp_path):
    """The same on the demo's own report, where `make demo` has written one."""
    page = tmp_path / "report.html"
    shutil.copytree(DEMO.parent / "figures", tmp_path / "figures")
    page.write_text(DEMO.read_text())
    seen = probe_in_chromium(page, raw_column_names(DEMO.parent / "participants.tsv"))
    assert seen["degenerate"] == [] and seen["raw"] == []
    assert seen["fat"] >= 2
    assert seen["scrollWidth"] <= seen["viewport"] and seen["wide"] == []
    assert seen["montage"] and min(seen["montage"]) >= 10.0


@pytest.mark.workflow
def test_the_cohort_rules_run_and_snakemake_reports_them(tmp_path):
    """The four cohort rules on shard tables of 30 participants, then `snakemake --report`.

    Only the cohort rules may run (the shard tables stand in for the per-shard stages).
    """
    copy_workflow(tmp_path)
    shutil.copytree(
        ROOT / "workflow" / "report", tmp_path / "workflow" / "report", dirs_exist_ok=True
    )
    phenotypes, truth = synth_cohort(tmp_path / "synth", 30, seed=31)
    write_pipeline(tmp_path / "data", phenotypes, truth, shards_dir=tmp_path / "results" / "shards")
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    config |= {
        "participants": "data/participants.tsv",
        "phenotypes": "data/phenotypes.tsv",
        "shards": {"size": 5},
    }
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    rules = ["cohort_participants", "cohort_statistics", "cohort_figures", "cohort_report"]
    target = "results/cohort/report.html"
    out = check(snakemake("--cores", "1", "--allowed-rules", *rules, "--", target, cwd=tmp_path))
    assert "4 of 4 steps (100%) done" in out
    page = (tmp_path / target).read_text()
    assert "<h1>myoflow cohort report</h1>" in page and "30</b> participants" in page
    check(
        snakemake(
            "--report",
            "snakemake_report.html",
            "--allowed-rules",
            *rules,
            "--",
            target,
            cwd=tmp_path,
        )
    )
    html = (tmp_path / "snakemake_report.html").read_text()
    assert "cohort_report" in html and len(html) > 100_000


@pytest.mark.workflow
def test_without_phenotypes_the_cohort_rules_run_and_the_report_names_what_needs_them(tmp_path):
    """Config phenotypes null: participants.tsv and the report are made, the phenotype
    columns are empty and the report lists the analyses that need phenotypes; a path that
    is set but missing still stops the run before any job."""
    copy_workflow(tmp_path)
    phenotypes, truth = synth_cohort(tmp_path / "synth", 30, seed=31)
    write_pipeline(tmp_path / "data", phenotypes, truth, shards_dir=tmp_path / "results" / "shards")
    (tmp_path / "data" / "phenotypes.tsv").unlink()
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    config |= {"participants": "data/participants.tsv", "shards": {"size": 5}}
    rules = ["cohort_participants", "cohort_statistics", "cohort_figures", "cohort_report"]
    target = "results/cohort/report.html"
    config["phenotypes"] = "data/phenotypes.tsv"  # set, but not there: a typo stops the run
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    typo = snakemake("-n", "--allowed-rules", *rules, "--", target, cwd=tmp_path)
    assert typo.returncode != 0
    assert "config phenotypes: data/phenotypes.tsv does not exist" in typo.stdout + typo.stderr
    config["phenotypes"] = None
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    out = check(snakemake("--cores", "1", "--allowed-rules", *rules, "--", target, cwd=tmp_path))
    assert "4 of 4 steps (100%) done" in out
    gathered = pd.read_csv(
        tmp_path / "results" / "cohort" / "participants.tsv",
        sep="\t",
        dtype=str,
        keep_default_na=False,
    )
    assert len(gathered) == 30
    for column in ("sex", "age", "height_cm", "bmi", "imi_ml_m2"):
        assert (gathered[column] == "").all(), column
    assert (gathered["vol_iliopsoas_total_ml"] != "").all()
    page = (tmp_path / target).read_text()
    assert "30</b> participants" in page and "<h2>Analyses not run</h2>" in page
    assert "No phenotype table was configured" in page
    for analysis in ("table1", "table2", "gam", "percentiles_age", "csa_profiles_age"):
        assert f"<li>{analysis}: needs phenotypes (config phenotypes is not set)</li>" in page
    assert "Muscle measures, all participants" in page
    assert 'id="csa_profiles_overall"' in page
