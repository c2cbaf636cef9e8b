"""CacheView without a browser: subscription, throttled pushes, button actions, timeline data."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.cache.stats import CacheEvent
from mlmf_lab.cache.timeline import cache_view_state, event_marks, held_series, last_uses


def test_the_cache_pushes_every_event_to_its_subscribers_until_they_leave() -> None:
    cache = ml.ModelCache("1MiB")
    seen: list[CacheEvent] = []
    stop = cache.subscribe(seen.append)
    cache.put("a", torch.zeros(10))
    cache.get("a")
    cache.get("b")
    cache.pin("a")
    assert [e.event for e in seen] == ["put", "hit", "miss", "pin"]
    assert seen[0].held == 40 and seen[-1].key == "'a'"
    stop()
    cache.get("a")
    assert len(seen) == 4


def test_a_broken_subscriber_is_dropped_and_the_cache_keeps_working() -> None:
    cache = ml.ModelCache("1MiB")

    def broken(_: CacheEvent) -> None:
        raise RuntimeError("boom")

    cache.subscribe(broken)
    with pytest.warns(RuntimeWarning, match="raised RuntimeError\\('boom'\\) and was removed"):
        cache.put("a", torch.zeros(1))
    cache.put("b", torch.zeros(1))  # no second warning: it is gone
    assert len(cache) == 2


def test_entries_are_found_by_the_key_rows_list() -> None:
    cache = ml.ModelCache("1MiB")
    cache.put(("model", 1), torch.zeros(4))
    (row,) = cache.rows()
    cache.pin(row["key"])  # the label "('model', 1)", as a view sends it back
    assert cache.rows()[0]["pinned"] is True


def test_timeline_functions_bound_what_is_drawn() -> None:
    events = [CacheEvent(float(i), "hit" if i % 2 else "load", f"k{i % 3}", 1, i % 7)
              for i in range(1000)]
    series = held_series(events, 100)
    assert len(series) == 100 and all(p[1] == 6 for p in series)  # each bucket keeps its peak
    assert len(event_marks(events, 50)) == 50 and event_marks(events, 50)[-1][0] == 999.0
    assert last_uses(events) == {"k0": 999.0, "k1": 997.0, "k2": 998.0}
    with pytest.raises(ValueError, match="max_points must be at least 1"):
        held_series(events, 0)


def test_view_state_buttons_and_repr() -> None:
    cache = ml.ModelCache("1MiB")
    cache.put("alpha", torch.zeros(256))
    cache.put("beta", torch.zeros(512))
    view = ml.views.CacheView(cache)
    assert repr(view) == "CacheView(ModelCache(2 entries, 3.0 KiB of 1.0 MiB), live)"
    state = view.state
    assert state["budget"] == 2**20 and state["held"] == 3072
    assert [e["key"] for e in state["entries"]] == ["'beta'", "'alpha'"]
    view._on_action(view, {"action": "pin", "key": "'alpha'"}, [])
    assert {r["key"]: r["pinned"] for r in cache.rows()} == {"'beta'": False, "'alpha'": True}
    assert next(e for e in view.state["entries"] if e["key"] == "'alpha'")["pinned"]
    view._on_action(view, {"action": "evict", "key": "'beta'"}, [])
    assert cache.keys() == ["'alpha'"] and view.error == ""
    view._on_action(view, {"action": "explode", "key": "'alpha'"}, [])
    assert view.error == "unknown cache action 'explode'; supported: pin, unpin, evict"
    view._on_action(view, {"action": "evict", "key": "'gone'"}, [])
    assert view.error == "\"'gone'\" is not in the cache"
    data, _ = view._repr_mimebundle_()
    assert data["image/png"].startswith("iVBOR") and data["text/plain"] == repr(view)
    view.close()


def test_pushes_are_throttled_and_arrive_from_a_background_warm_up(tmp_path) -> None:
    cache = ml.ModelCache("10MiB")
    view = ml.views.CacheView(cache, max_rate=10)
    sent: list[int] = []
    view.observe(lambda ch: sent.append(ch["new"]["counts"]["lookups"]), names=["state"])
    for i in range(2000):  # a burst: 2000 lookups in well under a second
        cache.get(f"k{i}")
    time.sleep(0.35)
    assert 1 <= len(sent) <= 5 and sent[-1] == 2000
    sent.clear()
    job = cache.warm([f"w{i}" for i in range(5)], loader=lambda k: torch.zeros(8),
                     progress=False)
    job.wait()
    time.sleep(0.25)
    assert job.errors == {} and sent and sent[-1] == 2005
    assert threading.current_thread() is threading.main_thread()
    view.close()
    before = view._throttle.runs
    cache.get("w0")
    time.sleep(0.2)
    assert view._throttle.runs == before  # closed: no longer subscribed


def test_cache_view_state_is_json_data() -> None:
    import json

    cache = ml.ModelCache("1MiB")
    cache.put("a", torch.zeros(3))
    state = cache_view_state(cache.stats(), cache.rows())
    assert json.loads(json.dumps(state)) == state
    assert state["entries"][0]["last_use"] is not None


def test_cache_view_refuses_what_is_not_a_model_cache() -> None:
    with pytest.raises(ml.MLMFError, match="CacheView follows an ml.ModelCache, found dict"):
        ml.views.CacheView({})
    with pytest.raises(ml.MLMFError, match="max_rate must be a positive number"):
        ml.views.CacheView(ml.ModelCache("1MiB"), max_rate=0)
