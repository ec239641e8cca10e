# SPDX-License-Identifier: Apache-2.0
"""Preference training: DPO / ORPO / reward losses against their formulas and against TRL's
trainers on a tiny model and the same batch; a few DPO steps raise the reward margin; a reward
model separates a separable toy set and loads in transformers with the same scores; the CLI."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import swisslm
from swisslm.finetune.pref_data import PairColumns, PairExample, collate_pairs, encode_pair, truncate_pair
from swisslm.finetune.preference import (
    DPOObjective,
    ORPOObjective,
    RewardHead,
    RewardObjective,
    adapters_disabled,
    dpo_loss,
    orpo_loss,
    reward_loss,
    reward_scores,
    save_reward_model,
    sequence_logps,
    token_logps,
)

ROWS = [{"prompt": "What is 2+2?", "chosen": " 4", "rejected": " five, obviously"},
        {"prompt": "Colour of the sky:", "chosen": " blue", "rejected": " green"},
        {"prompt": "Capital of France?", "chosen": " Paris is the capital.", "rejected": " Rome"}]


# -- the losses against their formulas, on fixed numbers ------------------------------------------

def test_dpo_loss_is_the_papers_formula():
    pc, pr = torch.tensor([-5.0, -7.5, -2.0]), torch.tensor([-6.0, -7.0, -9.0])
    rc, rr = torch.tensor([-5.5, -7.0, -3.0]), torch.tensor([-5.5, -8.0, -8.0])
    beta = 0.25
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta)
    for i in range(3):
        delta = (pc[i] - rc[i]) - (pr[i] - rr[i])
        assert losses[i].item() == pytest.approx(-math.log(1 / (1 + math.exp(-beta * delta.item()))), abs=1e-6)
        assert cr[i].item() == pytest.approx(beta * (pc[i] - rc[i]).item())
        assert rj[i].item() == pytest.approx(beta * (pr[i] - rr[i]).item())
    ls, _, _ = dpo_loss(pc, pr, rc, rr, beta, label_smoothing=0.1)  # cDPO
    delta = (pc - rc) - (pr - rr)
    torch.testing.assert_close(ls, -0.9 * F.logsigmoid(beta * delta) - 0.1 * F.logsigmoid(-beta * delta))


def test_orpo_loss_is_the_papers_formula():
    c, r = torch.tensor([-0.3, -1.2, -0.01]), torch.tensor([-0.9, -0.4, -3.0])  # length-averaged log-probs
    losses, cr, rj, log_odds = orpo_loss(c, r, alpha=0.2)
    for i in range(3):
        pc, pr = math.exp(c[i].item()), math.exp(r[i].item())
        lor = math.log(pc / (1 - pc)) - math.log(pr / (1 - pr))
        assert log_odds[i].item() == pytest.approx(lor, rel=1e-5)
        assert losses[i].item() == pytest.approx(-0.2 * math.log(1 / (1 + math.exp(-lor))), rel=1e-5)
    torch.testing.assert_close(cr, 0.2 * c)
    torch.testing.assert_close(rj, 0.2 * r)


def test_reward_loss_is_bradley_terry():
    sc, sr = torch.tensor([1.5, -0.2, 0.3]), torch.tensor([0.5, 0.4, 0.3])
    expect = [-math.log(1 / (1 + math.exp(-(a - b)))) for a, b in zip(sc.tolist(), sr.tolist())]
    torch.testing.assert_close(reward_loss(sc, sr), torch.tensor(expect))
    torch.testing.assert_close(reward_loss(sc, sr, margin=torch.tensor([1.0, 0.0, 0.5])),
                               -F.logsigmoid(sc - sr - torch.tensor([1.0, 0.0, 0.5])))
    torch.testing.assert_close(reward_loss(sc, sr, center_coefficient=0.01),
                               -F.logsigmoid(sc - sr) + 0.01 * (sc + sr) ** 2)


def test_chunked_token_logps_equal_log_softmax_of_full_logits(tiny):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (3, 9), generator=g)
    select = torch.rand(3, 8, generator=g) > 0.4
    with torch.no_grad():
        full = F.log_softmax(tiny(ids).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    lp, _, _ = token_logps(tiny, ids, None, select, chunk=4)  # several chunks
    torch.testing.assert_close(lp, full[select], atol=1e-5, rtol=1e-5)
    # gradients through the checkpointed chunks equal those of the plain computation
    m = copy.deepcopy(tiny).train()
    for p in m.parameters():
        p.requires_grad_(True)
    token_logps(m, ids, None, select, chunk=4)[0].sum().backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    ref = F.log_softmax(m(ids).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    ref[select].sum().backward()
    for a, p in zip(g1, m.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


def test_truncation_keeps_the_prompt_response_boundary():
    ex = PairExample(list(range(100, 120)), list(range(10)), list(range(20, 25)))
    t = truncate_pair(ex, max_length=16, max_prompt_length=8)
    assert t.prompt_ids == list(range(112, 120))  # the prompt keeps its end
    assert t.chosen_ids == list(range(8)) and t.rejected_ids == list(range(20, 25))  # completions their start
    assert truncate_pair(ex, 64, 8) == ex  # fits: untouched
    t = truncate_pair(ex, 16, 8, max_completion_length=3)
    assert t.chosen_ids == [0, 1, 2] and t.prompt_ids == list(range(112, 120))


def test_gradient_checkpointing_keeps_loss_and_gradients(tiny):
    from swisslm.finetune.train_opts import disable_gradient_checkpointing, enable_gradient_checkpointing

    m = copy.deepcopy(tiny).train()
    for p in m.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (4, 10), generator=g)
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": (torch.arange(10) >= 4).long()
         .expand(4, 10).clone(), "pairs": torch.tensor(2)}
    ref = (torch.tensor([-3.0, -4.0]), torch.tensor([-3.5, -2.0]))
    obj = DPOObjective(0.5, lambda bb: ref)

    def grads():
        m.zero_grad()
        res = obj(m, b)
        res.pair_losses.sum().backward()
        return res.pair_losses.detach(), [p.grad.clone() for p in m.parameters()]

    l0, g0 = grads()
    assert enable_gradient_checkpointing(m) == len(m.layers)
    l1, g1 = grads()
    disable_gradient_checkpointing(m)
    torch.testing.assert_close(l0, l1)
    for a, c in zip(g0, g1):
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)


def test_reference_pass_switches_off_expert_and_linear_adapters_on_moe():
    from swisslm import ModelConfig
    from swisslm.mixins import LoRAMixin

    cfg = ModelConfig(family="olmoe", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=16,
                      qk_norm="full", num_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.01)
    m = swisslm.AutoModel.from_config(cfg, seed=0).eval()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = m(ids).logits
    lora = LoRAMixin(r=4, alpha=8, target_modules="all-linear")
    m.add_mixin("lora", lora)
    assert lora.target_parameters()  # experts are adapted too
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in lora.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        adapted = m(ids).logits
        with adapters_disabled(m):
            torch.testing.assert_close(m(ids).logits, base)
        torch.testing.assert_close(m(ids).logits, adapted)
    assert (adapted - base).abs().max() > 1e-2
    # one DPO step's gradient reaches the expert adapters; the aux loss rides along
    m.train()
    b = {"input_ids": ids.repeat(2, 1), "attention_mask": torch.ones(4, 8, dtype=torch.long),
         "loss_mask": (torch.arange(8) >= 3).long().expand(4, 8).clone(), "pairs": torch.tensor(2)}

    def ref_fn(bb):
        with adapters_disabled(m), torch.no_grad():
            return sequence_logps(m, bb)

    res = DPOObjective(0.1, ref_fn)(m, b)
    assert res.aux_loss is not None
    (res.pair_losses.sum() + res.aux_loss).backward()
    experts = [ad for site, _, ad in lora.adapters() if site.expert]
    assert experts and all(ad.lora_b.grad is not None and ad.lora_b.grad.abs().sum() > 0 for ad in experts)


def test_auto_find_batch_size_halves_on_out_of_memory():
    from swisslm.finetune.train_opts import find_batch_size

    tried = []

    def probe(b):
        tried.append(b)
        if b > 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 bytes")

    assert find_batch_size(16, probe) == 2 and tried == [16, 8, 4, 2]
    with pytest.raises(ValueError):  # anything but an out-of-memory error is not retried
        find_batch_size(8, lambda b: (_ for _ in ()).throw(ValueError("bad")))


# -- parity with TRL on a tiny transformers model -------------------------------------------------

try:
    import datasets
    import transformers
    import trl
except ImportError:  # trl is a test-only dependency (the dev extra)
    trl = None
needs_trl = pytest.mark.skipif(trl is None, reason="needs trl (pip install swisslm[dev])")


@pytest.fixture(scope="module")
def hf_setup(smollm2_path, tmp_path_factory, one_thread):
    """A tiny random Llama with SmolLM2's tokenizer, saved where both libraries load it."""
    from swisslm.io.gguf import read_gguf_tokenizer

    d = tmp_path_factory.mktemp("pref")
    read_gguf_tokenizer(smollm2_path).save(d / "tok")
    hft = transformers.AutoTokenizer.from_pretrained(d / "tok")
    cfg = transformers.LlamaConfig(vocab_size=len(hft), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=32, tie_word_embeddings=True,
                                   pad_token_id=hft.pad_token_id, eos_token_id=hft.eos_token_id,
                                   bos_token_id=hft.bos_token_id)
    torch.manual_seed(0)
    policy = transformers.LlamaForCausalLM(cfg).eval()
    ref = copy.deepcopy(policy)
    with torch.no_grad():  # a reference that differs, so the rewards are not all zero
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    for name, m in (("policy", policy), ("ref", ref)):
        m.save_pretrained(d / name)
        hft.save_pretrained(d / name)
    return d, hft, policy, ref


