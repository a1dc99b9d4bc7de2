"""The README's examples, by tag: the ```python block that follows ``<!-- example: TAG -->``."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def example(tag: str) -> str:
    """The code of the README example `tag` (AssertionError when it is missing)."""
    text = README.read_text(encoding="utf-8")
    m = re.search(
        rf"<!-- example: {re.escape(tag)} -->\s*```python\n(.*?)```", text, flags=re.DOTALL
    )
    assert m, f"README.md has no ```python block after <!-- example: {tag} -->"
    return m.group(1)


def run(tag: str, namespace: dict[str, object]) -> dict[str, object]:
    """Execute the example `tag` in `namespace` (the names it expects already set up)."""
    code = compile(example(tag), f"README.md example {tag}", "exec")
    exec(code, namespace)  # noqa: S102 - the README's own code, run as a user would
    return namespace
