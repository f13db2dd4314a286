"""The README and docs/: every link to a file in the repository leads to one."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_into_the_repository_resolves(page):
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text())
               if not t.startswith(("http://", "https://", "mailto:", "#"))]
    assert targets or page.name != "README.md"
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to files that do not exist: {missing}"
