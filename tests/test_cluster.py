"""Nodes placed on other hosts of a Ray cluster: a real cluster of two Ray nodes on this
machine (each with its own raylet and label), the pipeline run as users run it."""

from __future__ import annotations

import json
import os

import psutil
import pytest

from tests.conftest import (
    ROOT,
    check_resumed_after_a_gap,
    frames_and_events,
    read_jsonl,
    stuck_nodes,
    wait_for,
    write_pipeline,
)

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def cluster():
    """A head with the label ``site_a`` and a second node with ``site_b``; their workers
    import the test helpers (PYTHONPATH, which the raylets hand on)."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT)
    try:
        c = ray_cluster_utils.Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "resources": {"site_a": 1}, "include_dashboard": False},
        )
        second = c.add_node(num_cpus=1, resources={"site_b": 1})
        c.wait_for_nodes()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    c.site_b = second.node_id
    c.head = c.head_node.node_id
    yield c
    c.shutdown()


def _ray_workers() -> list[str]:
    """The names of the node processes that Ray's workers (the placed groups') started."""
    out = []
    for proc in psutil.process_iter():
        try:
            if proc.name().startswith("pg:") and "ray::" in " ".join(proc.parent().cmdline()):
                out.append(proc.name())
        except (psutil.Error, AttributeError):
            continue
    return out


def _pipeline(tmp_path, cluster, nodes, **runtime):
    return write_pipeline(
        tmp_path / "p.yaml",
        nodes,
        runtime={"transport": "tcp", "cluster": cluster.address, **runtime},
    )


def test_a_node_placed_on_another_host_runs_there_and_its_frames_arrive(
    tmp_path, posegraph, cluster
):
    out = tmp_path / "out.jsonl"
    _pipeline(
        tmp_path,
        cluster,
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "place": "site_b",
                "with": {"width": 64, "height": 48, "fps": 25, "frames": 150, "realtime": True},
            },
            {"name": "mid", "type": "util.passthrough", "from": "cam"},
            {"name": "out", "type": "sink.jsonl", "from": "mid", "with": {"path": str(out)}},
        ],
    )
    run = posegraph("run", "p.yaml", "--json")
    wait_for(lambda: len(read_jsonl(out)) > 10, 90, "frames from the other host")
    # the nodes of this host are the run's own processes; the source's is Ray's, there
    workers = run.workers()
    assert "pg:mid" in workers and "pg:out" in workers and "pg:cam" not in workers
    assert _ray_workers() == ["pg:cam"]
    code, stdout, stderr = run.wait(120)
    assert code == 0, stderr
    wait_for(lambda: not _ray_workers(), 10, "the placed process to end")
    frames, events = frames_and_events(read_jsonl(out))
    assert [f["index"] for f in frames] == list(range(150))
    assert events[-1]["event"] == "eos"
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["placement"]["cam"]["node"] == cluster.site_b != cluster.head
    assert summary["lost"] == 0 and summary["restarts"] == 0


def test_a_stuck_node_on_another_host_is_killed_and_restarted_there(tmp_path, posegraph, cluster):
    out = tmp_path / "out.jsonl"
    _pipeline(
        tmp_path,
        cluster,
        stuck_nodes(tmp_path, out, place="site_b"),
        hang_timeout_s=2,
    )
    code, stdout, stderr = posegraph("run", "p.yaml", "--json", env={"PYTHONPATH": str(ROOT)}).wait(
        120
    )
    assert code == 0, stderr
    assert "process stuck (nodes stuck) is stuck: node stuck has been in one call" in stderr
    check_resumed_after_a_gap(out)
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["restarts"] == 1
    assert summary["placement"]["stuck"]["node"] == cluster.site_b


def test_a_label_no_host_has_stops_with_one_line(tmp_path, posegraph, cluster):
    _pipeline(
        tmp_path,
        cluster,
        [
            {"name": "cam", "type": "source.synthetic", "place": "site_c", "with": {"frames": 5}},
            {"name": "out", "type": "sink.null", "from": "cam"},
        ],
    )
    code, _, stderr = posegraph("run", "p.yaml").wait(120)
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, stderr
    assert "node cam: place 'site_c': no host of the Ray cluster has that resource" in lines[0]
    assert "site_a" in lines[0] and "site_b" in lines[0]
    assert """ray start --resources '{"site_c": 1}'""" in lines[0]
