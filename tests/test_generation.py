"""Generation: token-for-token equality with transformers, and each logits rule by hand."""

import math

import pytest
import torch

from lmforge.errors import ConfigError, LmforgeError
from lmforge.generation import (
    GenerationConfig,
    _draft,
    generate,
    pad_left,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from lmforge.models import build, presets

transformers = pytest.importorskip("transformers")

PAD, EOS = 3, 1  # a non-zero pad id: transformers' beam search fills with EOS when pad == 0


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """family -> (transformers model, the same weights in lmforge), built on first use."""
    built = {}

    def get(family):
        if family not in built:
            built[family] = _build_pair(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, pairs):
    return pairs(request.param)


def _build_pair(family, path):
    """Weights scaled up so the random models are decisive: greedy and beam outputs are not
    decided by float noise."""
    from lmforge.interop.hf import load_hf

    torch.manual_seed(0)
    t = transformers
    if family == "gpt2":
        config = t.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                              bos_token_id=0, eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
    else:  # grouped-query attention
        config = t.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=64, bos_token_id=0, eos_token_id=EOS,
                               pad_token_id=PAD)  # fmt: skip
    hf = t.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(5)
    hf.save_pretrained(path)
    return hf, load_hf(path)


def _prompts(padded=True):
    if not padded:
        return torch.tensor([[5, 6, 7, 8, 9], [10, 11, 9, 8, 7], [12, 13, 14, 15, 16]]), None
    return pad_left([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], pad_id=PAD)


CASES = [
    ("gpt2", dict(num_beams=1)),
    ("gpt2", dict(num_beams=3)),
    ("gpt2", dict(num_beams=3, length_penalty=0.5, early_stopping=True)),
    ("gpt2", dict(num_beams=4, early_stopping="never", length_penalty=2.0)),
    ("gpt2", dict(num_beams=2, num_return_sequences=2)),
    ("gpt2", dict(num_beams=1, repetition_penalty=1.3)),
    ("gpt2", dict(num_beams=2, repetition_penalty=1.3)),
    ("llama", dict(num_beams=1)),
    ("llama", dict(num_beams=3, length_penalty=0.5, early_stopping=True)),
]


def _name(case):
    family, settings = case
    return family + ":" + ",".join(f"{k}={v}" for k, v in settings.items())


@pytest.mark.parametrize("case", CASES, ids=_name)
def test_greedy_and_beam_equal_transformers(pairs, case):
    family, settings = case
    hf, ours = pairs(family)
    # transformers counts left padding as "seen" for the repetition penalty, lmforge does
    # not: compare that rule on prompts without padding.
    ids, mask = _prompts(padded="repetition_penalty" not in settings)
    n = 10
    common = dict(max_new_tokens=n, pad_token_id=PAD, **settings)
    # 1) EOS forbidden: full length
    a = hf.generate(ids, attention_mask=mask, do_sample=False, min_new_tokens=n,
                    eos_token_id=EOS, **common)  # fmt: skip
    b = generate(ours, ids, mask, min_new_tokens=n, eos_token_id=EOS, **common)
    assert torch.equal(a, b)
    # 2) EOS = a token the first prompt produces at step 3: that sequence stops there
    eos = int(a[0, ids.shape[1] + 3])
    a = hf.generate(ids, attention_mask=mask, do_sample=False, eos_token_id=eos, **common)
    b = generate(ours, ids, mask, eos_token_id=eos, **common)
    assert torch.equal(a, b)
    if settings["num_beams"] == 1:
        assert b[0, ids.shape[1] + 3] == eos and (b[0, ids.shape[1] + 4 :] == PAD).all()


def test_kv_cache_generation_equals_no_cache(pair):
    _, ours = pair
    ids, mask = _prompts()
    for settings in (dict(), dict(num_beams=3), dict(do_sample=True, top_k=20, top_p=0.9)):
        outs = [
            generate(ours, ids, mask, max_new_tokens=8, use_cache=use_cache, eos_token_id=[],
                     generator=torch.Generator().manual_seed(7), **settings)  # fmt: skip
            for use_cache in (True, False)
        ]
        assert torch.equal(*outs)