def _trl_args(cls, d, **kw):
    # bf16=False: TRL's default autocasts the reference model's forward
    return cls(output_dir=str(d / "trl-out"), report_to=[], per_device_train_batch_size=len(ROWS), use_cpu=True,
               bf16=False, **kw)


def _trl_metrics(tr):
    return {k: v[-1] for k, v in tr._metrics["train" if tr.model.training else "eval"].items()}


def _ours(folder):
    m = swisslm.AutoModel.from_pretrained(folder)
    return m.eval()


def _our_batch(model):
    ex = [encode_pair(model.tokenizer, r, PairColumns(prompt="prompt")) for r in ROWS]
    return collate_pairs(ex, model.tokenizer.pad_token_id)


METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


def _assert_metrics(mine: dict, theirs: dict, keys=METRICS):
    for k in keys:
        s, c = mine[k]
        assert s / c == pytest.approx(theirs[k], abs=1e-5), k


@needs_trl
def test_dpo_matches_trl_with_a_reference_model(hf_setup):
    d, hft, policy, ref = hf_setup
    tr = trl.DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref),
                        args=_trl_args(trl.DPOConfig, d, beta=0.3, max_length=None),
                        train_dataset=datasets.Dataset.from_list(ROWS), processing_class=hft)
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(ROWS))])
    theirs = tr.compute_loss(tr.model, batch)
    tm = _trl_metrics(tr)
    ours, our_ref = _ours(d / "policy"), _ours(d / "ref")
    b = _our_batch(ours)
    # our tokenization of (prompt, chosen, rejected) is TRL's, boundary included
    assert torch.equal(b["input_ids"], batch["input_ids"]) and torch.equal(b["loss_mask"], batch["completion_mask"])
    res = DPOObjective(0.3, lambda bb: sequence_logps(our_ref, bb))(ours, b)
    assert res.pair_losses.mean().item() == pytest.approx(theirs.item(), abs=1e-5)
    assert abs(tm["rewards/margins"]) > 1e-3  # the comparison is not 0 == 0
    _assert_metrics(res.sums, tm)


