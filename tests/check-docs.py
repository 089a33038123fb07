#!/usr/bin/env python3
"""Checks the documentation: pipelines validate, relative links resolve.

    python3 tests/check-docs.py target/debug/oxeye      # from the repository root

1. Every ```yaml block in README.md and docs/**/*.md with a line `service:` at column 0 is a
   whole pipeline: it must pass `oxeye validate -c`. Other YAML blocks are fragments.
2. Every relative markdown link in README.md, docs/**/*.md and the crate READMEs must point to a
   path that exists, and `#anchor` links into markdown files to a heading (GitHub's slugs).
Prints `docs: N pipelines validated, M links checked, K problems`; exits 1 when K > 0.
Python 3.11, standard library only.
"""

import glob
import os
import re
import subprocess
import sys
import tempfile

PIPELINE_DOCS = ["README.md", "docs/**/*.md"]
LINK_DOCS = PIPELINE_DOCS + [
    "collector/**/README.md",
    "collector/src/engine/README.md",
    "receivers/*/README.md",
    "processors/*/README.md",
    "exporters/*/README.md",
    "ebpf/README.md",
]

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")


def files(patterns):
    seen = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern, recursive=True)):
            path = os.path.normpath(path)
            if path not in seen and os.path.isfile(path):
                seen.append(path)
    return seen


def blocks(text):
    """(language, first line number of the content, content lines) of each fenced block, and the
    line numbers outside any block."""
    out, outside = [], []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            outside.append(i)
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
            body.append(lines[i])
            i += 1
        out.append((lang, start + 1, body))
        i += 1  # the closing fence
    return out, outside


def slug(heading):
    """GitHub's anchor for a heading: lowercase, punctuation other than - and _ dropped, spaces
    to -. Links and inline code count by their text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


anchor_cache = {}


def anchors(path):
    if path not in anchor_cache:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        _, outside = blocks(text)
        lines = text.split("\n")
        found, counts = set(), {}
        for n in outside:
            m = re.match(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", lines[n])
            if not m:
                continue
            s = slug(m.group(2))
            k = counts.get(s, 0)
            counts[s] = k + 1
            found.add(s if k == 0 else f"{s}-{k}")
        # Explicit HTML anchors.
        for m in re.finditer(r'<a\s+(?:name|id)="([^"]+)"', text):
            found.add(m.group(1))
        anchor_cache[path] = found
    return anchor_cache[path]


def check_pipelines(oxeye, problems):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    validated = 0
    with tempfile.TemporaryDirectory(prefix="oxeye-docs-") as tmp:
        for md in files(PIPELINE_DOCS):
            with open(md, encoding="utf-8") as f:
                text = f.read()
            for lang, line, body in blocks(text)[0]:
                if lang not in ("yaml", "yml"):
                    continue
                if not any(re.match(r"^service:", l) for l in body):
                    continue  # a fragment
                name = os.path.join(tmp, f"{md.replace(os.sep, '_')}-L{line}.yaml")
                with open(name, "w", encoding="utf-8") as f:
                    f.write("\n".join(body) + "\n")
                r = subprocess.run(
                    [oxeye, "validate", "-c", name],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                validated += 1
                if r.returncode != 0:
                    # oxeye names the temp file: point at the markdown file's own lines.
                    output = re.sub(
                        re.escape(name) + r":(\d+)",
                        lambda m: f"{md}:{line + int(m.group(1)) - 1}",
                        (r.stdout + r.stderr).strip(),
                    ).replace(name, md)
                    problems.append(
                        f"{md}:{line}: pipeline does not validate (exit {r.returncode}):\n"
                        + "\n".join("    " + l for l in output.splitlines())
                    )
    return validated


def check_links(problems):
    checked = 0
    for md in files(LINK_DOCS):
        with open(md, encoding="utf-8") as f:
            text = f.read()
        lines = text.split("\n")
        _, outside = blocks(text)
        base = os.path.dirname(md)
        for n in outside:
            line = INLINE_CODE.sub("", lines[n])
            for m in LINK.finditer(line):
                target = m.group(2)
                if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                    continue  # http(s), mailto, ...
                checked += 1
                path, _, anchor = target.partition("#")
                resolved = os.path.normpath(os.path.join(base, path)) if path else md
                where = f"{md}:{n + 1}"
                if not os.path.exists(resolved):
                    problems.append(f"{where}: link `{target}`: {resolved} does not exist")
                    continue
                if anchor and resolved.endswith(".md") and os.path.isfile(resolved):
                    if anchor not in anchors(resolved):
                        problems.append(
                            f"{where}: link `{target}`: no heading in {resolved} has the anchor `#{anchor}`"
                        )
    return checked


def main():
    if len(sys.argv) != 2:
        print("usage: python3 tests/check-docs.py <path to oxeye binary>", file=sys.stderr)
        return 2
    oxeye = os.path.abspath(sys.argv[1])
    if not os.access(oxeye, os.X_OK):
        print(f"check-docs: {oxeye} is not an executable oxeye binary", file=sys.stderr)
        return 2
    problems = []
    validated = check_pipelines(oxeye, problems)
    checked = check_links(problems)
    for p in problems:
        print(p)
    print(f"docs: {validated} pipelines validated, {checked} links checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