def test_batched_left_padding_equals_one_prompt_at_a_time(pair):
    _, ours = pair
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    ids, mask = pad_left(prompts, pad_id=PAD)
    batched = generate(ours, ids, mask, max_new_tokens=6, eos_token_id=[])
    for row, p in enumerate(prompts):
        alone = generate(ours, torch.tensor([p]), max_new_tokens=6, eos_token_id=[])
        assert torch.equal(batched[row, -len(p) - 6 :], alone[0])


def test_prompt_lookup_gives_the_greedy_output(pairs):
    _, ours = pairs("gpt2")
    for seed in range(2):
        ids = torch.randint(4, 128, (1, 6), generator=torch.Generator().manual_seed(seed))
        greedy = generate(ours, ids, max_new_tokens=24, eos_token_id=[])
        for k in (1, 5):
            looked = generate(ours, ids, max_new_tokens=24, eos_token_id=[], prompt_lookup_tokens=k)
            assert torch.equal(looked, greedy)
        eos = int(greedy[0, 6 + 12])
        stopped = generate(ours, ids, max_new_tokens=24, eos_token_id=eos)
        looked = generate(ours, ids, max_new_tokens=24, eos_token_id=eos, prompt_lookup_tokens=5)
        assert torch.equal(looked, stopped)


def test_prompt_lookup_draft():
    assert _draft([1, 2, 3, 9, 9, 1, 2, 3], k=3) == [9, 9, 1]  # after the earlier 1 2 3
    assert _draft([1, 2, 9, 9, 9, 1, 2, 8, 8, 1, 2], k=2) == [8, 8]  # latest 2-gram match
    assert _draft([5, 7, 5, 7, 5, 7], k=4) == [5, 7]  # 7 5 7 occurred once, 2 tokens after
    assert _draft([4, 4, 4], k=5) == [4]  # the longest continuation there is
    assert _draft([1, 2, 3], k=3) == []  # the last token never occurred before
    assert _draft([8, 1, 2, 8], k=2) == [1, 2]  # falls back to a 1-gram


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, 0.0, 9.0, 1.0, 0.5]])
    kept = top_k_filter(logits, 2).isfinite()
    assert kept.tolist() == [[False, True, False, True, False], [False, False, True, True, False]]
    assert top_k_filter(logits, 10).isfinite().all()  # k > V keeps all
    ties = top_k_filter(torch.tensor([[2.0, 2.0, 1.0]]), 1).isfinite()
    assert ties.tolist() == [[True, True, False]]  # ties with the k-th survive


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    kept = lambda p: top_p_filter(logits, p).isfinite().tolist()[0]  # noqa: E731
    assert kept(0.4) == [True, False, False, False]  # 0.5 alone reaches 0.4
    assert kept(0.7) == [True, False, True, False]  # 0.5 + 0.3 = 0.8 >= 0.7
    assert kept(0.9) == [True, False, True, True]  # 0.95 >= 0.9
    assert kept(0.99) == [True, True, True, True]
    assert kept(0.01) == [True, False, False, False]  # the top token always stays


def test_top_k_top_p_agree_with_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 100, generator=g) * 3
    for k in (1, 5, 50):
        expected = TopKLogitsWarper(k)(None, logits.clone()).isfinite()
        assert torch.equal(top_k_filter(logits, k).isfinite(), expected)
    for p in (0.1, 0.5, 0.9, 0.99):
        expected = TopPLogitsWarper(p)(None, logits.clone()).isfinite()
        assert torch.equal(top_p_filter(logits, p).isfinite(), expected)


