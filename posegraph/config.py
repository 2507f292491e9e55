"""YAML -> Graph: the pipeline schema, ``${ENV}`` interpolation and errors with file and line."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from posegraph.graph import (
    POLICIES,
    Graph,
    GraphError,
    NodeSpec,
    Problem,
    QueueSpec,
    RuntimeOptions,
    Where,
)

TOP_KEYS = ("pipeline", "latency_budget_ms", "runtime", "nodes")
NODE_KEYS = ("name", "type", "from", "with", "process", "replicas", "queue", "place")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Map(dict):
    """A mapping that remembers the line of itself and of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.MarkedYAMLError(
                "while reading a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


class EnvError(ValueError):
    pass


def interpolate(text: str, env: dict[str, str] | None = None) -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}``; a whole-value reference is re-typed."""
    env = os.environ if env is None else env

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise EnvError(
            f"environment variable {name} is not set: export it, or write "
            f"${{{name}:-default}} in the file"
        )

    value = _ENV.sub(sub, text)
    if _ENV.fullmatch(text.strip()):
        return yaml.safe_load(value) if value.strip() else ""
    return value


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> Any:
    value = loader.construct_scalar(node)
    if "${" not in value:
        return value
    try:
        return interpolate(value)
    except EnvError as exc:
        raise yaml.MarkedYAMLError(None, None, str(exc), node.start_mark) from None


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def _line(m: Any, key: str) -> int | None:
    return getattr(m, "key_lines", {}).get(key) or getattr(m, "line", None)


#: the pipelines that come with posegraph (the repository's pipelines/, in the package)
BUILTIN_PIPELINES = Path(__file__).parent / "pipelines"


def builtin_pipelines() -> list[str]:
    return sorted(p.stem for p in BUILTIN_PIPELINES.glob("*.yaml"))


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> Graph:
    """Read a pipeline file into a validated Graph; raise GraphError listing every problem.

    A name that is no file but one of the pipelines that come with posegraph
    (``surveillance``, ``realtime``...) reads that one, so that they run from a pip install.
    """
    path = Path(path)
    if not path.is_file():
        builtin = BUILTIN_PIPELINES / f"{path.name.removesuffix('.yaml')}.yaml"
        if path.parent == Path(".") and builtin.is_file():
            path = builtin
    file = str(path)
    if not path.is_file():
        raise GraphError(
            [
                Problem(
                    f"pipeline file not found: {file} (give the path of a YAML pipeline, or "
                    f"the name of one that comes with posegraph: {', '.join(builtin_pipelines())})"
                )
            ]
        )
    try:
        doc = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        raise GraphError([Problem(f"{exc.problem}", Where(file, line))]) from None
    except yaml.YAMLError as exc:
        raise GraphError([Problem(f"not valid YAML: {exc}", Where(file))]) from None
    graph = from_dict(doc, file=file, base_dir=path.parent)
    for item in overrides or []:
        key, eq, raw = item.partition("=")
        if not eq:
            raise GraphError([Problem(f"--set {item}: write it as node.param=value")])
        graph.set_param(key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return graph.validate()


def from_dict(doc: Any, file: str | None = None, base_dir: Path | None = None) -> Graph:
    """Build a Graph from the parsed YAML document (not yet validated)."""
    problems: list[Problem] = []
    where = Where(file, 1)
    if not isinstance(doc, dict):
        raise GraphError(
            [Problem("a pipeline file is a mapping with 'pipeline' and 'nodes'", where)]
        )
    for key in doc:
        if key not in TOP_KEYS:
            near = difflib.get_close_matches(str(key), TOP_KEYS, 1)
            hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(TOP_KEYS)})"
            problems.append(
                Problem(f"unknown top-level key {key!r}{hint}", Where(file, _line(doc, key)))
            )
    runtime = RuntimeOptions()
    rt = doc.get("runtime") or {}
    if not isinstance(rt, dict):
        problems.append(Problem("'runtime' must be a mapping", Where(file, _line(doc, "runtime"))))
        rt = {}
    for key, value in rt.items():
        if not hasattr(runtime, key):
            near = difflib.get_close_matches(str(key), vars(runtime), 1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            problems.append(
                Problem(f"unknown runtime option {key!r}{hint}", Where(file, _line(rt, key)))
            )
        else:
            setattr(runtime, key, value)
    in_flight = runtime.in_flight
    if in_flight is not None and (
        isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1
    ):
        problems.append(
            Problem(
                f"runtime option in_flight must be a whole number >= 1 (1: one frame at a "
                f"time) or null (one per stream), got {in_flight!r}",
                Where(file, _line(rt, "in_flight")),
            )
        )
        runtime.in_flight = None
    if runtime.transport not in ("ipc", "tcp"):
        problems.append(
            Problem(
                f"runtime option transport must be ipc (one host, the default) or tcp, got "
                f"{runtime.transport!r}",
                Where(file, _line(rt, "transport")),
            )
        )
        runtime.transport = "ipc"
    for key in ("shm", "curve"):
        if not isinstance(getattr(runtime, key), bool):
            problems.append(
                Problem(
                    f"runtime option {key} must be true or false, got {getattr(runtime, key)!r}",
                    Where(file, _line(rt, key)),
                )
            )
            setattr(runtime, key, True)
    if runtime.cluster is not None and (
        not isinstance(runtime.cluster, str) or not runtime.cluster.strip()
    ):
        problems.append(
            Problem(
                "runtime option cluster must be the Ray cluster's address (auto, HOST:6379, "
                f"ray://HOST:10001) or null, got {runtime.cluster!r}",
                Where(file, _line(rt, "cluster")),
            )
        )
        runtime.cluster = None
    port = runtime.metrics_port
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
    ):
        problems.append(
            Problem(
                f"runtime option metrics_port must be a port number (1-65535) or null, "
                f"got {port!r}",
                Where(file, _line(rt, "metrics_port")),
            )
        )
        runtime.metrics_port = None
    if not isinstance(runtime.metrics_host, str) or not runtime.metrics_host.strip():
        problems.append(
            Problem(
                "runtime option metrics_host must be an address to listen on (127.0.0.1, "
                f"0.0.0.0), got {runtime.metrics_host!r}",
                Where(file, _line(rt, "metrics_host")),
            )
        )
        runtime.metrics_host = "127.0.0.1"
    defaults = RuntimeOptions()
    for key, whole, least, what in (
        ("shm_slots", True, 1, "a whole number >= 1"),
        ("max_restarts", True, 0, "a whole number >= 0"),
        ("restart_window_s", False, None, "a positive number of seconds"),
        ("drain_timeout_s", False, None, "a positive number of seconds"),
        ("reorder_timeout_s", False, None, "a positive number of seconds"),
        ("hang_timeout_s", False, 0, "a number of seconds >= 0 (0: not watched)"),
        ("setup_timeout_s", False, 0, "a number of seconds >= 0 (0: not watched)"),
        ("skip_warn_s", False, 0, "a number of seconds >= 0 (0: not said)"),
    ):
        value = getattr(runtime, key)
        kinds = int if whole else int | float
        if (
            isinstance(value, bool)
            or not isinstance(value, kinds)
            or (value <= 0 if least is None else value < least)
        ):
            problems.append(
                Problem(
                    f"runtime option {key} must be {what}, got {value!r}",
                    Where(file, _line(rt, key)),
                )
            )
            setattr(runtime, key, getattr(defaults, key))
    budget = doc.get("latency_budget_ms")
    if budget is not None and (not isinstance(budget, int | float) or budget <= 0):
        problems.append(
            Problem(
                f"latency_budget_ms must be a positive number, got {budget!r}",
                Where(file, _line(doc, "latency_budget_ms")),
            )
        )
        budget = None
    graph = Graph(
        str(doc.get("pipeline") or Path(file or "pipeline").stem),
        latency_budget_ms=budget,
        runtime=runtime,
        file=file,
    )
    graph.base_dir = base_dir
    nodes = doc.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        problems.append(
            Problem(
                "'nodes' must be a non-empty list of nodes", Where(file, _line(doc, "nodes") or 1)
            )
        )
        nodes = []
    for i, item in enumerate(nodes):
        spec = _node_spec(item, i, file, problems)
        if spec is not None:
            graph.add_spec(spec)
    graph.problems += problems
    return graph


def _node_spec(item: Any, i: int, file: str | None, problems: list[Problem]) -> NodeSpec | None:
    where = Where(file, getattr(item, "line", None))
    if not isinstance(item, dict):
        problems.append(Problem(f"node #{i + 1} must be a mapping with name and type", where))
        return None
    bad = False
    for key in item:
        if key not in NODE_KEYS:
            near = difflib.get_close_matches(str(key), NODE_KEYS, 1)
            hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(NODE_KEYS)})"
            problems.append(
                Problem(f"node #{i + 1}: unknown key {key!r}{hint}", Where(file, _line(item, key)))
            )
    for key in ("name", "type"):
        if not isinstance(item.get(key), str) or not item.get(key):
            problems.append(
                Problem(f"node #{i + 1}: '{key}' is required and must be a string", where)
            )
            bad = True
    if bad:
        return None
    inputs = item.get("from") or []
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
        problems.append(
            Problem(
                f"node {item['name']!r}: 'from' is a node name or a list of names",
                Where(file, _line(item, "from")),
            )
        )
        inputs = []
    params = item.get("with") or {}
    if not isinstance(params, dict):
        problems.append(
            Problem(
                f"node {item['name']!r}: 'with' must be a mapping of parameters",
                Where(file, _line(item, "with")),
            )
        )
        params = {}
    queue = item.get("queue") or {}
    qspec = QueueSpec()
    if not isinstance(queue, dict):
        problems.append(
            Problem(
                f"node {item['name']!r}: 'queue' must be a mapping like "
                f"{{capacity: 4, policy: {'|'.join(POLICIES)}}}",
                Where(file, _line(item, "queue")),
            )
        )
    else:
        for key, value in queue.items():
            if key not in ("capacity", "policy"):
                problems.append(
                    Problem(
                        f"node {item['name']!r}: unknown queue key {key!r} (capacity, policy)",
                        Where(file, _line(queue, key)),
                    )
                )
            else:
                setattr(qspec, key, value)
    process = item.get("process")
    return NodeSpec(
        name=item["name"],
        type=item["type"],
        params=dict(params),
        inputs=list(inputs),
        process=None if process is None else str(process),
        replicas=item.get("replicas", 1),
        queue=qspec,
        place=item.get("place"),
        where=where,
        param_lines={
            **{k: v for k, v in getattr(params, "key_lines", {}).items()},
            "type": _line(item, "type"),
            "queue": _line(item, "queue"),
            "replicas": _line(item, "replicas"),
            "place": _line(item, "place"),
        },
        input_line=_line(item, "from"),
    )
