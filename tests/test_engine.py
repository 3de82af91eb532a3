"""Engine behaviour on the real model: sampling controls, stop conditions, bad input, page accounting."""

from __future__ import annotations

import pytest

from coserve import LLM, SamplingParams
from coserve.errors import (
    ContextLengthError,
    InvalidRequestError,
    UnknownModelError,
    WeightLoadError,
)

PROMPT = "Write a list of fruits: apple, banana,"


def _all_free(llm: LLM) -> bool:
    engine = llm.engine
    return engine.num_free_blocks == engine.num_blocks and not engine.states


def test_seeded_sampling_reproduces_and_differs_across_seeds(smollm2_llm):
    def sample(seed):
        params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=seed, max_tokens=12)
        return smollm2_llm.generate(PROMPT, params)[0].outputs[0].token_ids

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    # a seeded request samples the same whatever else shares its batch
    params = SamplingParams(temperature=1.0, seed=7, top_p=0.9, top_k=50, max_tokens=12)
    crowd = smollm2_llm.generate([PROMPT, "Hello", "The sky is"], [params, SamplingParams(temperature=1.0),
                                                                    SamplingParams(temperature=0.5)])
    assert crowd[0].outputs[0].token_ids == sample(7)


def test_n_returns_distinct_indexed_choices(smollm2_llm):
    out = smollm2_llm.generate(PROMPT, SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=8))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def test_stop_strings_cut_the_text_where_the_unstopped_run_has_them(smollm2_llm):
    greedy = SamplingParams(temperature=0, max_tokens=24)
    full = smollm2_llm.generate(PROMPT, greedy)[0].outputs[0]
    stop = full.text.split(",")[1].strip()[:4]  # part of the second generated item
    assert stop and stop in full.text
    cut = smollm2_llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=24, stop=[stop]))[0].outputs[0]
    assert cut.text == full.text[:full.text.index(stop)]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    kept = smollm2_llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=24, stop=[stop],
                                                       include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == full.text[:full.text.index(stop) + len(stop)]
    assert _all_free(smollm2_llm)


def test_stop_token_ids_eos_and_ignore_eos(smollm2_llm):
    greedy = SamplingParams(temperature=0, max_tokens=24)
    full = smollm2_llm.generate(PROMPT, greedy)[0].outputs[0]
    target = full.token_ids[5]
    first = full.token_ids.index(target)
    stopped = smollm2_llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=24,
                                                          stop_token_ids=[target]))[0].outputs[0]
    assert stopped.token_ids == full.token_ids[:first + 1]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == target

    chat = smollm2_llm.chat([{"role": "user", "content": "Say hi."}], SamplingParams(temperature=0, max_tokens=64))
    eos = smollm2_llm.tokenizer.eos_token_id
    assert chat[0].outputs[0].finish_reason == "stop" and chat[0].outputs[0].token_ids[-1] == eos
    forced = smollm2_llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                         stop_token_ids=[]))[0].outputs[0]
    assert len(forced.token_ids) == 30 and forced.finish_reason == "length"


@pytest.mark.parametrize("make,field", [
    (lambda: SamplingParams(max_tokens=0), "max_tokens"),
    (lambda: SamplingParams(temperature=-0.1), "temperature"),
    (lambda: SamplingParams(top_p=0.0), "top_p"),
    (lambda: SamplingParams(top_p=1.5), "top_p"),
    (lambda: SamplingParams(n=0), "n"),
    (lambda: SamplingParams(max_tokens="3"), "max_tokens"),
    (lambda: SamplingParams(stop=[""]), "stop"),
    (lambda: SamplingParams(stop=5), "stop"),
    (lambda: SamplingParams(stop_token_ids=3), "stop_token_ids"),
    (lambda: SamplingParams(temperature=float("nan")), "temperature"),
    (lambda: SamplingParams(temperature=float("inf")), "temperature"),
    (lambda: SamplingParams(top_p=float("nan")), "top_p"),
])
def test_bad_sampling_params_raise_typed_errors(make, field):
    with pytest.raises(InvalidRequestError) as info:
        make()
    assert info.value.param == field and field in str(info.value)


def test_bad_prompts_raise_and_leave_the_engine_usable(smollm2_llm):
    engine = smollm2_llm.engine
    with pytest.raises(InvalidRequestError, match="empty"):
        smollm2_llm.generate("", SamplingParams())
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        smollm2_llm.generate([[1, 2, 10**9]], SamplingParams())
    too_long = [1] * engine.max_model_len
    with pytest.raises(ContextLengthError, match=str(engine.max_model_len)):
        smollm2_llm.generate([too_long], SamplingParams())
    with pytest.raises(ContextLengthError, match="max_tokens"):
        smollm2_llm.generate("Hi", SamplingParams(max_tokens=engine.max_model_len))
    assert _all_free(smollm2_llm)
    ok = smollm2_llm.generate("Hi", SamplingParams(temperature=0, max_tokens=3))[0]
    assert len(ok.outputs[0].token_ids) == 3


def test_a_model_without_a_chat_template_refuses_chat_clearly(smollm2_llm, monkeypatch):
    engine = smollm2_llm.engine
    monkeypatch.setattr(engine, "chat_template", None)
    monkeypatch.setattr(engine.tokenizer, "chat_template", None)
    with pytest.raises(InvalidRequestError, match="no chat template") as info:
        engine.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert info.value.param == "messages"