def test_repetition_penalty_formula():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5]])
    seen = torch.tensor([[0, 1, 1]])  # tokens 0 and 1 (1 twice: penalised once)
    out = repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0, 0.5]]  # s/p if s > 0 else s*p
    masked = repetition_penalty(logits, seen, 2.0, seen_mask=torch.tensor([[1, 0, 0]]))
    assert masked.tolist() == [[1.0, -2.0, 1.0, -1.0, 0.5]]  # padding is not "seen"

    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    scores, ids = torch.randn(4, 50, generator=g), torch.randint(0, 50, (4, 12), generator=g)
    expected = RepetitionPenaltyLogitsProcessor(1.7)(ids, scores.clone())
    torch.testing.assert_close(repetition_penalty(scores, ids, 1.7), expected)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    torch.manual_seed(0)
    model = build(presets.get("tiny-llama")).eval()
    ids = torch.randint(0, 256, (2, 4))

    def sample(seed, **kw):
        return generate(model, ids, max_new_tokens=12, do_sample=True, eos_token_id=[],
                        generator=torch.Generator().manual_seed(seed), **kw)  # fmt: skip

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    greedy = generate(model, ids, max_new_tokens=12, eos_token_id=[])
    assert torch.equal(sample(3, top_k=1), greedy)
    assert torch.equal(sample(4, temperature=1e-4), greedy)


def test_temperature_divides_logits():
    """With top_k=2 and temperature T, two tokens a, b are drawn in ratio exp((a - b)/T)."""
    torch.manual_seed(0)
    model = build(presets.get("tiny-gpt2")).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # logits = 0 except the two tokens we set below
    bias = torch.full((256,), -1e4)
    bias[[7, 9]] = torch.tensor([math.log(3.0), 0.0])  # p(7) : p(9) = 3 : 1 at T = 1
    model.lm_head.register_forward_hook(lambda m, args, out: out + bias)
    ids = torch.zeros(4000, 1, dtype=torch.long)
    for temperature, expected in ((1.0, 0.75), (2.0, math.sqrt(3) / (1 + math.sqrt(3)))):
        out = generate(model, ids, max_new_tokens=1, do_sample=True, temperature=temperature,
                       eos_token_id=[], generator=torch.Generator().manual_seed(0))  # fmt: skip
        share = (out[:, -1] == 7).float().mean().item()
        assert share == pytest.approx(expected, abs=0.03)


def test_min_new_tokens_forbids_eos():
    torch.manual_seed(0)
    model = build(presets.get("tiny-gpt2")).eval()
    ids = torch.randint(0, 256, (1, 3))
    first = int(generate(model, ids, max_new_tokens=1, eos_token_id=[])[0, -1])
    out = generate(model, ids, max_new_tokens=5, eos_token_id=first)
    assert out.shape[1] == 4  # stopped right away at EOS
    out = generate(model, ids, max_new_tokens=5, min_new_tokens=3, eos_token_id=first)
    assert first not in out[0, 3:6].tolist()


def test_stop_strings_with_decode_callback():
    torch.manual_seed(0)
    model = build(presets.get("tiny-gpt2")).eval()
    decode = lambda ids: "".join(chr(ord("a") + i % 26) for i in ids)  # noqa: E731
    ids = torch.randint(0, 256, (2, 3))
    full = generate(model, ids, max_new_tokens=12, eos_token_id=[])
    text = decode(full[0, 3:].tolist())
    stop = text[4:6]  # appears after the 6th new token of row 0
    out = generate(model, ids, max_new_tokens=12, eos_token_id=[], pad_token_id=0,
                   stop_strings=[stop], decode=decode)  # fmt: skip
    new = out[0, 3:].tolist()
    cut = text.index(stop) + len(stop)
    assert decode(new[:cut]) == text[:cut] and all(t == 0 for t in new[cut:])
    with pytest.raises(ConfigError, match="decode"):
        generate(model, ids, stop_strings=["x"])


def test_bad_input_is_refused():
    model = build(presets.get("tiny-gpt2"))
    with pytest.raises(LmforgeError, match="empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(LmforgeError, match="left"):
        generate(model, torch.ones(2, 3, dtype=torch.long),
                 attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))  # fmt: skip
    with pytest.raises(LmforgeError, match="context"):
        generate(model, torch.ones(1, 130, dtype=torch.long), max_new_tokens=50)
    with pytest.raises(LmforgeError, match="at least one token"):
        pad_left([[1, 2], []])
    for bad in (dict(max_new_tokens=0), dict(top_p=0.0), dict(temperature=0.0),
                dict(early_stopping="sometimes"), dict(num_beams=2, do_sample=True),
                dict(prompt_lookup_tokens=4, do_sample=True)):  # fmt: skip
        with pytest.raises(ConfigError, match="generation."):
            GenerationConfig(**bad)


