import enum
import pickle

import numpy as np
import pytest
import torch

from yolox_deploy import build_model, load_checkpoint, load_model, save_checkpoint
from yolox_deploy.errors import CheckpointError, InputError, WriteError
from yolox_deploy.nn.checkpoint import identify_variant, read_checkpoint


@pytest.fixture
def nano3(tmp_path):
    torch.manual_seed(0)
    model = build_model("yolox-nano", num_classes=3, class_names=("a", "b", "c"))
    path = save_checkpoint(model, tmp_path / "nano3.pth")
    return model, path


def test_authors_format_and_bare_state_dict_load(tmp_path, nano3):
    model, _ = nano3
    torch.save({"model": model.state_dict(), "start_epoch": 3}, tmp_path / "authors.pth")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    for name in ("authors.pth", "bare.pth", "ddp.pth"):
        other = build_model("yolox-nano", num_classes=3)
        load_checkpoint(other, tmp_path / name)
        for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
            assert torch.equal(a, b), k


def test_our_checkpoint_knows_its_variant_and_labels(nano3):
    _, path = nano3
    model = load_model(path)
    assert model.spec.name == "yolox-nano"
    assert model.class_names == ("a", "b", "c")
    assert not model.training


def test_category_ids_are_saved_loaded_and_dropped_when_they_do_not_fit(tmp_path, nano3, caplog):
    model, _ = nano3
    model.category_ids = (3, 17, 90)
    path = save_checkpoint(model, tmp_path / "ids.pth")
    assert torch.load(path, weights_only=True)["category_ids"] == [3, 17, 90]
    assert load_model(path).category_ids == (3, 17, 90)
    assert load_model(path, class_names=("x", "y", "z")).category_ids == (3, 17, 90)  # renamed, same classes
    fresh = build_model("yolox-nano", num_classes=3)
    load_checkpoint(fresh, path, ignore_class_head=True)  # another label set: the ids are not its own
    assert fresh.category_ids is None
    torch.save({"model": model.state_dict(), "category_ids": [1, 2]}, tmp_path / "short.pth")
    assert load_model(tmp_path / "short.pth").category_ids is None
    assert "2 category ids do not fit its 3-class head" in caplog.text


def test_variant_is_identified_from_shapes(nano3):
    model, _ = nano3
    assert identify_variant(model.state_dict()) == "yolox-nano"


def test_class_count_mismatch_names_both_counts(nano3):
    _, path = nano3
    with pytest.raises(CheckpointError, match="checkpoint has 3 classes, model has 80"):
        load_checkpoint(build_model("yolox-nano"), path)


def test_wrong_variant_is_named(nano3):
    _, path = nano3
    with pytest.raises(CheckpointError, match="checkpoint is for yolox-nano, model is yolox-tiny"):
        load_checkpoint(build_model("yolox-tiny", num_classes=3), path)


def test_a_checkpoint_that_contradicts_itself_says_so(nano3, tmp_path, caplog):
    model, _ = nano3
    torch.save({"model": model.state_dict(), "model_name": "yolox-s"}, tmp_path / "wrong_name.pth")
    with pytest.raises(CheckpointError, match="wrong_name.pth records its model as yolox-s but holds yolox-nano "
                                              "weights; pass --model yolox-nano"):
        load_model(tmp_path / "wrong_name.pth")
    assert load_model(tmp_path / "wrong_name.pth", "nano").spec.name == "yolox-nano"
    torch.save({"model": model.state_dict(), "class_names": ["a", "b"]}, tmp_path / "two_names.pth")
    with caplog.at_level("WARNING"):
        assert load_model(tmp_path / "two_names.pth").class_names is None
    assert "2 class names do not fit its 3-class head" in caplog.text


def test_ignore_class_head_loads_everything_else(nano3):
    model, path = nano3
    target = build_model("yolox-nano", num_classes=80)
    init_cls = target.head.cls_preds[0].weight.clone()
    load_checkpoint(target, path, ignore_class_head=True)
    assert torch.equal(target.head.cls_preds[0].weight, init_cls)
    assert torch.equal(target.head.obj_preds[0].weight, model.head.obj_preds[0].weight)
    assert torch.equal(target.backbone.backbone.stem.conv.conv.weight, model.backbone.backbone.stem.conv.conv.weight)