def test_unknown_model_and_unreadable_weights(tmp_path):
    with pytest.raises(UnknownModelError, match="no-such-model"):
        LLM("no-such-model")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(WeightLoadError, match="broken.gguf"):
        LLM(str(broken))


def test_abort_frees_pages(smollm2_llm):
    engine = smollm2_llm.engine
    rid = engine.add_request("Tell me a story", SamplingParams(max_tokens=50))
    engine.step()
    assert engine.num_free_blocks < engine.num_blocks
    engine.abort_request(rid)
    assert _all_free(smollm2_llm)


def test_generate_cli_prints_a_completion(capsys):
    from coserve.entrypoints.cli import main

    assert main(["generate", "--prompt", "What is the capital of France?", "--chat", "--max-tokens", "12"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_a_failed_step_fails_its_requests_frees_pages_and_keeps_serving(smollm2_llm, monkeypatch):
    engine = smollm2_llm.engine
    real_execute = engine.runner.execute

    def broken(*args, **kwargs):
        monkeypatch.setattr(engine.runner, "execute", real_execute)
        raise RuntimeError("simulated device fault")

    monkeypatch.setattr(engine.runner, "execute", broken)
    engine.add_request("Hello there", SamplingParams(max_tokens=5), request_id="doomed")
    outputs = engine.step()
    assert [o.request_id for o in outputs] == ["doomed"]
    assert outputs[0].finished and "simulated device fault" in outputs[0].error
    assert _all_free(smollm2_llm)
    again = smollm2_llm.generate("Hello there", SamplingParams(temperature=0, max_tokens=3))[0]
    assert len(again.outputs[0].token_ids) == 3


class _CharTokenizer:
    """Token id = code point: the text of any id sequence is known without a vocabulary."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_the_stop_string_met_first_in_the_text_ends_it_not_the_first_listed():
    from coserve.engine.detokenizer import IncrementalDetokenizer

    detokenizer = IncrementalDetokenizer(_CharTokenizer(), stop=["abc", "x"])
    assert detokenizer.add_tokens([ord(c) for c in "hello xabc"]) == "x"
    assert detokenizer.text == "hello "
    keep = IncrementalDetokenizer(_CharTokenizer(), stop=["abc", "lo"], include_stop_str_in_output=True)
    assert keep.add_tokens([ord(c) for c in "hel"]) is None
    assert keep.add_tokens([ord(c) for c in "lo abc"]) == "lo" and keep.text == "hello"


def test_n_copies_at_the_top_of_the_seed_range_and_an_interrupted_call_leave_the_llm_usable(smollm2_llm,
                                                                                             monkeypatch):
    copies = smollm2_llm.generate("Hi", SamplingParams(n=2, seed=2**63 - 1, max_tokens=2))[0]
    assert len(copies.outputs) == 2
    engine = smollm2_llm.engine

    def interrupted():
        monkeypatch.undo()
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        smollm2_llm.generate(["Hi", "there"], SamplingParams(max_tokens=4))
    assert not engine.has_unfinished_requests() and _all_free(smollm2_llm)
    again = smollm2_llm.generate("Hi", SamplingParams(temperature=0, max_tokens=2))[0]
    assert len(again.outputs[0].token_ids) == 2


def test_extreme_seed_and_top_k_values_are_handled(smollm2_llm):
    with pytest.raises(InvalidRequestError, match="seed"):
        SamplingParams(seed=2**64)
    params = [SamplingParams(temperature=1.0, top_k=10**19, top_p=0.9, seed=-5, max_tokens=3),
              SamplingParams(temperature=1e-9, max_tokens=3), SamplingParams(temperature=1.0, top_k=2, max_tokens=3)]
    outs = smollm2_llm.generate(["a", "b", "c"], params)
    assert all(len(o.outputs[0].token_ids) == 3 for o in outs)
    greedy = smollm2_llm.generate("b", SamplingParams(temperature=0, max_tokens=3))[0]
    assert outs[1].outputs[0].token_ids == greedy.outputs[0].token_ids  # tiny temperature acts greedy


def test_a_request_waiting_for_the_engine_thread_counts_that_wait_in_its_ttft():
    """The server stamps a request when it receives it; the engine thread, busy with a step, adds it
    later. Its TTFT (and its age to the scheduler) runs from receipt, as a client measures it."""
    import asyncio

    from coserve.engine.async_engine import AsyncEngine
    from coserve.engine.config import EngineConfig
    from coserve.engine.llm_engine import LLMEngine

    now = [10.0]
    engine = LLMEngine(EngineConfig(model="random:llama-tiny", num_kv_blocks=16, max_num_seqs=4), clock=lambda: now[0])
    served = AsyncEngine({"m": engine})  # its thread is not started: the test plays it

    async def receive():
        served.submit("m", [5, 6, 7], SamplingParams(temperature=0, max_tokens=2), "late")

    asyncio.run(receive())  # received at t=10
    now[0] = 12.5  # the thread was in a step until now
    served._drain_commands(block=False)
    assert engine.states["late"].metrics.arrival_time == 10.0
    now[0] = 13.0
    first = next(o for o in engine.step() if o.request_id == "late")
    assert first.metrics.first_token_time - first.metrics.arrival_time == pytest.approx(3.0)
    with pytest.raises(InvalidRequestError):
        engine.add_request([1, 2], SamplingParams(max_tokens=1), "bad", arrival_time=float("nan"))
    assert "bad" not in engine.states
