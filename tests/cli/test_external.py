"""``sharpminima measure --model ... --weights ... --data ...``: a network train never made."""

import json
import re
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from sharpminima.cli.app import main
from sharpminima.store import Store

FACTORIES = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    def model():
        return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def wider():
        return nn.Sequential(nn.Linear(5, 9), nn.BatchNorm1d(9), nn.ReLU(), nn.Linear(9, 3))

    def data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(60, 5, generator=g)
        return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=20)

    def tensors():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(60, 5, generator=g)
        return x, torch.randn(60, 3, generator=g)

    def empty():
        return []

    def raises():
        raise RuntimeError("no data today")

    def needs_args(n):
        return n
""")


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture
def external(tmp_path, monkeypatch):
    (tmp_path / "ext_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(3)
    import ext_factories

    net = ext_factories.model()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    return tmp_path, net


def _measure(capsys, tmp_path, weights, *extra):
    return run_cli(
        capsys,
        "measure",
        "--model",
        "ext_factories:model",
        "--weights",
        str(weights),
        "--data",
        "ext_factories:data",
        "--what",
        "keskar_sharpness,hessian_eigenvalues",
        "--max-iters",
        "3",
        "--store",
        str(tmp_path / "store"),
        "--json",
        *extra,
    )


def test_an_external_checkpoint_is_measured_stored_and_listed(capsys, external):
    tmp_path, net = external
    code, out, err = _measure(capsys, tmp_path, tmp_path / "weights.pt")
    assert code == 0, err
    doc = json.loads(out)
    assert {r["kind"] for r in doc["measurements"]} == {"keskar_sharpness", "hessian_eigenvalues"}
    assert not any(r["reused"] for r in doc["measurements"])
    store = Store(tmp_path / "store")
    record = store.get_run(doc["run_id"])
    assert record.kind == "external" and record.status == "done"
    assert record.config["model"] == "ext_factories:model" and len(record.config["weights_sha256"]) == 64
    # the same weights as .safetensors and as a training checkpoint: the same run, nothing redone
    for weights in ("weights.safetensors", "checkpoint.pt"):
        code, out, err = _measure(capsys, tmp_path, tmp_path / weights)
        again = json.loads(out)
        assert (
            code == 0 and again["run_id"] == doc["run_id"] and all(r["reused"] for r in again["measurements"])
        )
    code, out, _ = run_cli(capsys, "runs", "list", "--json", "--store", str(tmp_path / "store"))
    assert [r["kind"] for r in json.loads(out)] == ["external"]
    code, out, _ = run_cli(capsys, "runs", "show", doc["run_id"], "--store", str(tmp_path / "store"))
    assert code == 0 and "keskar_sharpness" in out


def test_a_regression_checkpoint_with_a_named_loss(capsys, external, tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    torch.save(net.state_dict(), tmp_path / "reg.pt")
    code, out, err = run_cli(
        capsys,
        "measure",
        "--model",
        "ext_factories:model",
        "--weights",
        str(tmp_path / "reg.pt"),
        "--data",
        "ext_factories:tensors",
        "--loss",
        "mse",
        "--what",
        "ggn_eigenvalues",
        "--store",
        str(tmp_path / "store"),
        "--json",
    )
    assert code == 0, err
    (row,) = json.loads(out)["measurements"]
    assert row["settings"]["loss"] == "mse" and row["value"] > 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"--model": "ext_factories:wider"},
            r"do not fit the model: .*shape of 0\.(bias|weight) is \(8,.*\) in the file",
        ),
        ({"--model": "no_such_mod_q:model"}, "cannot import model factory 'no_such_mod_q:model'"),
        ({"--model": "ext_factories:data"}, "returned a DataLoader; it must return a torch.nn.Module"),
        ({"--model": "ext_factories:needs_args"}, "cannot be called with 0 argument"),
        ({"--data": "ext_factories:raises"}, "raised RuntimeError: no data today"),
        ({"--data": "ext_factories:empty"}, "yielded no batch"),
        ({"--weights": "missing.pt"}, "does not exist or is not a regular file"),
        ({"--what": "distance_from_init"}, "needs the initial weights"),
        ({"--loss": "mse"}, "evaluating the loss 'mse' on the first batch failed"),
    ],
)
def test_bad_external_input_is_one_line_and_stores_nothing(capsys, external, change, match):
    tmp_path, _ = external
    args = {
        "--model": "ext_factories:model",
        "--weights": str(tmp_path / "weights.pt"),
        "--data": "ext_factories:data",
        "--what": "keskar_sharpness",
    }
    args.update({k: (str(tmp_path / v) if k == "--weights" else v) for k, v in change.items()})
    flat = [item for pair in args.items() for item in pair]
    code, _, err = run_cli(capsys, "measure", *flat, "--store", str(tmp_path / "store"))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(match, err), err
    assert Store(tmp_path / "store").list_runs() == []


def test_a_pickle_with_code_is_refused(capsys, external):
    tmp_path, _ = external

    class Evil:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').write('x')",))

    torch.save({"0.weight": Evil()}, tmp_path / "evil.pt")
    code, _, err = _measure(capsys, tmp_path, tmp_path / "evil.pt")
    assert code == 2 and "weights_only=True" in err and not (tmp_path / "pwned").exists()
