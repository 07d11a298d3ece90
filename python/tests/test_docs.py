"""Every relative link in the repository's Markdown files resolves inside the clone
(scripts/check_links.py), and the checker does catch what it is for."""
import importlib.util
import os

from conftest import ROOT


def _checker():
    spec = importlib.util.spec_from_file_location("check_links", os.path.join(ROOT, "scripts", "check_links.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_link_resolves_inside_the_repository():
    links = _checker()
    assert links.markdown_files(ROOT), "no Markdown files found"
    assert links.check(ROOT) == []


def test_the_checker_catches_broken_links(tmp_path):
    links = _checker()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Some `code` here, too\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) [ok](docs/a.md#some-code-here-too) [ok](#top) ![ok](docs) [web](https://x.org/y)\n"
        "`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n# Top\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nope) [outside](../elsewhere/spec.md)\n")
    problems = links.check(str(tmp_path))
    assert len(problems) == 3, problems
    assert "README.md:7: (docs/b.md) no such file" in problems[0]
    assert "no heading with anchor #nope in docs/a.md" in problems[1]
    assert "(../elsewhere/spec.md) points outside the repository" in problems[2]
