"""Published numbers of DepthG and its peers, as data with their sources (ANCHORS.md §1, §2).

``docs/ANCHORS.md`` is generated from these rows (:mod:`depthg.reporting.anchors_doc`). Nothing is added to the
sources: every row carries its source key(s) and a status, V = verified in a primary or near-primary source, T = third-party quote or re-run, X = not retrieved.
A cell ANCHORS.md could not fill (DepthG on COCO-Stuff and Potsdam, the paper's ablation table) is a row with
status X and empty numbers, so a table built from here shows "not retrieved" instead of a number.
All numbers follow STEGO's protocol (dataset-level Hungarian matching for the cluster probe, DenseCRF), in %.

``table()`` returns the rows as a pandas DataFrame; ``published(dataset, ...)`` filters them; ``SOURCES`` expands
the source keys; ``ABLATION_STATUS`` says what is known about the paper's component ablation.

Columns: method, backbone, dataset, probe ("cluster" | "linear"), accuracy, mIoU, crf, status, source, note.
"""

from __future__ import annotations

import io

import pandas as pd

SOURCES = {
    "E": "EAGLE project-page tables (eagle2024/static/images/table_{coco,city,potsdam}.png in "
    "github.com/MICV-yonsei/MICV-yonsei.github.io; https://micv-yonsei.github.io/eagle2024/)",
    "P1": "https://paperswithcode.com/paper/unsupervised-semantic-segmentation-by-2",
    "STEGO#3": "github.com/mhamilton723/STEGO/issues/3 (the author's evaluation of the released ViT-B COCO ckpt)",
    "STEGO#39": "github.com/mhamilton723/STEGO/issues/39 (released potsdam_test.ckpt, model_type vit_small)",
    "C": "CAUSE README, github.com/ByungKwanLee/Causal-Unsupervised-Segmentation",
    "PM": "PriMaPs README, github.com/visinf/primaps (HEAD 7ca7757)",
    "D2": "github.com/leonsick/depthg/issues/2 'Cityscapes Numbers' (quotes the paper's 81.6 / 23.1)",
    "Q": "github.com/qbit-glitch/unsupervised_panoptic_segmentation reports/fusion_adapter_numbers_ledger.md "
    "(quotes arXiv 2309.12378v2 Table 2; local re-runs)",
    "S": "SmooSeg abstract, arXiv 2310.17874 (NeurIPS'23)",
    "ANCHORS": "not retrieved when this project was written: take the number from arXiv 2309.12378 Tables 1-3",
}

