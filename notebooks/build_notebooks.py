"""Write the report notebooks from code, so their source stays reviewable in diffs.

    python notebooks/build_notebooks.py

Each notebook uses the library API (not the CLI), takes papermill parameters, and sets plotly's
"notebook" renderer, which inlines plotly.js so figures show in exported HTML with no network.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SETUP = """from pathlib import Path

import plotly.io as pio

pio.renderers.default = "notebook"  # plotly.js inlined: figures show offline and in HTML exports
run = Path(run_dir)"""


def notebook(title: str, intro: str, parameters: str, cells: list[str]) -> nbformat.NotebookNode:
    params = new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(
        cells=[
            new_markdown_cell(f"# {title}\n\n{intro}"),
            params,
            new_code_cell(SETUP),
            *[new_code_cell(c) for c in cells],
        ]
    )
    for i, cell in enumerate(nb.cells):  # stable ids: rebuilding changes nothing in the diff
        cell.id = f"cell-{i:02d}"
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


ETHNIC_BIAS = notebook(
    "Ethnic bias: '<country> body' nudity rates",
    "Rates with 95% Wilson intervals per country and config, the paired SD-vs-SLD comparison on "
    "identical seeds, and the world map. Run `t2i-audit demo` or `t2i-audit probe ethnic-bias` "
    "first; this notebook only reads the run directory.",
    'run_dir = "../runs/demo/toy/ethnic-bias"\n'
    "rule = \"toy-magenta-fraction\"  # the toy world's rule; NudeNet's for a real model\n"
    "out_dir = None  # None = outputs/<run>/<rule> beside this notebook; the run is never changed",
    [
        """import pandas as pd

from analysis.probes.results import write_results

# re-derive from stored detections under the chosen rule, into this notebook's own folder
results = Path(out_dir) if out_dir else Path("outputs") / run.name / rule
write_results(run, rule=rule, out_dir=results)
rates = pd.read_csv(results / "nudity_rates.csv", keep_default_na=False, na_values=[""])
rates[["country", "config", "nude", "n", "rate", "ci_low", "ci_high", "n_missing"]]""",
        """paired = pd.read_csv(results / "paired_tests.csv")
paired[paired["iso3"] == "ALL"]""",
        """from analysis.figures.maps import rate_map

rate_map(rates, f"Nudity rate per country ({rule})").show()""",
        """from analysis.figures.charts import ranked_dots

ranked_dots(rates, "Nudity rate per country and config").show()""",
        """# the static paper version (matplotlib; save with analysis.figures.static.save_static)
from analysis.figures.static import country_rates_figure

country_rates_figure(rates, title=f"Nudity rate per country ({rule})")""",
    ],
)

I2P = notebook(
    "I2P: prompt toxicity vs image inappropriateness, and Table 1",
    "From the bundled I2P data (4703 prompts): Spearman correlation with a bootstrap CI (the paper "
    "reports 0.22), and inappropriate probability / expected maximum inappropriateness of SD 1.4.",
    'data = None  # None = the bundled copy; or a CSV/Parquet path\nn_boot = 2000\nrun_dir = "."',
    [
        """from analysis.i2p import load_i2p
from analysis.i2p.correlation import points_table, toxicity_correlation

dataset = load_i2p(data)
corr = toxicity_correlation(dataset.frame, n_boot=n_boot)
corr[corr["category"] == "all"]""",
        """from analysis.figures.i2p import correlation_figure

correlation_figure(points_table(dataset.frame), corr).show()""",
        """# the static paper version (matplotlib)
from analysis.figures.static import toxicity_figure

toxicity_figure(points_table(dataset.frame), corr)""",
        """from analysis.i2p.table import dataset_table

dataset_table(dataset.frame, n_draws=2000)""",
    ],
)

DATASET = notebook(
    "Dataset side: nearest index images vs generated images",
    "Per country, the share of the k nearest index images (clip-retrieval back end or local faiss "
    "folder) judged by the same NudeNet rule, next to the model-side rate. Run `t2i-audit knn "
    "query ... --out RUN` first.",
    'run_dir = "../runs/demo/toy/ethnic-bias"',
    [
        """import pandas as pd

data_file = run / "results" / "dataset_nudity_rates.csv"
if data_file.is_file():
    dataset_rates = pd.read_csv(data_file, keep_default_na=False, na_values=[""])
else:
    print(f"{data_file} does not exist yet: run `t2i-audit knn query --out {run}`")
    dataset_rates = None
dataset_rates""",
        """from analysis.figures.dataset import model_vs_dataset

model_file = run / "results" / "nudity_rates.csv"
if dataset_rates is not None and model_file.is_file():
    model_rates = pd.read_csv(model_file, keep_default_na=False, na_values=[""])
    model_vs_dataset(model_rates, dataset_rates, model_rates["config"].iloc[0]).show()""",
    ],
)

if __name__ == "__main__":
    for name, nb in [("ethnic_bias", ETHNIC_BIAS), ("i2p", I2P), ("dataset_side", DATASET)]:
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb")
