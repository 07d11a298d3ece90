#!/usr/bin/env python3
"""Every relative link in the repository's Markdown files resolves inside the clone.

    python3 scripts/check_links.py [ROOT]      # prints one line per broken link; exit 1 if any

Checks [text](target) and ![alt](target) outside code: the file or folder must exist and lie
inside ROOT, and a #fragment must name a heading of the target Markdown file (GitHub's anchors).
http(s) and mailto links are not fetched. Run by the Python tests (python/tests/test_docs.py).
"""
import os
import re
import subprocess
import sys

_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_SKIP_DIRS = {".git", "node_modules", "__pycache__"}


def markdown_files(root):
    """Tracked *.md files (git), else every *.md outside build folders."""
    try:
        out = subprocess.run(["git", "-C", root, "ls-files", "-z", "--", "*.md"], capture_output=True, check=True)
        files = [f for f in out.stdout.decode().split("\0") if f]
        if files:
            return sorted(os.path.join(root, f) for f in files)
    except (OSError, subprocess.CalledProcessError):
        pass
    found = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in _SKIP_DIRS and not x.startswith(("build", "dist"))]
        found += [os.path.join(d, n) for n in names if n.endswith(".md")]
    return sorted(found)


def _prose_lines(text, blank_code=True):
    """(line number, line) outside fenced code blocks, inline code spans blanked if asked."""
    fenced = False
    for i, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield i, _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line) if blank_code else line


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    with open(path, encoding="utf-8") as f:
        for _, line in _prose_lines(f.read(), blank_code=False):
            m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                base = slug(m.group(1))
                n = seen.get(base, 0)
                seen[base] = n + 1
                out.add(base if n == 0 else f"{base}-{n}")
    return out


def check(root):
    """One message per broken link in the Markdown files under root."""
    root = os.path.realpath(root)
    problems = []
    for md in markdown_files(root):
        with open(md, encoding="utf-8") as f:
            text = f.read()
        rel = os.path.relpath(md, root)
        for n, line in _prose_lines(text):
            for m in _LINK.finditer(line):
                target = m.group(1)
                if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                    continue
                path, _, frag = target.partition("#")
                dest = os.path.realpath(os.path.join(os.path.dirname(md), path)) if path else md
                where = f"{rel}:{n}: ({target})"
                if os.path.commonpath([root, dest]) != root:
                    problems.append(f"{where} points outside the repository")
                elif not os.path.exists(dest):
                    problems.append(f"{where} no such file or folder")
                elif frag and dest.endswith(".md") and frag not in anchors(dest):
                    problems.append(f"{where} no heading with anchor #{frag} in {os.path.relpath(dest, root)}")
    return problems


def main(argv):
    root = argv[1] if len(argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    problems = check(root)
    for p in problems:
        print(p)
    print(f"{len(problems)} broken link(s) in {len(markdown_files(root))} Markdown files under {root}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