# One line per (method, backbone, dataset, probe); empty accuracy/mIoU = not given. Sources are keys of SOURCES,
# joined by "+".
_ROWS = """\
method,backbone,dataset,probe,accuracy,mIoU,crf,status,source,note
STEGO,DINO ViT-S/16,cocostuff27,cluster,52.5,23.7,yes,V,E,
STEGO,DINO ViT-S/16,cocostuff27,linear,70.6,34.5,yes,V,E,
STEGO,DINO ViT-S/8,cocostuff27,cluster,48.3,24.5,yes,V,E+P1,
STEGO,DINO ViT-S/8,cocostuff27,linear,74.4,38.3,yes,V,E+P1,
STEGO,DINO ViT-S/8,potsdam,cluster,77.0,62.6,yes,V,E+P1+STEGO#39,"backbone label ambiguous: EAGLE lists ViT-B/8, the released potsdam_test.ckpt is vit_small (77.03 / 62.57; linear 85.85 / 74.83)"
STEGO,DINO ViT-B/8,cocostuff27,cluster,56.9,28.2,yes,V,E+P1+STEGO#3,
STEGO,DINO ViT-B/8,cocostuff27,linear,76.1,41.0,yes,V,STEGO#3,only from the author's evaluation in STEGO#3 (not the paper)
STEGO,DINO ViT-B/8,cityscapes,cluster,73.2,21.0,yes,V,E+P1,
STEGO,DINO ViT-B/8,cityscapes,linear,90.3,26.8,yes,V,E,
STEGO,DINO ViT-B/8,potsdam,cluster,77.0,62.6,yes,V,E+P1,backbone label ambiguous (see the ViT-S/8 row)
HP,DINO ViT-S/16,cocostuff27,cluster,54.5,24.3,yes,V,E,
HP,DINO ViT-S/16,cocostuff27,linear,74.1,39.1,yes,V,E,
HP,DINO ViT-S/8,cocostuff27,cluster,57.2,24.6,yes,V,E,
HP,DINO ViT-S/8,cocostuff27,linear,75.6,42.7,yes,V,E,
HP,DINO ViT-S/8,cityscapes,cluster,80.1,18.4,yes,V,E,
HP,DINO ViT-S/8,cityscapes,linear,91.2,30.6,yes,V,E,
HP,DINO ViT-B/8,cityscapes,cluster,79.5,18.4,yes,V,E,
HP,DINO ViT-B/8,cityscapes,linear,90.9,33.0,yes,V,E,
HP,DINO ViT-B/8,potsdam,cluster,82.4,68.6,yes,V,E,
SmooSeg,DINO ViT (variants not retrieved),cocostuff27,cluster,,,?,X,S,abstract only: pixel accuracy +14.9 over STEGO
SmooSeg,DINO ViT (variants not retrieved),cityscapes,cluster,,,?,X,S,abstract only: pixel accuracy +13.0 over STEGO
SmooSeg,DINO ViT (variants not retrieved),potsdam,cluster,,,?,X,S,abstract only: pixel accuracy +5.7 over STEGO
DepthG,DINO ViT-S/8,cocostuff27,cluster,,,yes,X,ANCHORS,not retrieved
DepthG,DINO ViT-S/8,cocostuff27,linear,,,yes,X,ANCHORS,not retrieved
DepthG,DINO ViT-S/8,potsdam,cluster,,,yes,X,ANCHORS,not retrieved (the Potsdam run is ViT-S per paper_reproduction.sh)
DepthG,DINO ViT-B/8,cocostuff27,cluster,,,yes,X,ANCHORS,not retrieved
DepthG,DINO ViT-B/8,cocostuff27,linear,,,yes,X,ANCHORS,not retrieved
DepthG,DINO ViT-B/8,cityscapes,cluster,81.6,23.1,yes,T,D2+Q,the paper's Table 2 as quoted by two parties
DepthG,DINO ViT-B/8,cityscapes,linear,,,yes,T,Q,no linear row in the paper's Table 2 (per [Q])
"DepthG, released ckpt re-evaluated",DINO ViT-B/8,cityscapes,cluster,81.60,23.09,yes,T,Q,"[Q] R2, 500 val images"
"DepthG, released ckpt re-evaluated",DINO ViT-B/8,cityscapes,linear,,29.24,yes,T,Q,"[Q] R2, 500 val images; accuracy not given"
"DepthG, released ckpt re-evaluated (2)",DINO ViT-B/8,cityscapes,cluster,81.41,22.44,yes,T,D2,"a retrain gave 81.24 / 22.41"
EAGLE,DINO ViT-S/16,cocostuff27,cluster,60.1,24.4,yes,V,E,
EAGLE,DINO ViT-S/16,cocostuff27,linear,75.2,42.5,yes,V,E,
EAGLE,DINO ViT-S/8,cocostuff27,cluster,64.2,27.2,yes,V,E,
EAGLE,DINO ViT-S/8,cocostuff27,linear,76.8,43.9,yes,V,E,
EAGLE,DINO ViT-S/8,cityscapes,cluster,81.8,19.7,yes,V,E,
EAGLE,DINO ViT-S/8,cityscapes,linear,91.2,33.1,yes,V,E,
EAGLE,DINO ViT-B/8,cityscapes,cluster,79.4,22.1,yes,V,E,
EAGLE,DINO ViT-B/8,cityscapes,linear,91.4,33.4,yes,V,E,
EAGLE,DINO ViT-B/8,potsdam,cluster,83.3,71.1,yes,V,E,
CAUSE-MLP,DINO ViT-B/8,cocostuff27,cluster,72.8,34.3,yes,V,C,COCO not independently reproduced
CAUSE-MLP,DINO ViT-B/8,cityscapes,cluster,90.3,25.7,yes,V,C,
CAUSE-TR,DINO ViT-S/8,cocostuff27,cluster,69.6,32.4,yes,V,C,COCO not independently reproduced
CAUSE-TR,DINO ViT-S/8,cityscapes,cluster,89.4,24.6,yes,V,C,
CAUSE-TR,DINO ViT-B/8,cocostuff27,cluster,74.9,41.9,yes,V,C,COCO not independently reproduced
CAUSE-TR,DINO ViT-B/8,cityscapes,cluster,90.8,28.0,yes,V,C,
CAUSE-TR,DINOv2 ViT-B/14,cocostuff27,cluster,78.0,45.3,yes,V,C,COCO not independently reproduced
CAUSE-TR,DINOv2 ViT-B/14,cityscapes,cluster,89.8,29.9,yes,V,C+Q,independent re-run 89.8 / 29.8 ([Q] R1)
PriMaPs-EM + HP,DINO ViT-S/8,cocostuff27,cluster,57.8,25.1,both computed,V,PM,the README does not say whether CRF was used
PriMaPs-EM + HP,DINO ViT-S/8,cityscapes,cluster,76.6,19.2,both computed,V,PM,the README does not say whether CRF was used
PriMaPs-EM + HP,DINO ViT-S/8,potsdam,cluster,78.4,64.2,both computed,V,PM,the README does not say whether CRF was used
PriMaPs-EM + STEGO,DINO ViT-B/8,cocostuff27,cluster,57.9,29.7,both computed,V,PM,the README does not say whether CRF was used
PriMaPs-EM + STEGO,DINO ViT-B/8,cityscapes,cluster,78.6,21.6,both computed,V,PM,the README does not say whether CRF was used
PriMaPs-EM + STEGO,DINO ViT-B/8,potsdam,cluster,83.3,71.0,both computed,V,PM,the README does not say whether CRF was used
PriMaPs-EM,DINOv2 ViT-B/14,cocostuff27,cluster,52.8,23.6,both computed,V,PM,the README does not say whether CRF was used
PriMaPs-EM,DINOv2 ViT-B/14,cityscapes,cluster,82.9,21.3,both computed,V,PM,the README does not say whether CRF was used
PriMaPs-EM,DINOv2 ViT-B/14,potsdam,cluster,83.2,71.1,both computed,V,PM,the README does not say whether CRF was used
"""

