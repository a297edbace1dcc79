"""The documents the code cites exist in docs/ with every cited section, and docs/ANCHORS.md is generated from
depthg.reporting.anchors (so the published numbers cannot drift from the ones the tables use)."""

import re
from pathlib import Path

import pytest

from depthg.reporting.anchors_doc import anchors_markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NAMES = ("METHOD", "DESIGN", "ANCHORS")
# a citation: NAME[.md] followed by sections, e.g. "METHOD.md §2.4, §9 #12", "§1.3-1.4", "DESIGN.md §10.3-4"
_SECTION = r"§\d+(?:\.\d+)*(?:\s*[-–]\s*§?\d+(?:\.\d+)*)?(?:\s*#\d+(?:\s*,\s*#\d+)*)?"
CITATION = re.compile(rf"\b({'|'.join(NAMES)})(?:\.md)?\s+((?:{_SECTION})(?:\s*,\s*{_SECTION})*)")
FILE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*(?:" + "|".join(NAMES) + r")\.md)\b")


def _sources() -> list[Path]:
    files = [
        ROOT / "README.md",
        *sorted((ROOT / "depthg").rglob("*.py")),
        *sorted((ROOT / "notebooks").glob("*.ipynb")),
        *sorted((ROOT / "tests").glob("*.py")),
        *sorted(DOCS.glob("*.md")),
    ]
    return [f for f in files if f.name != "test_docs.py"]


def cited_sections() -> dict[str, set[str]]:
    """{name: {"2.4", "9#12", ...}} over the code, notebooks, tests, README and docs."""
    out: dict[str, set[str]] = {n: set() for n in NAMES}
    for path in _sources():
        for name, group in CITATION.findall(path.read_text()):
            for part in re.split(r"\s*,\s*(?=§)", group):
                m = re.match(r"§(\d+(?:\.\d+)*)(?:\s*[-–]\s*§?(\d+(?:\.\d+)*))?((?:\s*,?\s*#\d+)*)", part)
                start, end, items = m.groups()
                out[name].add(start)
                if end:  # "10.3-4" ends at 10.4
                    out[name].add(end if "." in end or "." not in start else f"{start.rsplit('.', 1)[0]}.{end}")
                out[name].update(f"{start}#{n}" for n in re.findall(r"#(\d+)", items or ""))
    return out


def headings(name: str) -> set[str]:
    """Section numbers of docs/<name>.md headings ("## 2. Model", "### 2.4 ...") and its §9-style items ("| 12 |")."""
    text = (DOCS / f"{name}.md").read_text()
    found = set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*)\.?\s", text, re.M))
    for sec, body in re.findall(r"^## (\d+)\.? [^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S):
        found.update(f"{sec}#{n}" for n in re.findall(r"^\| (\d+) \|", body, re.M))
    return found


@pytest.mark.parametrize("name", NAMES)
def test_every_cited_section_exists(name):
    cited = cited_sections()[name]
    assert cited, f"{name}.md is cited nowhere: drop it from the test"
    missing = sorted(cited - headings(name), key=lambda s: [int(x) for x in re.split(r"[.#]", s)])
    assert not missing, f"docs/{name}.md lacks cited section(s) {', '.join('§' + m for m in missing)}"


def test_every_cited_file_exists():
    missing = set()
    for path in _sources():
        for cited in FILE.findall(path.read_text()):
            if not (
                (ROOT / cited).is_file()
                or (DOCS / Path(cited).name).is_file()
                and "/" not in cited
                or cited.startswith("docs/")
                and (ROOT / cited).is_file()
            ):
                missing.add(f"{cited} (in {path.relative_to(ROOT)})")
    assert not missing, "cited files the repository lacks: " + "; ".join(sorted(missing))


def test_anchors_document_is_generated_from_the_data():
    text = (DOCS / "ANCHORS.md").read_text()
    assert text == anchors_markdown(), (
        "docs/ANCHORS.md differs from depthg.reporting.anchors; regenerate it: "
        "python -m depthg.reporting.anchors_doc > docs/ANCHORS.md"
    )
