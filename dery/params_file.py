"""Reading a params file safely: every way the file itself can be wrong ends as one plain paragraph.

Snakemake loads ``--configfile`` with its own YAML loader, which lets duplicate keys overwrite each
other silently and reports a missing or non-UTF-8 file with a traceback; ``dery run FILE`` reads the
file here first, and the workflow re-reads the files Snakemake loaded with the same rules. Sizes are
bounded twice: the bytes read (a params file is a few KB) and the values it expands to, since a few
lines of YAML anchors and aliases ("billion laughs") expand to billions of values on traversal.
"""
from __future__ import annotations

import os
import reprlib
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 256 * 1024   # params/paper.yaml, the largest we ship, is ~10 KB
MAX_VALUES = 20_000      # values after alias expansion; params/paper.yaml has ~700


class ParamsFileError(ValueError):
    """The file cannot be used as a params file; ``str()`` is the user-facing paragraph."""


def clip(value: Any, limit: int = 120, quote: bool = True) -> str:
    """A value as a message may quote it: never more than ``limit`` characters, however large the value
    (``quote=False``: a string as it is, not its repr)."""
    if not quote and isinstance(value, str):
        return value if len(value) <= limit else value[: limit - 3] + "..."
    r = reprlib.Repr()  # keyword arguments only from Python 3.12
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 3, 6, 6, 6, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def count_values(obj: Any, limit: int = MAX_VALUES) -> int:
    """Values in ``obj`` as a traversal sees them (aliases count every time), stopping past ``limit``."""
    seen, stack = 0, [obj]
    while stack and seen <= limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return seen


def too_many_values(obj: Any, where: str, limit: int = MAX_VALUES) -> str | None:
    if count_values(obj, limit) <= limit:
        return None
    return (f"{where} expands to more than {limit:,} values (YAML anchors and aliases repeat a value each time they "
            f"are used; a params file has a few hundred): write the values out, or remove the aliases.")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader (plain values only, no Python tags) that refuses a key given twice in one mapping."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    first: dict = {}
    for key_node, _ in node.value:  # the keys as written (a `<<` merge may override keys on purpose)
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key is itself a list or mapping",
                                                    key_node.start_mark) from None
        if key in first:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key `{clip(key, 60).strip(chr(39))}` is given twice in one mapping "
                f"(first on line {first[key]}); "
                "YAML would silently keep the last one: merge the two", key_node.start_mark)
        first[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _fail(path: str, problem: str) -> ParamsFileError:
    return ParamsFileError(f"dery: the params file {path} cannot be used (nothing was run, no result was touched): "
                           f"{problem}")


def load(path: str | os.PathLike) -> dict:
    """The params file as a dict, or ParamsFileError naming the file, the problem and the fix."""
    shown = os.fspath(path)
    p = Path(path)
    if not p.exists():
        near = sorted(str(q) for q in Path("params").glob("*.yaml"))[:8]
        return_hint = f" (the project's params files: {', '.join(near)})" if near else ""
        raise _fail(shown, f"it does not exist (looked in {Path.cwd()}); give the path of a YAML file relative to "
                           f"the project folder{return_hint}.")
    if p.is_dir():
        raise _fail(shown, "it is a folder, not a file; give the path of a YAML file inside it.")
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise _fail(shown, f"it is {size / 1024:,.0f} KB, and a params file is a few KB (dery reads at most "
                               f"{MAX_BYTES // 1024} KB): is it a data or checkpoint file? Give the YAML params file.")
        raw = p.read_bytes()
    except PermissionError:
        raise _fail(shown, f"it cannot be read (permission denied); make it readable (`chmod u+r {shown}`).") from None
    except OSError as exc:
        raise _fail(shown, f"it cannot be read ({exc.strerror or exc}); check the path and the disk.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _fail(shown, f"it is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save it as UTF-8 "
                           "(a text editor's 'save with encoding', or `iconv -t UTF-8`).") from None
    if not text.strip():
        raise _fail(shown, "it is empty; start from a copy of params/default.yaml.")
    try:
        docs = list(yaml.load_all(text, Loader=_StrictLoader))  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = exc.problem or str(exc)
        if "could not determine a constructor for the tag" in problem:
            tag = problem.split("'")[1].replace("tag:yaml.org,2002:", "!!") if "'" in problem else "?"
            raise _fail(shown, f"{where} uses the tag {tag}, and a params file holds plain values (numbers, "
                               "strings, lists, mappings): remove the tag.") from None
        if isinstance(exc, yaml.constructor.ConstructorError):
            raise _fail(shown, f"at {where}, {problem}.") from None
        raise _fail(shown, f"it is not valid YAML at {where}: {problem}. Fix that line (indent with spaces, not "
                           "tabs; quote strings that contain ': ').") from None
    except yaml.YAMLError as exc:
        raise _fail(shown, f"it is not valid YAML ({clip(str(exc), 200)}).") from None
    if len(docs) != 1:
        raise _fail(shown, f"it holds {len(docs)} YAML documents (separated by `---`); a params file is one.")
    config = docs[0]
    if not isinstance(config, dict):
        raise _fail(shown, f"its top level is {type(config).__name__} {clip(config, 60)}, not a mapping of keys "
                           "(name:, seed:, zoo:, ...); start from a copy of params/default.yaml.")
    problem = too_many_values(config, "it")
    if problem:
        raise _fail(shown, problem)
    return config
