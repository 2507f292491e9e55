"""Pipeline validation: each kind of error, with the file and line, before anything starts."""

from __future__ import annotations

import textwrap

import pytest

from posegraph.config import load
from posegraph.graph import Graph, GraphError


def load_text(tmp_path, text: str, **kw):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return load(path, **kw)


def problems(tmp_path, text: str) -> list[str]:
    with pytest.raises(GraphError) as exc:
        load_text(tmp_path, text)
    return [str(p) for p in exc.value.problems]


def test_valid_pipeline_loads(tmp_path):
    g = load_text(
        tmp_path,
        """
        pipeline: ok
        latency_budget_ms: 150
        nodes:
          - name: cam
            type: source.synthetic
            with: {width: 64, height: 48, frames: 5}
          - name: out
            type: sink.jsonl
            from: cam
            queue: {capacity: 2, policy: latest}
            with: {path: out.jsonl}
    """,
    )
    assert g.name == "ok" and g.order() == ["cam", "out"]
    assert g.policy("out") == "latest" and g.latency_budget == pytest.approx(0.15)


def test_unknown_type_names_the_nearest(tmp_path):
    (p,) = problems(
        tmp_path,
        """
        nodes:
          - name: cam
            type: source.vidoe
            with: {uri: x.mp4}
    """,
    )
    assert "p.yaml:4:" in p and "source.video" in p and "unknown node type" in p


def test_unknown_param_missing_param_and_wrong_type(tmp_path):
    found = problems(
        tmp_path,
        """
        nodes:
          - name: cam
            type: source.synthetic
            with:
              widht: 64
              fps: fast
          - name: out
            type: sink.jsonl
            from: cam
    """,
    )
    text = "\n".join(found)
    assert "p.yaml:6:" in text and "unknown parameter 'widht'" in text and "width" in text
    assert "p.yaml:7:" in text and "'fps' must be number" in text
    assert "p.yaml:8:" in text and "missing parameter 'path'" in text


def test_missing_and_unknown_input(tmp_path):
    found = "\n".join(
        problems(
            tmp_path,
            """
        nodes:
          - name: cam
            type: source.synthetic
          - name: mid
            type: util.passthrough
          - name: out
            type: sink.null
            from: cma
    """,
        )
    )
    assert "p.yaml:5:" in found and "'mid' (util.passthrough) has no input" in found
    assert "p.yaml:9:" in found and "unknown node 'cma'" in found and "did you mean cam" in found


def test_cycle_and_duplicate(tmp_path):
    found = "\n".join(
        problems(
            tmp_path,
            """
        nodes:
          - name: cam
            type: source.synthetic
          - name: a
            type: util.passthrough
            from: [cam, b]
          - name: b
            type: util.passthrough
            from: a
          - name: b
            type: sink.null
            from: a
    """,
        )
    )
    assert "cycle" in found and ("a <- b <- a" in found or "b <- a <- b" in found)
    assert "p.yaml:11:" in found and "duplicate node name 'b'" in found


def test_yaml_syntax_error_has_a_line(tmp_path):
    (p,) = problems(
        tmp_path,
        """
        nodes:
          - name: cam
            type: source.synthetic
            with: {width: 64
          - name: out
    """,
    )
    assert p.startswith(str(tmp_path / "p.yaml") + ":")


def test_unknown_keys(tmp_path):
    found = "\n".join(
        problems(
            tmp_path,
            """
        pipline: x
        nodes:
          - name: cam
            type: source.synthetic
            wiht: {}
    """,
        )
    )
    assert "p.yaml:2:" in found and "did you mean 'pipeline'" in found
    assert "p.yaml:6:" in found and "did you mean 'with'" in found


