"""KV page pool and per-model block tables: invariants under random interleavings."""

from hypothesis import given, settings
from hypothesis import strategies as st

from coserve.engine.block_pool import BlockPool
from coserve.engine.kv_cache_manager import KVCacheManager
from coserve.engine.request import Request
from coserve.sampling_params import SamplingParams


def test_allocate_and_free_round_trip():
    pool = BlockPool(8)
    got = pool.allocate(5, "a")
    assert got is not None and len(set(got)) == 5
    assert pool.allocate(4, "b") is None  # nothing taken on failure
    assert pool.num_free_blocks == 3
    pool.free(got, "a")
    assert pool.num_free_blocks == 8 and pool.used_by["a"] == 0


def test_quota_caps_one_owner_but_not_others():
    pool = BlockPool(10)
    pool.quotas["a"] = 3
    assert pool.allocate(4, "a") is None
    assert pool.allocate(3, "a") is not None
    assert pool.allocate(1, "a") is None
    assert pool.allocate(7, "b") is not None


def test_freeing_a_block_owned_by_someone_else_is_refused():
    pool = BlockPool(4)
    blocks = pool.allocate(2, "a")
    try:
        pool.free(blocks, "b")
    except RuntimeError as exc:
        assert "held by 'a'" in str(exc)
    else:
        raise AssertionError("foreign free was accepted")


operations = st.lists(st.tuples(st.sampled_from(["grow", "free"]), st.integers(0, 5),
                                st.sampled_from(["m0", "m1", "m2"]), st.integers(1, 40)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(operations, st.integers(1, 30), st.integers(1, 8))
def test_pool_invariants_across_models(ops, num_blocks, block_size):
    pool = BlockPool(num_blocks)
    pool.quotas["m0"] = num_blocks // 2
    managers = {m: KVCacheManager(pool, block_size + i, owner=m) for i, m in enumerate(["m0", "m1", "m2"])}
    requests = {}
    for kind, slot, model, tokens in ops:
        key = (model, slot)
        kv = managers[model]
        if kind == "grow":
            req = requests.setdefault(key, Request(f"{model}-{slot}", [1], SamplingParams()))
            before = len(kv.block_tables.get(req.request_id, []))
            ok = kv.allocate_slots(req, tokens)
            after = len(kv.block_tables.get(req.request_id, []))
            if ok:
                req.num_computed_tokens += tokens
                assert after * kv.block_size >= req.num_computed_tokens
            else:
                assert after == before
        elif key in requests:
            kv.free(requests.pop(key))
        held = [b for m in managers.values() for table in m.block_tables.values() for b in table]
        assert len(held) == len(set(held)), "a page is owned twice"
        assert len(held) + pool.num_free_blocks == num_blocks
        assert pool.used_by.get("m0", 0) <= pool.quotas["m0"]
        for m, manager in managers.items():
            assert pool.used_by.get(m, 0) == manager.num_held_blocks
    for (model, _), req in list(requests.items()):
        managers[model].free(req)
    assert pool.num_free_blocks == num_blocks