def test_no_repeat_ngram_matches_transformers_processor():
    from lmforge.generation import no_repeat_ngram

    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 6, (8, 12), generator=g)  # small vocab: many repeated n-grams
    logits = torch.randn(8, 6, generator=g)
    for n in (1, 2, 3, 12, 13):
        theirs = transformers.NoRepeatNGramLogitsProcessor(n)(seqs, logits.clone())
        torch.testing.assert_close(no_repeat_ngram(logits, seqs, n), theirs)
    hand = no_repeat_ngram(torch.zeros(1, 10), torch.tensor([[1, 5, 2, 5, 1]]), 2)
    assert torch.isinf(hand).nonzero()[:, 1].tolist() == [5]  # "1 5" was seen: 5 is banned


def test_seq2seq_sampling_is_seeded_and_top_k_1_is_greedy():
    torch.manual_seed(0)
    model = build(presets.get("tiny-t5")).eval()
    src = torch.randint(3, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=6, min_new_tokens=6)
    greedy = generate(model, src, **kw)
    assert greedy.shape == (2, 7) and bool((greedy[:, 0] == 0).all())  # start token first

    def sample(seed, **more):
        g = torch.Generator().manual_seed(seed)
        return generate(model, src, do_sample=True, generator=g, **kw, **more)

    assert torch.equal(sample(3), sample(3))
    assert torch.equal(sample(4, top_k=1), greedy)
    beams = generate(model, src, num_beams=3, num_return_sequences=2, **kw)
    assert beams.shape == (4, 7)


def _window_reference(model, prompt: list[int], n: int, window: int) -> list[int]:
    """nanoGPT's loop: each step re-runs the model (no cache) on the last `window` tokens."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq[-window:]])).logits[0, -1]
            seq.append(int(logits.argmax()))
    return seq


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])  # learned positions, RoPE
def test_greedy_slides_past_the_context(preset, caplog, monkeypatch):
    import dataclasses

    import lmforge.generation as generation

    capacities = []  # the cache is not used past the window: no larger buffer
    new_cache = generation._new_cache
    monkeypatch.setattr(generation, "_new_cache",
                        lambda m, c: capacities.append(c) or new_cache(m, c))  # fmt: skip

    torch.manual_seed(0)
    window = 12
    model = build(dataclasses.replace(presets.get(preset), max_seq_len=window)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5)  # decisive logits: argmax not decided by float noise
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    ids, mask = pad_left(prompts, pad_id=PAD)
    n = 3 * window
    for use_cache in (True, False):
        caplog.clear()
        with caplog.at_level("WARNING", logger="lmforge.generation"):
            out = generate(model, ids, mask, max_new_tokens=n, eos_token_id=[],
                           use_cache=use_cache)  # fmt: skip
        assert out.shape == (2, 5 + n)
        for row, p in enumerate(prompts):
            assert out[row, 5 - len(p) :].tolist() == _window_reference(model, p, n, window)
        assert capacities == ([window] if use_cache else [])
        capacities.clear()
        assert [r.getMessage() for r in caplog.records] == [
            f"generation passed the model's context of {window} tokens: from here each step "
            f"sees the last {window} (sliding window)"
        ]
    with pytest.raises(LmforgeError, match="prompt \\(13 tokens\\) is longer than the model's"):
        generate(model, torch.ones(1, window + 1, dtype=torch.long), max_new_tokens=1)
    if preset == "tiny-gpt2":  # beam search stays within learned positions
        with pytest.raises(LmforgeError, match="context"):
            generate(model, torch.ones(1, 5, dtype=torch.long), max_new_tokens=10, num_beams=2)