@needs_trl
def test_dpo_lora_reference_is_the_base_with_adapters_off_like_trl_peft(hf_setup):
    peft = pytest.importorskip("peft")
    from swisslm.finetune import load_adapter

    d, hft, policy, _ = hf_setup
    # TRL creates the adapter (peft_config): its reference is then the base with adapters disabled
    tr = trl.DPOTrainer(model=copy.deepcopy(policy), args=_trl_args(trl.DPOConfig, d, beta=0.1, max_length=None),
                        train_dataset=datasets.Dataset.from_list(ROWS), processing_class=hft,
                        peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in tr.model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    tr.model.save_pretrained(d / "adapter")
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(ROWS))])
    theirs = tr.compute_loss(tr.model, batch)
    tm = _trl_metrics(tr)
    ours = _ours(d / "policy")
    load_adapter(ours, d / "adapter", trainable=True)
    b = _our_batch(ours)

    def ref_fn(bb):
        with adapters_disabled(ours), torch.no_grad():
            return sequence_logps(ours, bb)

    res = DPOObjective(0.1, ref_fn)(ours, b)
    assert res.pair_losses.mean().item() == pytest.approx(theirs.item(), abs=1e-5)
    assert abs(tm["rewards/margins"]) > 1e-3
    _assert_metrics(res.sums, tm)
    # the adapters are back after the reference pass
    base = _ours(d / "policy")
    with torch.no_grad():
        assert (ours(b["input_ids"]).logits - base(b["input_ids"]).logits).abs().max() > 1e-3


