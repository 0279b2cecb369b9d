"""Builds real_world.jsonl and jsonschemabench.jsonl from local git clones of public schema repositories.

``real_world.jsonl``: the SchemaStore schemas named in ``SCHEMASTORE_CONFIG`` (kind ``config``) and
``SCHEMASTORE_API`` (kind ``api``), plus six public spec schemas (OpenAPI 3.0, four GeoJSON, CloudEvents).
``jsonschemabench.jsonl``: from each JSONSchemaBench data folder in ``BENCH``, an evenly spaced
sample of the files that pass the corpus check (``common.problems``, with a 30 KB cap, 60 KB for
``Github_ultra``); Glaive's many near-copies of one function count once. A schema whose compact JSON
is already in the corpus is skipped, as is one that fails the check (both reported on stderr).

The repositories are read from plain git clones (bare or not; nothing is checked out, only
``git show <commit>:<path>`` and ``git ls-tree`` are run), one per option below; the defaults are where
this project's build machine kept them. The committed files came from these commits, which are also
the defaults, so a fresh clone of each repository rebuilds them byte for byte:

- SchemaStore/schemastore ``3b6446ad8a077bac56f4a4796c0b7fd88927fc8e`` (``--schemastore-rev``)
- guidance-ai/jsonschemabench ``ba103c73756198dd9b149ddc7db7867da7a077f6`` (``--jsonschemabench-rev``)
- cloudevents/spec ``c2845a49bc9831be02f305a4a792401b932d77d4`` (``--cloudevents-rev``)
- OAI/OpenAPI-Specification ``6d17b631fff35186c495b9e7d340222e19d60a71`` (fixed: the last JSON
  ``schemas/v3.0/schema.json`` before the repository moved it to YAML)
- geojson/schema ``e6851e5ed9da4cf1e3a39330293de798c8bda825`` and
  ``f2bc6e8f1e8e1ba376d901914ecf8d0fed947d6e`` (fixed, per file; see ``GEOJSON``)

Every entry's ``source`` is the GitHub blob URL of its file at the commit it was read from.

Run from the repository root: ``python tests/data/json_schemas/scripts/gather_public.py [options]``
(about two minutes; most of it is reading the JSONSchemaBench files one ``git show`` at a time).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CORPUS_DIR, dumps, git_show, problems, refs, write_jsonl

MIRRORS = Path("/work/.mirror")
SCHEMASTORE_REV = "3b6446ad8a077bac56f4a4796c0b7fd88927fc8e"
JSONSCHEMABENCH_REV = "ba103c73756198dd9b149ddc7db7867da7a077f6"
CLOUDEVENTS_REV = "c2845a49bc9831be02f305a4a792401b932d77d4"
OPENAPI_REV = "6d17b631fff35186c495b9e7d340222e19d60a71"
GEOJSON = [  # (commit, file)
    ("e6851e5ed9da4cf1e3a39330293de798c8bda825", "Feature.json"),
    ("f2bc6e8f1e8e1ba376d901914ecf8d0fed947d6e", "FeatureCollection.json"),
    ("e6851e5ed9da4cf1e3a39330293de798c8bda825", "GeoJSON.json"),
    ("f2bc6e8f1e8e1ba376d901914ecf8d0fed947d6e", "Polygon.json"),
]

SCHEMASTORE_DIR = "src/schemas/json"
# stems of src/schemas/json/<stem>.json: tool configs ...
SCHEMASTORE_CONFIG = """
prettierrc babelrc dependabot-2.0 github-action github-funding github-issue-config github-release-config
codecov nodemon lerna jest mocharc chart chart-lock kustomization netlify now semantic-release stale bower
buf.work buf.gen dart-test elm dotnet-tools launchsettings libman mkdocs-1.6 nest-cli pm2-ecosystem pulumi
rust-toolchain stylua taplo treefmt tmuxinator yamllint lefthook git-cliff gitleaks kind-cluster appveyor
cloudbuild helmfile sqlc-2.0 partial-black partial-poetry partial-mypy partial-pytest tox maturin
commitlintrc lintstagedrc.schema size-limit markdown-link-check container-structure-test codeclimate
docker-bake chrome-manifest packer pnpm-workspace prometheus prometheus.rules slack-app-manifest travis
pre-commit-hooks pre-commit-config prisma clangd web-manifest
""".split()
# ... and data formats
SCHEMASTORE_API = """
json-patch json-api-1.0 problem-object-rfc9457 sourcemap-v3 s3-bucket-cors avro-avsc grafana-dashboard-5.x
feed-1 sarif-1.0.0 unist tmlanguage content-security-policy-report-2 assetlinks apple-app-site-association
openweather.current bigquery-table schema-draft-v4 metaschema-draft-07-unofficial-strict compile-commands
""".split()

BENCH = [  # (JSONSchemaBench data folder, kind, how many to pick)
    ("Github_trivial", "bench", 8),
    ("Github_easy", "bench", 14),
    ("Github_medium", "bench", 14),
    ("Github_hard", "bench", 12),
    ("Github_ultra", "bench", 3),
    ("Glaiveai2K", "function_call", 20),
    ("Kubernetes", "api", 10),
    ("Snowplow", "api", 10),
    ("WashingtonPost", "api", 6),
    ("JsonSchemaStore", "config", 8),
]


def log(*args) -> None:
    print(*args, file=sys.stderr)


def resolve(repo: Path, rev: str) -> str:
    """The full commit id that ``rev`` names in ``repo``."""
    cmd = ["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def ls_files(repo: Path, rev: str, path: str) -> list[tuple[str, int]]:
    """(path, size in bytes) of every blob under ``path`` at ``rev``, sorted by path."""
    cmd = ["git", "-C", str(repo), "ls-tree", "-r", "-l", rev, path]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        meta, file_path = line.split("\t")
        size = meta.split()[3]
        if size.isdigit():  # submodules list "-"
            rows.append((file_path, int(size)))
    return sorted(rows)


def load_json(repo: Path, rev: str, path: str):
    return json.loads(git_show(repo, rev, path))


def pointer_get(doc, pointer: str):
    """The node at JSON pointer ``pointer`` (without the leading ``#``) in ``doc``."""
    node = doc
    for part in [p for p in pointer.split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def inline_sibling_refs(schema: dict, read_sibling: Callable[[str], dict]) -> tuple[dict, list[str]]:
    """Copies ``$ref``s into sibling SchemaStore files (``base.json#/definitions/path``) into the schema.

    Each target goes into the schema's ``definitions`` (``$defs`` if it has those) as
    ``inlined_<file>_<last pointer part>`` and the ``$ref`` is pointed there. Raises ValueError for a
    remote (``http...``) ``$ref`` or a target that has ``$ref``s of its own. Returns the new schema and
    the names of the added definitions.
    """
    schema = copy.deepcopy(schema)
    container = "$defs" if "$defs" in schema else "definitions"
    added = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                if ref.startswith("http"):
                    raise ValueError("remote ref " + ref)
                file, _, pointer = ref.partition("#")
                file_name = file if file.endswith(".json") else file + ".json"
                target = pointer_get(read_sibling(file_name), pointer)
                if refs(target):
                    raise ValueError("target has refs " + ref)
                stem = file_name[:-5].replace("-", "_").replace(".", "_")
                key = f"inlined_{stem}_{pointer.rstrip('/').split('/')[-1] or 'root'}"
                added[key] = copy.deepcopy(target)
                node["$ref"] = f"#/{container}/{key}"
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    if added:
        schema.setdefault(container, {}).update(added)
    return schema, sorted(added)


class Gatherer:
    """Reads the clones and makes corpus entries, skipping schemas already taken (by content)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.seen: set[str] = set()

    def entry(self, name: str, kind: str, source: str, schema, note: str | None = None) -> dict | None:
        problem = problems(schema)
        if problem:
            log("DROP", name, problem)
            return None
        digest = hashlib.sha256(dumps(schema).encode()).hexdigest()
        if digest in self.seen:
            log("DUP", name)
            return None
        self.seen.add(digest)
        if note:
            source += f" ({note})"
        return {"name": name, "kind": kind, "source": source, "schema": schema}

    def schemastore(self) -> list[dict]:
        repo = self.args.schemastore
        rev = resolve(repo, self.args.schemastore_rev)

        def read_sibling(file_name: str) -> dict:
            return load_json(repo, rev, f"{SCHEMASTORE_DIR}/{file_name}")

        out = []
        for kind, stems in (("config", SCHEMASTORE_CONFIG), ("api", SCHEMASTORE_API)):
            for stem in stems:
                path = f"{SCHEMASTORE_DIR}/{stem}.json"
                try:
                    schema, added = inline_sibling_refs(load_json(repo, rev, path), read_sibling)
                except (ValueError, LookupError, subprocess.CalledProcessError) as e:
                    log("SKIP", stem, e)
                    continue
                note = "sibling-file $refs inlined into definitions: " + ", ".join(added) if added else None
                url = f"https://github.com/SchemaStore/schemastore/blob/{rev}/{path}"
                e = self.entry("schemastore." + stem, kind, url, schema, note)
                if e:
                    out.append(e)
        return out

    def specs(self) -> list[dict]:
        out = []
        path = "schemas/v3.0/schema.json"
        schema = load_json(self.args.openapi, OPENAPI_REV, path)
        url = f"https://github.com/OAI/OpenAPI-Specification/blob/{OPENAPI_REV}/{path}"
        out.append(self.entry("spec.openapi_3_0", "api", url, schema))
        for rev, path in GEOJSON:
            schema = load_json(self.args.geojson, rev, path)
            url = f"https://github.com/geojson/schema/blob/{rev}/{path}"
            out.append(self.entry("spec.geojson_" + path[:-5].lower(), "api", url, schema))
        rev = resolve(self.args.cloudevents, self.args.cloudevents_rev)
        path = "cloudevents/formats/cloudevents.json"
        schema = load_json(self.args.cloudevents, rev, path)
        url = f"https://github.com/cloudevents/spec/blob/{rev}/{path}"
        out.append(self.entry("spec.cloudevents_1_0", "api", url, schema))
        return [e for e in out if e]

    def jsonschemabench(self) -> list[dict]:
        repo = self.args.jsonschemabench
        rev = resolve(repo, self.args.jsonschemabench_rev)
        out = []
        for folder, kind, n in BENCH:
            cap = 60_000 if folder == "Github_ultra" else 30_000
            eligible = []
            # files far over the cap rarely shrink under it when re-serialised compactly: not read
            for path, size in ls_files(repo, rev, f"data/{folder}"):
                if size >= cap * 1.6:
                    continue
                try:
                    schema = load_json(repo, rev, path)
                except ValueError:  # not JSON, or not UTF-8
                    continue
                if problems(schema, cap) is None:
                    eligible.append((path, schema))
            # Glaive has many near-copies of one function (calculate_area_<hash>): keep one per name
            if folder == "Glaiveai2K":
                by_function = {}
                for path, schema in eligible:
                    by_function.setdefault(path.split("/")[-1].rsplit("_", 1)[0], (path, schema))
                eligible = [by_function[k] for k in sorted(by_function)]
            step = len(eligible) / n
            picked = 0
            for path, schema in (eligible[int(i * step)] for i in range(n)):
                stem = path.split("/")[-1][:-5]
                url = f"https://github.com/guidance-ai/jsonschemabench/blob/{rev}/{path}"
                e = self.entry(f"jsonschemabench.{folder.lower()}.{stem}", kind, url, schema)
                if e:
                    out.append(e)
                    picked += 1
            log(folder, "eligible", len(eligible), "picked", picked)
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    clones = parser.add_argument_group("git clones")
    for option, name in (
        ("schemastore", "SchemaStore+schemastore"),
        ("jsonschemabench", "guidance-ai+jsonschemabench"),
        ("openapi", "OAI+OpenAPI-Specification"),
        ("geojson", "geojson+schema"),
        ("cloudevents", "cloudevents+spec"),
    ):
        default = MIRRORS / name / "repo"
        clones.add_argument(f"--{option}", type=Path, default=default, help=f"default: {default}")
    revs = parser.add_argument_group("commits (any git revision; the URLs name the commit it resolves to)")
    revs.add_argument("--schemastore-rev", default=SCHEMASTORE_REV, help="default: %(default)s")
    revs.add_argument("--jsonschemabench-rev", default=JSONSCHEMABENCH_REV, help="default: %(default)s")
    revs.add_argument("--cloudevents-rev", default=CLOUDEVENTS_REV, help="default: %(default)s")
    parser.add_argument("--out-dir", type=Path, default=CORPUS_DIR, help="default: the corpus folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for option in ("schemastore", "jsonschemabench", "openapi", "geojson", "cloudevents"):
        path = getattr(args, option)
        if not path.is_dir():
            sys.exit(f"--{option}: no git clone at {path}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    gatherer = Gatherer(args)
    # this order decides which of two identical schemas is kept
    real_world = gatherer.schemastore() + gatherer.specs()
    bench = gatherer.jsonschemabench()
    for file_name, entries in (("real_world.jsonl", real_world), ("jsonschemabench.jsonl", bench)):
        write_jsonl(args.out_dir / file_name, entries)
        log("wrote", len(entries), "schemas to", args.out_dir / file_name)


if __name__ == "__main__":
    main()