def test_runtime_options_are_checked(tmp_path):
    found = "\n".join(
        problems(
            tmp_path,
            """
        pipeline: x
        runtime:
          in_flite: 2
          in_flight: 0
          transport: tpc
          curve: "no"
          hang_timeout_s: -1
          max_restarts: 2.5
          drain_timeout_s: 0
          shm_slots: 16
          metrics_port: 70000
          metrics_host: ""
          setup_timeout_s: "10 min"
        nodes:
          - name: cam
            type: source.synthetic
    """,
        )
    )
    assert "p.yaml:4:" in found and "did you mean 'in_flight'" in found
    assert "p.yaml:5:" in found and "in_flight must be a whole number >= 1" in found
    assert "p.yaml:6:" in found and "transport must be ipc (one host, the default) or tcp" in found
    assert "p.yaml:7:" in found and "curve must be true or false, got 'no'" in found
    assert "p.yaml:8:" in found and "hang_timeout_s must be a number of seconds >= 0" in found
    assert "p.yaml:9:" in found and "max_restarts must be a whole number >= 0, got 2.5" in found
    assert "p.yaml:10:" in found and "drain_timeout_s must be a positive number" in found
    assert "p.yaml:14:" in found and "setup_timeout_s must be a number of seconds >= 0" in found
    assert "shm_slots" not in found
    assert "p.yaml:12:" in found and "metrics_port must be a port number (1-65535)" in found
    assert "p.yaml:13:" in found and "metrics_host must be an address to listen on" in found


def test_placement_is_checked(tmp_path):
    found = "\n".join(
        problems(
            tmp_path,
            """
        pipeline: x
        nodes:
          - name: cam
            type: source.synthetic
            place: site_b
          - name: a
            type: util.passthrough
            from: cam
            process: work
            place: site_a
          - name: b
            type: util.passthrough
            from: a
            process: work
    """,
        )
    )
    assert "p.yaml:6:" in found and "place 'site_b' needs the runtime option cluster" in found
    assert "p.yaml:11:" in found and "place 'site_a' needs the runtime option cluster" in found
    assert "nodes 'a' and 'b' share process 'work' but not their place" in found
    found = "\n".join(
        problems(
            tmp_path,
            """
        pipeline: x
        runtime: {cluster: auto}
        nodes:
          - name: cam
            type: source.synthetic
            place: site_b
    """,
        )
    )
    assert "cluster: nodes on other hosts need transport: tcp" in found
    assert "needs the runtime option cluster" not in found


def test_env_interpolation_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_FPS", "12.5")
    monkeypatch.delenv("OUT_PATH", raising=False)
    g = load_text(
        tmp_path,
        """
        nodes:
          - name: cam
            type: source.synthetic
            with: {fps: "${CAM_FPS}", width: "${WIDTH:-80}"}
          - name: out
            type: sink.jsonl
            from: cam
            with: {path: "${OUT_PATH:-runs}/out.jsonl"}
    """,
        overrides=["cam.height=32", "out.events=false"],
    )
    assert g.nodes["cam"].params == {"fps": 12.5, "width": 80, "height": 32}
    assert g.nodes["out"].params == {"path": "runs/out.jsonl", "events": False}


def test_unset_env_is_an_error_with_a_line(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR", raising=False)
    (p,) = problems(
        tmp_path,
        """
        nodes:
          - name: cam
            type: source.video
            with: {uri: "${NO_SUCH_VAR}"}
    """,
    )
    assert "p.yaml:5:" in p and "NO_SUCH_VAR is not set" in p


def test_override_of_unknown_node(tmp_path):
    with pytest.raises(GraphError, match="no node 'cma'; did you mean cam"):
        load_text(
            tmp_path,
            """
            nodes:
              - name: cam
                type: source.synthetic
        """,
            overrides=["cma.fps=3"],
        )


def test_python_graph_and_custom_node_type():
    g = Graph("py")
    cam = g.add("cam", "source.synthetic", width=32, height=32, frames=3)
    g.add("mid", "tests.helpers.custom_nodes:Stamp", cam, label="x")
    g.add("out", "sink.null", "mid")
    g.validate()
    assert g.order() == ["cam", "mid", "out"]
    assert "digraph" in g.to_dot() and '"cam" -> "mid"' in g.to_dot()
    # placed on a cluster host: validated, and shown where it runs
    g.runtime.transport, g.runtime.cluster = "tcp", "auto"
    g.add("far", "sink.null", "mid", place="site_b")
    g.validate()
    assert 'label="far\\nsink.null\\n@site_b"' in g.to_dot()
    from posegraph.runtime import PipelineError

    with pytest.raises(PipelineError, match="nodes far have place: other hosts run only with"):
        g.run(executor="inproc")