@needs_trl
def test_orpo_matches_trl(hf_setup):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    d, hft, policy, _ = hf_setup
    hf = copy.deepcopy(policy)
    tr = ORPOTrainer(model=hf, args=_trl_args(ORPOConfig, d, beta=0.3),
                     train_dataset=datasets.Dataset.from_list(ROWS), processing_class=hft)
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(ROWS))])
    theirs, tm = tr.get_batch_loss_metrics(hf, batch)
    # TRL's ORPO tokenizes its own way (BOS on the prompt): compare on its batch, our layout
    cat = tr.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=hft.pad_token_id, device="cpu")
    b = {"input_ids": cat["concatenated_input_ids"], "attention_mask": cat["concatenated_attention_mask"],
         "loss_mask": (cat["concatenated_labels"] != -100).long(), "pairs": torch.tensor(len(ROWS))}
    res = ORPOObjective(0.3)(_ours(d / "policy"), b)
    n_nll = res.sums["nll_loss"][1]
    mine = res.nll_sum.item() / n_nll + res.pair_losses.mean().item()
    assert mine == pytest.approx(theirs.item(), abs=1e-5)
    _assert_metrics(res.sums, tm, METRICS + ("nll_loss", "log_odds_ratio", "log_odds_chosen"))


@needs_trl
def test_reward_matches_trl_and_loads_in_transformers_with_the_same_scores(hf_setup, tmp_path):
    d, hft, policy, _ = hf_setup
    cfg = copy.deepcopy(policy.config)
    cfg.num_labels = 1
    rm = transformers.LlamaForSequenceClassification(cfg).eval()
    rm.model.load_state_dict(policy.model.state_dict())
    with torch.no_grad():
        rm.score.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    tr = trl.RewardTrainer(model=rm, args=_trl_args(trl.RewardConfig, d),
                           train_dataset=datasets.Dataset.from_list(ROWS), processing_class=hft)
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(ROWS))])
    theirs = tr.compute_loss(rm, dict(batch))
    tm = _trl_metrics(tr)
    ours = _ours(d / "policy")
    head = RewardHead(ours.config.hidden_size)
    head.score.weight.data.copy_(rm.score.weight)
    ours.add_mixin("reward", head)
    b = _our_batch(ours)
    assert torch.equal(b["input_ids"], batch["input_ids"])
    res = RewardObjective(ours.config.pad_token_id)(ours, b)
    assert res.pair_losses.mean().item() == pytest.approx(theirs.item(), abs=1e-5)
    for k in ("accuracy", "margin"):
        assert res.sums[k][0] / res.sums[k][1] == pytest.approx(tm[k], abs=1e-5)
    # every row's score: ours, and transformers' loader on our export
    with torch.no_grad():
        s_ours, _ = reward_scores(ours, b["input_ids"], b["attention_mask"], ours.config.pad_token_id)
        save_reward_model(ours, head, tmp_path / "rm")
        loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
        s_hf = loaded(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(s_ours, s_hf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_hf, rm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, 0]
                               .detach(), atol=1e-5, rtol=1e-5)


def test_orpo_nll_counts_the_same_tokens_with_left_and_right_padding():
    """ORPO's SFT term scores every real chosen token that has a real token before it: padding
    on the left must not add each row's first token (predicted from a pad)."""
    import torch

    from swisslm.finetune.preference import ORPOObjective

    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [5, 6, 0, 0], [8, 0, 0, 0]])
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    left = right.flip(1)
    n_right = ORPOObjective._nll_select({"input_ids": ids, "attention_mask": right, "pairs": 2}).sum()
    n_left = ORPOObjective._nll_select({"input_ids": ids.flip(1), "attention_mask": left, "pairs": 2}).sum()
    assert int(n_right) == int(n_left) == 3  # (3 - 1) + (2 - 1) on the chosen half