def test_ignore_class_head_still_rejects_another_variant(nano3):
    _, path = nano3
    with pytest.raises(CheckpointError, match="yolox-nano"):
        load_checkpoint(build_model("yolox-s"), path, ignore_class_head=True)


def test_missing_empty_and_garbage_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a"):
        read_checkpoint(tmp_path / "garbage.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


class _Shell:
    def __reduce__(self):
        import os

        return os.system, ("echo this must never run",)


def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(path)
    torch.save({"model": build_model("yolox-nano", 2).state_dict(), "x": _Shell()}, tmp_path / "shell.pth")
    with pytest.raises(CheckpointError, match="holds Python objects, not only weights"):
        read_checkpoint(tmp_path / "shell.pth")
    assert "this must never run" not in capsys.readouterr().out
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "plain.pkl")
    (tmp_path / "text.pth").write_text("corrupt\n")  # 'c' reads as the GLOBAL opcode: not 'Python objects'
    with pytest.raises(CheckpointError, match="text.pth is not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "text.pth")
    torch.save({"model": {"a": 1}}, tmp_path / "no_tensors.pth")
    with pytest.raises(CheckpointError, match="state dict"):
        read_checkpoint(tmp_path / "no_tensors.pth")


def test_the_authors_trainer_checkpoints_load(tmp_path):
    """Their trainer saves COCOeval's numpy.float64 as best_ap / curr_ap: numbers are rebuilt, while a numpy
    array (or any other object) stays refused."""
    import numpy as np

    sd = build_model("yolox-nano", 2).state_dict()
    torch.save({"start_epoch": 300, "model": sd, "optimizer": {}, "best_ap": np.float64(25.8),
                "curr_ap": np.float32(25.1), "epochs": np.int64(300)}, tmp_path / "best_ckpt.pth")
    ckpt = read_checkpoint(tmp_path / "best_ckpt.pth")
    assert ckpt.extra["best_ap"] == 25.8 and ckpt.extra["epochs"] == 300
    assert load_model(tmp_path / "best_ckpt.pth").num_classes == 2
    torch.save({"model": sd, "table": np.zeros(3)}, tmp_path / "array.pth")
    with pytest.raises(CheckpointError, match="holds Python objects"):
        read_checkpoint(tmp_path / "array.pth")


def test_a_torchscript_archive_is_named_as_such(tmp_path):
    scripted = torch.jit.trace(torch.nn.Conv2d(3, 3, 1), torch.zeros(1, 3, 4, 4))
    scripted.save(str(tmp_path / "ts.pth"))
    with pytest.raises(CheckpointError, match=r"is a TorchScript archive \(torch.jit.save\), not a checkpoint"):
        read_checkpoint(tmp_path / "ts.pth")


def test_a_truncated_checkpoint_is_one_short_sentence(tmp_path):
    save_checkpoint(build_model("yolox-nano", 2), tmp_path / "m.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "m.pth").read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=r"not a readable PyTorch checkpoint \(.*\); the file is damaged or "
                                              r"incomplete$") as e:
        read_checkpoint(tmp_path / "cut.pth")
    assert "miniz" not in str(e.value) and len(str(e.value)) < 250 + len(str(tmp_path))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_identity_batchnorms_stay_identities(tmp_path, dtype):
    """Folded checkpoints store BN as weight 1, mean 0, var 1 - eps'; loading must keep them identities. In a
    half-precision copy 1 - eps' rounds to exactly 1."""
    model = build_model("yolox-nano", num_classes=2).eval()
    sd = model.state_dict()
    for k in sd:
        if k.endswith("bn.running_var"):
            sd[k] = torch.full_like(sd[k], 1 - 1e-5)
        elif k.endswith("bn.running_mean"):
            sd[k] = torch.zeros_like(sd[k])
        elif k.endswith("bn.weight"):
            sd[k] = torch.ones_like(sd[k])
    torch.save({"model": {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}},
               tmp_path / "folded.pth")
    loaded = build_model("yolox-nano", num_classes=2).eval()
    load_checkpoint(loaded, tmp_path / "folded.pth")
    bn = loaded.backbone.backbone.stem.conv.bn
    x = torch.randn(1, bn.num_features, 4, 4)
    torch.testing.assert_close(bn(x), x + bn.bias.view(1, -1, 1, 1), atol=1e-6, rtol=0)
    from yolox_deploy.train.batchnorm import folded_batchnorms

    assert bn in folded_batchnorms(loaded)  # so fine-tuning unfolds it first


def _folded_nano_state_dict():
    model = build_model("yolox-nano", num_classes=2).eval()
    sd = model.state_dict()
    for k in sd:
        if k.endswith("bn.running_var"):
            sd[k] = torch.full_like(sd[k], 1 - 1e-5)
        elif k.endswith("bn.running_mean") or k.endswith("bn.weight"):
            sd[k] = torch.zeros_like(sd[k]) if k.endswith("mean") else torch.ones_like(sd[k])
    return sd


def test_a_folded_model_saves_and_reloads_as_it_runs(tmp_path):
    """The identity was an eps of the module's own: a save lost it (0.03 off after a training step and a
    round trip) and a later load into the same module kept it."""
    torch.save({"model": _folded_nano_state_dict()}, tmp_path / "folded.pth")
    x = torch.rand(1, 3, 64, 64) * 255
    net = load_model(tmp_path / "folded.pth")
    for m in net.modules():  # as a training step's statistics would: the layers are no longer identities
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean += 0.01
    again = load_model(save_checkpoint(net, tmp_path / "stepped.pth"))
    torch.testing.assert_close(again.head_output(x.numpy(), decode=False),
                               net.head_output(x.numpy(), decode=False), atol=0, rtol=0)
    reused = build_model("yolox-nano", num_classes=2).eval()
    load_checkpoint(reused, tmp_path / "folded.pth")
    load_checkpoint(reused, tmp_path / "stepped.pth")
    torch.testing.assert_close(reused.head_output(x.numpy(), decode=False),
                               again.head_output(x.numpy(), decode=False), atol=0, rtol=0)


def test_batchnorms_that_never_saw_data_keep_their_eps(tmp_path):
    path = save_checkpoint(build_model("yolox-nano", num_classes=2), tmp_path / "fresh.pth")  # var 1, mean 0
    assert {m.eps for m in load_model(path).modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}


def test_trained_batchnorms_keep_the_training_eps(tmp_path):
    model = build_model("yolox-nano", num_classes=2).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    path = save_checkpoint(model, tmp_path / "trained.pth")
    loaded = load_model(path)
    assert all(m.eps == 1e-3 for m in loaded.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("extra,message", [
    ({"model_name": 5}, "names its model 5"),
    ({"class_names": "abc"}, "class names that are not a list of strings"),
    ({"class_names": [1, 2, 3]}, "class names that are not a list of strings"),
    ({"input_size": [100, 7]}, "records an input size that is not one"),
    ({"category_ids": [1, 1, 2]}, "category_ids must be distinct"),
    ({"category_ids": "123"}, "category_ids must be a list of integers"),
])
def test_checkpoint_fields_of_the_wrong_kind(tmp_path, nano3, extra, message):
    model, _ = nano3
    torch.save({"model": model.state_dict(), **extra}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path / "odd.pth")


@pytest.mark.parametrize("name", [None, 5, ("yolox-s",)])
def test_a_model_is_named_by_a_string(name):
    with pytest.raises(InputError, match="a model is named by a string"):
        build_model(name)


def test_save_is_atomic(tmp_path, monkeypatch, nano3):
    model, _ = nano3
    target = tmp_path / "sub" / "out.pth"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, target)
    assert list(target.parent.iterdir()) == []


def test_a_failed_write_is_one_message_naming_the_file(tmp_path, monkeypatch, nano3):
    """torch.save reports a full disk as an internal RuntimeError ("[enforce fail at inline_container.cc]")."""
    model, _ = nano3
    target = tmp_path / "store" / "out.pth"
    target.parent.mkdir()
    target.write_bytes(b"previous")

    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 300544 vs 300440")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError, match=f"could not write {target}: the disk may be full .*\\(no part of it "
                                         r"was left\)"):
        save_checkpoint(model, target)
    assert target.read_bytes() == b"previous" and [p.name for p in target.parent.iterdir()] == ["out.pth"]


def test_a_checkpoint_prints_as_a_summary_not_its_tensors(nano3):
    _, path = nano3
    text = repr(read_checkpoint(path))
    assert text.startswith("Checkpoint(model_name='yolox-nano', tensors=") and "num_classes=3" in text
    assert len(text) < 300


def test_a_damaged_checkpoint_of_the_old_format_is_one_sentence(tmp_path, nano3):
    """Files of the pre-1.6 (non-zip) format fail inside torch with struct.error / AssertionError when cut."""
    model, _ = nano3
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": model.state_dict()}, legacy, _use_new_zipfile_serialization=False)
    assert load_model(legacy).num_classes == 3
    data = legacy.read_bytes()
    for cut in (98, 1650, len(data) // 2):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="the file is damaged or incomplete"):
            read_checkpoint(tmp_path / "cut.pth")


def test_tensors_that_are_not_weights_and_stray_counters(tmp_path, nano3):
    model, _ = nano3
    sd = model.state_dict()
    stray = {**sd, "neck.extra.bn.num_batches_tracked": torch.tensor(0)}  # a counter of no layer: no weight
    torch.save({"model": stray}, tmp_path / "stray.pth")
    assert load_model(tmp_path / "stray.pth").num_classes == 3
    key = "backbone.backbone.stem.conv.conv.weight"
    for tensor, kind in ((sd[key].to_sparse(), "is a sparse_coo tensor"),
                         (torch.empty_like(sd[key], device="meta"), "is a tensor on the meta device")):
        torch.save({"model": {**sd, key: tensor}}, tmp_path / "odd.pth")
        with pytest.raises(CheckpointError, match=f"odd.pth: {key} {kind}"):
            load_model(tmp_path / "odd.pth")


def test_a_load_the_shapes_allow_but_torch_refuses_is_one_sentence(nano3, monkeypatch):
    model, path = nano3
    target = build_model("yolox-nano", num_classes=3)

    def refuse(*a, **k):
        raise RuntimeError('Error(s) in loading state_dict for YOLOX:\n\tsize mismatch for "x".')

    monkeypatch.setattr(target, "load_state_dict", refuse)
    with pytest.raises(CheckpointError, match=r'nano3.pth does not load into yolox-nano: size mismatch for "x"'):
        load_checkpoint(target, path)


def test_save_refuses_what_it_could_not_load_back(tmp_path, nano3):
    import collections
    from pathlib import Path

    import numpy as np

    from yolox_deploy.nn.deploy import deploy_model

    model, _ = nano3
    for extra, odd in (({"note": Path("x")}, "PosixPath"), ({"arr": np.zeros(3)}, "ndarray"),
                       ({"nested": {"a": [1, (2, np.float64(3))]}}, "float64"),
                       ({"pair": collections.namedtuple("P", "a b")(1, 2)}, "P"),
                       ({"counts": collections.defaultdict(int, a=1)}, "defaultdict")):
        with pytest.raises(InputError, match=f"cannot save '{next(iter(extra))}' in a checkpoint: it holds a {odd}"):
            save_checkpoint(model, tmp_path / "x.pth", **extra)
    with pytest.raises(InputError, match="this model is fused"):
        save_checkpoint(deploy_model(model), tmp_path / "x.pth")
    assert not list(tmp_path.glob("x.pth*"))
    ok = {"start_epoch": 3, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict(),
          "best_ap": 0.5, "note": None, "shape": torch.Size([1, 2]), "ordered": collections.OrderedDict(a=1)}
    assert set(ok) <= set(read_checkpoint(save_checkpoint(model, tmp_path / "x.pth", **ok)).extra)


def test_a_state_dict_of_other_keys_or_a_scalar_class_head_is_one_message(tmp_path):
    """Checkpoints are untrusted input: int keys raised an AttributeError, a 0-d class head an IndexError."""
    torch.save({0: torch.zeros(3), 1: torch.ones(3)}, tmp_path / "ints.pth")
    torch.save({"model": {"head.cls_preds.0.weight": torch.tensor(1.0)}}, tmp_path / "scalar.pth")
    with pytest.raises(CheckpointError, match="ints.pth does not contain a model state dict"):
        load_model(tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match="cannot tell which YOLOX variant .*scalar.pth is for"):
        load_model(tmp_path / "scalar.pth")
    with pytest.raises(CheckpointError, match="scalar.pth: checkpoint does not fit yolox-nano"):
        load_model(tmp_path / "scalar.pth", "yolox-nano")


class _Stage(enum.IntEnum):  # at module level: torch.save pickles them
    FINETUNE = 2


class _Mode(str, enum.Enum):
    FAST = "fast"


class _Marked(torch.Tensor):
    pass


def test_save_refuses_subclasses_of_plain_types(tmp_path, nano3):
    """An IntEnum passed for an int (a str Enum for a str, a tensor subclass) pickles as its class: the file was
    written (over the one there) and could not be read back."""
    model, path = nano3
    before = path.read_bytes()
    for extra, odd in (({"stage": _Stage.FINETUNE}, "_Stage"), ({"mode": [_Mode.FAST]}, "_Mode"),
                       ({"w": torch.zeros(2).as_subclass(_Marked)}, "_Marked")):
        with pytest.raises(InputError, match=f"cannot save '{next(iter(extra))}' in a checkpoint: it holds a {odd}"):
            save_checkpoint(model, path, **extra)
    assert path.read_bytes() == before
    assert read_checkpoint(save_checkpoint(model, path, w=torch.nn.Parameter(torch.zeros(2)))).extra["w"].shape == (2,)


def test_the_recorded_variant_is_read_in_any_spelling_and_an_unknown_one_is_named(tmp_path, nano3):
    model, _ = nano3
    for recorded in ("nano", "YOLOX_Nano"):
        torch.save({"model": model.state_dict(), "model_name": recorded}, tmp_path / "spelt.pth")
        assert load_model(tmp_path / "spelt.pth").spec.name == "yolox-nano"
        with pytest.raises(CheckpointError, match="checkpoint has 3 classes, model has 20"):  # not "records ... as"
            load_model(tmp_path / "spelt.pth", num_classes=20)
    torch.save({"model": model.state_dict(), "model_name": "yolox-foo"}, tmp_path / "foo.pth")
    with pytest.raises(CheckpointError, match="foo.pth records an unknown model 'yolox-foo'; pass the model name"):
        load_model(tmp_path / "foo.pth")
    assert load_model(tmp_path / "foo.pth", "yolox-nano").num_classes == 3
    for n in ("3", 2.0, True, 0):
        with pytest.raises(InputError, match="the number of classes must be an integer >= 1"):
            load_model(tmp_path / "foo.pth", "yolox-nano", num_classes=n)


def test_head_output_runs_in_eval_mode_and_leaves_the_mode_as_it_was():
    """In training mode it gave raw training outputs for decode=True and moved the BatchNorm statistics."""
    model = build_model("yolox-nano", num_classes=2).eval()
    x = (np.random.default_rng(0).random((1, 3, 64, 64)) * 255).astype(np.float32)
    before = model.head_output(x, decode=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    np.testing.assert_array_equal(model.head_output(x[:, :, :, ::-1], decode=True),  # a negative-stride view too
                                  model.eval().head_output(np.ascontiguousarray(x[:, :, :, ::-1]), decode=True))
    model.train()
    np.testing.assert_array_equal(model.head_output(x, decode=True), before)
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_checkpoint_messages_name_the_file_and_what_it_is(tmp_path, nano_onnx):
    """Mismatches named no file; a torch.compile checkpoint could not be told apart; an ONNX file was
    "unreadable pickle data"; reserved keys made a file that contradicted itself; a string became names."""
    model = build_model("yolox-nano", num_classes=3)
    path = save_checkpoint(model, tmp_path / "n3.pth")
    with pytest.raises(CheckpointError, match=f"{path}: checkpoint has 3 classes, model has 80"):
        load_checkpoint(build_model("yolox-nano"), path)
    compiled = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": {"module." + k: v for k, v in compiled.items()}}, tmp_path / "compiled.pth")
    assert load_model(tmp_path / "compiled.pth").spec.name == "yolox-nano"
    import shutil

    shutil.copy(nano_onnx, tmp_path / "really_onnx.pth")
    for p in (nano_onnx, tmp_path / "really_onnx.pth"):
        with pytest.raises(CheckpointError, match="is an ONNX model, not a PyTorch checkpoint: run it as it is"):
            read_checkpoint(p)
    with pytest.raises(InputError, match="save_checkpoint writes model_name from the model"):
        save_checkpoint(model, tmp_path / "x.pth", model_name="yolox-s")
    with pytest.raises(InputError, match="class names are a list of names, not the string 'abc'"):
        build_model("yolox-nano", 3, class_names="abc")
    with pytest.raises(InputError, match="input 64x100 is not a multiple of 32"):
        model.head_output(np.zeros((1, 3, 64, 100), np.float32), decode=False)


def test_weights_held_under_ema_load(tmp_path):
    model = build_model("yolox-nano", num_classes=3)
    torch.save({"ema": model.state_dict(), "epoch": 3}, tmp_path / "ema.pth")
    loaded = load_model(tmp_path / "ema.pth")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_a_key_extra_or_missing_is_named(tmp_path):
    """One key more or less made it "cannot tell which YOLOX variant", not which key differs."""
    sd = build_model("yolox-nano", num_classes=3).state_dict()
    extra = dict(sd, **{"foo.bar": torch.zeros(1)})
    missing = {k: v for k, v in sd.items() if k != "head.obj_preds.0.bias"}
    for name, state, what in (("extra", extra, r"1 unexpected keys \(e.g. foo.bar\)"),
                              ("missing", missing, r"1 missing keys \(e.g. head.obj_preds.0.bias\)")):
        torch.save({"model": state}, tmp_path / f"{name}.pth")
        with pytest.raises(CheckpointError, match=f"{name}.pth: checkpoint does not fit yolox-nano: .*{what}"):
            load_model(tmp_path / f"{name}.pth")
    torch.save({"model": {"conv.weight": torch.zeros(3, 3, 1, 1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="cannot tell which YOLOX variant"):
        load_model(tmp_path / "other.pth")


def test_identity_batchnorms_stay_identities_in_a_model_already_in_half_precision(tmp_path):
    """The file decides: a full-precision folded checkpoint copied into a half-precision model rounds 1 - eps' to
    exactly 1 on the way in, and must still load as identities (it scaled every layer by 1/sqrt(1.001))."""
    torch.save({"model": _folded_nano_state_dict()}, tmp_path / "folded.pth")
    model = build_model("yolox-nano", num_classes=2).half().eval()
    load_checkpoint(model, tmp_path / "folded.pth")
    reference = load_model(tmp_path / "folded.pth").half()
    for got, want in zip(model.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_class_names_given_to_load_model_win_over_the_checkpoints(tmp_path):
    path = save_checkpoint(build_model("yolox-nano", 2, class_names=("cat", "dog")), tmp_path / "named.pth")
    assert load_model(path).class_names == ("cat", "dog")
    assert load_model(path, class_names=("kitty", "puppy")).class_names == ("kitty", "puppy")


def test_a_checkpoint_whose_bytes_changed_after_it_was_written_is_refused(tmp_path):
    """torch.load does not check the records' CRC-32: a flipped byte in a tensor loaded as a wrong weight."""
    sd = build_model("yolox-nano", num_classes=2).state_dict()
    sd["head.cls_preds.0.bias"] = torch.full_like(sd["head.cls_preds.0.bias"], 1234.5)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd}, path)
    data = bytearray(path.read_bytes())
    at = bytes(data).index(torch.full((2,), 1234.5).numpy().tobytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged: its record .* does not match its CRC-32"):
        load_model(path)


def test_a_checkpoint_whose_zip_headers_changed_is_refused(tmp_path):
    """torch's reader passes over a changed record name (read by zipfile as no UTF-8: a traceback) and reads a
    record its directory marks a folder as empty (the tensor held whatever memory did: accepted, wrong)."""
    import zipfile

    sd = build_model("yolox-nano", num_classes=2).state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd}, path)
    original = path.read_bytes()
    record = next(i for i in zipfile.ZipFile(path).infolist() if i.filename.endswith("/data/0"))
    entry = original.rindex(record.filename.encode()) - 46  # its directory entry
    assert original[entry:entry + 4] == b"PK\x01\x02"
    for at, bit in ((record.header_offset + 30 + 1, 0x80), (entry + 38, 0x10)):  # a name byte, the folder attribute
        data = bytearray(original)
        data[at] ^= bit
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match="is damaged: its record .*data/0 (does not match|is marked as a)"):
            load_model(path)


def test_records_written_without_a_crc_still_load(tmp_path):
    sd = build_model("yolox-nano", num_classes=2).state_dict()
    set_crc = getattr(torch.serialization, "set_crc32_options", None)
    if set_crc is None:
        pytest.skip("this torch always writes CRC-32")
    set_crc(False)
    try:
        torch.save({"model": sd}, tmp_path / "nocrc.pth")
    finally:
        set_crc(True)
    assert load_model(tmp_path / "nocrc.pth").num_classes == 2


def test_a_fused_model_takes_no_checkpoint(tmp_path):
    path = save_checkpoint(build_model("yolox-nano", 2), tmp_path / "n.pth")
    with pytest.raises(InputError, match="this model is fused .*load the checkpoint before fusing it"):
        load_checkpoint(build_model("yolox-nano", 2).eval().fuse(), path)
