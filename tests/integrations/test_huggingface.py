"""Hugging Face models built from tiny configs (nothing downloaded): dict batches, .loss, weights."""

import os

import pytest
import torch
from torch.nn import functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from sharpminima.landscape import Landscape, flatten_params  # noqa: E402
from sharpminima.landscape.operators import GGNOperator  # noqa: E402

D = torch.float64


def tiny_bert(num_labels=3):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=12,
        num_labels=num_labels,
    )
    return transformers.BertForSequenceClassification(cfg)


def tiny_gpt2(dtype=torch.float32):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=8,
        n_positions=6,
        n_embd=4,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(cfg).to(dtype)


def _bert_batches(n=24, size=8):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (n, 6), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return [
        {
            "input_ids": ids[i : i + size],
            "attention_mask": torch.ones(size, 6, dtype=torch.long),
            "labels": labels[i : i + size],
        }
        for i in range(0, n, size)
    ]


def test_bert_classifier_mean_over_sequences():
    model = tiny_bert()
    batches = _bert_batches()
    land = Landscape(model, batches)
    everything = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    model.eval()
    with torch.no_grad():
        ref = model(**everything)
    assert land.loss() == pytest.approx(float(ref.loss), rel=1e-5)
    loss, acc = land.loss_and_accuracy()
    assert acc == pytest.approx(100.0 * float((ref.logits.argmax(-1) == everything["labels"]).float().mean()))
    assert land.objective.settings()["loss"] == "output" and land.objective.total_weight == 24
    assert land.keskar_sharpness(1e-3, max_iters=2).value >= 0
    assert land.top_eigenvalues(max_iters=5).value > 0


def test_bert_from_a_dataloader_equals_the_list_of_batches():
    model = tiny_bert()
    batches = _bert_batches()
    rows = [{k: b[k][i] for k in b} for b in batches for i in range(8)]
    loader = torch.utils.data.DataLoader(rows, batch_size=8)
    a, b = Landscape(model, batches), Landscape(model, loader)
    x = flatten_params(model)
    assert a.loss() == b.loss()
    torch.testing.assert_close(a.objective.loss_and_grad(x)[1], b.objective.loss_and_grad(x)[1])


def _lm_batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for n, masked in ((3, 1), (2, 3)):  # batches with different numbers of predicted tokens
        ids = torch.randint(0, 8, (n, 5), generator=g)
        labels = ids.clone()
        labels[:, :masked] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def test_causal_lm_is_a_mean_per_predicted_token_and_ties_count_once():
    model = tiny_gpt2(D)
    batches = _lm_batches()
    land = Landscape(model, batches)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert land.objective.dim == sum(p.numel() for p in model.parameters())  # the tied matrix once
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(input_ids=b["input_ids"]).logits[:, :-1]
            labels = b["labels"][:, 1:]
            total += float(
                F.cross_entropy(logits.reshape(-1, 8), labels.reshape(-1), ignore_index=-100, reduction="sum")
            )
            count += int((labels != -100).sum())
    assert land.objective.total_weight == count == 3 * 4 + 2 * 2  # labels shifted by one inside
    # Hugging Face computes its loss in float32 whatever the model's dtype
    assert land.loss() == pytest.approx(total / count, rel=1e-6)


def _dense_lm(model, batches):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    model.eval()

    def f(flat):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
        total, count = 0.0, 0
        for b in batches:
            logits = torch.func.functional_call(model, params, (), {"input_ids": b["input_ids"]}).logits
            labels = b["labels"][:, 1:]
            total = total + F.cross_entropy(
                logits[:, :-1].reshape(-1, 8), labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            count += int((labels != -100).sum())
        return total / count

    return f, flatten_params(model)


def test_causal_lm_hessian_against_a_dense_reference():
    model = tiny_gpt2(D)
    batches = _lm_batches()
    f, x0 = _dense_lm(model, batches)
    hessian = torch.autograd.functional.hessian(f, x0)
    land = Landscape(model, batches)
    v = torch.randn(x0.numel(), dtype=D, generator=torch.Generator().manual_seed(2))
    # Hugging Face's causal-LM loss runs in float32 (it upcasts, or here downcasts, the logits)
    torch.testing.assert_close(land.objective.hvp(x0, v), hessian @ v, rtol=1e-5, atol=1e-6)
    top = float(torch.linalg.eigvalsh(hessian)[-1])
    assert land.top_eigenvalues(tol=1e-6).value == pytest.approx(top, rel=1e-5)


def test_causal_lm_gauss_newton_is_per_token():
    model = tiny_gpt2(D)
    batches = _lm_batches()
    land = Landscape(model, batches)
    x0 = flatten_params(model)
    op = GGNOperator(land.objective, x0)
    e = torch.eye(x0.numel(), dtype=D)[:, :6]
    got = op @ e
    # reference: sum over batches of J^T H J with H the per-token cross-entropy Hessian / count
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    count = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    ref = torch.zeros_like(got)
    model.eval()
    for b in batches:

        def logits_of(flat, b=b):
            params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
            return torch.func.functional_call(model, params, (), {"input_ids": b["input_ids"]}).logits[:, :-1]

        logits = logits_of(x0).detach()
        jac = torch.autograd.functional.jacobian(logits_of, x0).reshape(-1, x0.numel())  # (M * V, n)
        labels = b["labels"][:, 1:].reshape(-1)

        def loss_in_logits(z, labels=labels):
            return F.cross_entropy(z.reshape(-1, 8), labels, ignore_index=-100, reduction="sum") / count

        h = torch.autograd.functional.hessian(loss_in_logits, logits.reshape(-1))
        ref += jac.T @ h @ jac @ e
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


def test_trainer_callback_measures_each_epoch_and_logs_through_the_trainer(tmp_path):
    from sharpminima.integrations.huggingface import SharpnessTrainerCallback

    model = tiny_bert()
    batches = _bert_batches()
    rows = [{k: b[k][i] for k in b} for b in batches for i in range(8)]
    callback = SharpnessTrainerCallback(
        batches[:2], [("keskar_sharpness", {"max_iters": 2})], every_n_epochs=1
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback])
    callback.bind(trainer)
    trainer.train()
    assert [epoch for epoch, _ in callback.history] == [1.0, 2.0]
    logged = [row for row in trainer.state.log_history if "sharpminima/keskar_sharpness.max_iters_2" in row]
    assert len(logged) == 2
    assert (
        logged[-1]["sharpminima/keskar_sharpness.max_iters_2"]
        == callback.history[-1][1]["keskar_sharpness.max_iters_2"].value
    )