# The paper's component ablation (DFC / FPS / 3D-LHP) could not be retrieved (ANCHORS.md §2).
ABLATION_STATUS = (
    "X: the paper's ablation table (DFC / FPS / 3D-LHP) could not be retrieved (ANCHORS.md §2); "
    "no released command enables 3D-LHP (paper_reproduction.sh). Take it from arXiv 2309.12378."
)

STATUS_TEXT = {"V": "verified", "T": "third-party", "X": "not retrieved"}
# our preset backbone names -> the labels ANCHORS.md uses
BACKBONE_LABELS = {
    "vit_small_patch8": "DINO ViT-S/8",
    "vit_base_patch8": "DINO ViT-B/8",
    "vit_small_patch16": "DINO ViT-S/16",
    "vit_base_patch16": "DINO ViT-B/16",
}


def table() -> pd.DataFrame:
    """Every anchor row (see the module docstring for the columns)."""
    df = pd.read_csv(
        io.StringIO(_ROWS),
        dtype={"accuracy": float, "mIoU": float},
        keep_default_na=False,
        na_values={"accuracy": [""], "mIoU": [""]},
    )
    assert df["source"].str.len().gt(0).all(), "every anchor row needs a source"
    assert df["status"].isin(list(STATUS_TEXT)).all(), "status must be V, T or X"
    return df


def published(dataset: str, *, backbone: str | None = None, probe: str | None = None) -> pd.DataFrame:
    """Rows of ``dataset`` ("cocostuff27", "cityscapes", "potsdam"; potsdamraw reads as potsdam), optionally only
    those of ``backbone`` (ours, e.g. vit_small_patch8, or ANCHORS.md's label) and ``probe``. Empty for datasets
    nobody publishes (synthetic, directory)."""
    df = table()
    df = df[df["dataset"] == ("potsdam" if dataset == "potsdamraw" else dataset)]
    if backbone is not None:
        df = df[df["backbone"] == BACKBONE_LABELS.get(backbone, backbone)]
    if probe is not None:
        df = df[df["probe"] == probe]
    return df.reset_index(drop=True)


def cell(row: pd.Series) -> str:
    """'acc / mIoU' of one row, or 'not retrieved (X)' where ANCHORS.md has no number."""
    acc, miou = row["accuracy"], row["mIoU"]
    if pd.isna(acc) and pd.isna(miou):
        return f"not retrieved ({row['status']})" if row["status"] == "X" else f"not given ({row['status']})"
    fmt = lambda v: "–" if pd.isna(v) else f"{v:.1f}"
    return f"{fmt(acc)} / {fmt(miou)}"


def expand_sources(keys: str) -> str:
    """'E+P1' -> the full citations, '; '-joined."""
    return "; ".join(f"[{k}] {SOURCES[k]}" for k in keys.split("+"))


def display_published(dataset: str) -> pd.DataFrame:
    """The rows of ``dataset`` as a readable table: method, backbone, probe, 'Acc / mIoU' (or 'not retrieved'),
    status and source keys."""
    df = published(dataset)
    return pd.DataFrame(
        {
            "method": df["method"],
            "backbone": df["backbone"],
            "probe": df["probe"],
            "Acc / mIoU": [cell(r) for _, r in df.iterrows()],
            "status": df["status"],
            "source": df["source"],
            "note": df["note"],
        }
    )
