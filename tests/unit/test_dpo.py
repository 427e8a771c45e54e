"""DPO pieces: the loss against the paper's formula, log-probs over answer tokens only, preference pairs,
the spec rules (task/format, pipeline refused, dpo.beta sweepable, init_from) and init_from's error."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kubetrain.runtime.train.data import IGNORE
from kubetrain.runtime.train.dpo import dpo_loss, sequence_logps
from kubetrain.spec import SpecError, validate_job
from kubetrain.spec.dpo import DPOSpec
from tests.conftest import MINIMAL

PREF = {"format": "preference", "train": "jobs/data/dates/preferences_train.jsonl"}


def dpo_job(**spec) -> dict:
    data = copy.deepcopy(MINIMAL)
    data["spec"]["task"] = "dpo"
    data["spec"]["data"].update(PREF)
    data["spec"].update(spec)
    return data


def test_sigmoid_loss_is_the_papers_formula_with_label_smoothing():
    policy = torch.tensor([-1.0, -2.0, -3.0, -1.0])  # chosen (2), then rejected (2)
    reference = torch.tensor([-1.5, -2.0, -2.0, -2.0])
    losses, margin = dpo_loss(policy, reference, DPOSpec(beta=0.5, label_smoothing=0.1))
    # margin_i = (pi_c - ref_c) - (pi_r - ref_r)
    assert margin.tolist() == pytest.approx([0.5 - (-1.0), 0.0 - 1.0])
    expected = [
        -0.9 * math.log(1 / (1 + math.exp(-0.5 * m))) - 0.1 * math.log(1 / (1 + math.exp(0.5 * m)))
        for m in (1.5, -1.0)
    ]
    assert losses.tolist() == pytest.approx(expected)


def test_ipo_and_hinge_losses():
    policy, reference = torch.tensor([0.0, -1.0]), torch.zeros(2)  # margin 1
    assert dpo_loss(policy, reference, DPOSpec(beta=0.25, loss_type="ipo"))[0].item() == pytest.approx(
        (1 - 2) ** 2
    )
    assert dpo_loss(policy, reference, DPOSpec(beta=0.25, loss_type="hinge"))[0].item() == pytest.approx(0.75)


def test_sequence_logps_sum_answer_tokens_only():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1]])  # two prompt tokens; the answer is tokens 2 and 3
    logp = logits.log_softmax(-1)
    assert sequence_logps(logits, labels).item() == pytest.approx(
        (logp[0, 1, 3] + logp[0, 2, 1]).item(), abs=1e-5
    )


def test_the_loss_pushes_the_margin_up():
    policy = torch.zeros(2, requires_grad=True)
    dpo_loss(policy, torch.zeros(2), DPOSpec())[0].sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]  # descending raises chosen, lowers rejected


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from kubetrain.runtime.train.models import build_tokenizer
    from kubetrain.spec.model import ModelSpec

    return build_tokenizer(ModelSpec(name_or_path=smollm2_dir), smollm2_dir)


def test_pairs_share_the_sft_prompt_and_mask_it(tok):
    import datasets

    from kubetrain.runtime.train.data import Formatter
    from kubetrain.runtime.train.preference import PreferenceFormatter, collate_pairs, tokenize_pairs
    from kubetrain.spec.data import DataSpec

    spec = DataSpec(train="x", format="preference", system_prompt="You convert dates.")
    records = [
        {"prompt": "Write 5 May 2001 as ISO.", "chosen": "2001-05-05", "rejected": "05/05/2001"},
        {  # the chat-message forms
            "prompt": [{"role": "user", "content": "Write 5 May 2001 as ISO."}],
            "chosen": {"role": "assistant", "content": "2001-05-05"},
            "rejected": [{"role": "assistant", "content": "05/05/2001"}],
        },
    ]
    fmt = PreferenceFormatter(spec, tok)
    sft = Formatter(spec.model_copy(update={"format": "instruction"}), tok)
    assert fmt.prompt(records[0]) == sft.prompt({"prompt": records[0]["prompt"]}) == fmt.prompt(records[1])
    pairs = tokenize_pairs(datasets.Dataset.from_list(records[:1]), spec, tok)
    row = pairs[0]
    learned = tok.decode([t for t in row["chosen_labels"] if t != IGNORE])
    assert learned.startswith("2001-05-05") and "Write" not in learned
    assert tok.decode([t for t in row["rejected_labels"] if t != IGNORE]).startswith("05/05/2001")
    batch = collate_pairs(tok)([row, row])
    assert batch["input_ids"].shape[0] == 4  # chosen, chosen, rejected, rejected
    assert batch["input_ids"][0].tolist()[: len(row["chosen_input_ids"])] == row["chosen_input_ids"]
    assert batch["input_ids"][2].tolist()[: len(row["rejected_input_ids"])] == row["rejected_input_ids"]


def test_a_dpo_job_validates_and_beta_is_sweepable():
    job = validate_job(dpo_job())
    assert job.spec.dpo.beta == 0.1 and job.spec.dpo.loss_type == "sigmoid"
    sweep = {
        "metric": "eval_reward_accuracy",
        "mode": "max",
        "parameters": {"dpo.beta": {"type": "loguniform", "low": 0.01, "high": 1.0}},
    }
    data = dpo_job(sweep=sweep)
    data["spec"]["data"]["validation_split"] = 0.1
    assert validate_job(data).spec.sweep.parameters["dpo.beta"]


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"task": "causal_lm"}, "format preference with task dpo"),
        ({"strategy": {"type": "pipeline", "stages": 2}}, "cannot run with strategy pipeline"),
        ({"dpo": {"beta": 0}}, "dpo.beta"),
        ({"dpo": {"loss_type": "kto"}}, "dpo.loss_type"),
        ({"training": {"early_stopping": {"metric": "eval_perplexity"}}}, "eval_reward_accuracy"),
        (
            {"model": {"init_from": "sft", "from_config": {}, "tokenizer": {"type": "bpe"}}},
            "exclude each other",
        ),
    ],
)
def test_bad_dpo_specs_are_named(change, fragment):
    with pytest.raises(SpecError, match=fragment):
        validate_job(dpo_job(**change))


def test_init_from_errors_name_the_field(tmp_path):
    from kubetrain.runtime.train.init_from import InitFromError, check, location
    from kubetrain.spec.model import ModelSpec

    assert location("quickstart", "/runs") == "/runs/quickstart/final"
    assert location("s3://b/x/final", "/runs") == "s3://b/x/final"
    with pytest.raises(InitFromError, match="no published model of job 'sft' at .*sft/final"):
        check(ModelSpec(init_from="sft"), str(tmp_path))
    (tmp_path / "adapter").mkdir()
    with pytest.raises(InitFromError, match="holds neither a PEFT adapter"):
        check(ModelSpec(init_from=str(tmp_path / "adapter")), str(tmp_path))
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(InitFromError, match="set spec.model.name_or_path to its base model"):
        check(ModelSpec(init_from=str(tmp_path / "adapter")), str(tmp_path))


def test_sft_weight_adds_the_chosen_token_mean_nll():
    from kubetrain.runtime.train.dpo import DPOObjective

    class Model(torch.nn.Module):  # fixed logits: uniform over 4 tokens, so every token has log-prob -log 4
        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 4)})()

    class Same:  # reference = policy: the DPO part is log 2 per pair
        def logps(self, model, batch):
            return sequence_logps(model(batch["input_ids"], None).logits, batch["labels"])

    labels = torch.tensor([[IGNORE, 1, 2], [IGNORE, 1, IGNORE]])  # chosen 2 answer tokens, rejected 1
    batch = {
        "input_ids": torch.zeros(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3),
        "labels": labels,
    }
    plain = DPOObjective(DPOSpec(), Same())(Model(), {**batch})
    rpo = DPOObjective(DPOSpec(sft_weight=0.5), Same())(Model(), {**batch})
    assert plain.item() == pytest.approx(math.log(2))
    assert rpo.item() == pytest.approx(math.log(2) + 0.5 * math.log(4))
