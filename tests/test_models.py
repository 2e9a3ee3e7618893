"""load_model: local directories, the demo, hub failures, and heads that do not fit the task."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel

from conftest import VOCAB, tiny_bert, tiny_bert_token
from fwsvd.io import models
from fwsvd.io.demos import DEMOS
from fwsvd.io.models import load_model
from fwsvd.data.tasks import get_task
from tiny_text import tiny_tokenizer


def _save(model, directory):
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def _tiny_config() -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=64)


def test_local_directory_loads_in_eval_mode(tmp_path):
    original = tiny_bert(num_labels=2)
    model, tokenizer = load_model(_save(original, tmp_path / "m"), get_task("sst2"))
    assert isinstance(model, BertForSequenceClassification) and not model.training
    assert tokenizer.tokenize("Paris") == ["pa", "##ris"]
    batch = tokenizer(["the movie was great"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, original(**batch).logits)


def test_token_classifier_fits_ner(tmp_path):
    model, _ = load_model(_save(tiny_bert_token(num_labels=9), tmp_path / "m"), get_task("conll2003"))
    assert type(model).__name__ == "BertForTokenClassification"


def test_wrong_label_count_is_refused(tmp_path):
    path = _save(tiny_bert(num_labels=3), tmp_path / "m")
    with pytest.raises(ValueError, match=r"BertForSequenceClassification with 3 labels, but task 'sst2'.*needs 2"):
        load_model(path, get_task("sst2"))
    with pytest.raises(ValueError, match="needs 1"):
        load_model(path, get_task("stsb"))
    with pytest.raises(ValueError, match="with 3 labels, but expected 2"):
        load_model(path, num_labels=2)
    assert load_model(path, get_task("mnli"))[0].config.num_labels == 3


def test_base_model_and_lm_head_are_not_classifiers(tmp_path):
    for model, name in ((BertModel(_tiny_config()), "BertModel"), (BertForMaskedLM(_tiny_config()), "BertForMaskedLM")):
        path = _save(model, tmp_path / name)
        with pytest.raises(ValueError, match=f"is a {name}, not a fine-tuned classifier"):
            load_model(path, get_task("sst2"))


def test_head_kind_must_match_the_task(tmp_path):
    sequence = _save(tiny_bert(num_labels=9), tmp_path / "seq")
    with pytest.raises(ValueError, match=r"task 'conll2003' \(token_classification\) needs a \*ForTokenClassification"):
        load_model(sequence, get_task("conll2003"))
    token = _save(tiny_bert_token(num_labels=2), tmp_path / "tok")
    with pytest.raises(ValueError, match=r"needs a \*ForSequenceClassification"):
        load_model(token, get_task("sst2"))


def test_missing_directory_and_file_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_model("./nowhere/model")
    file = tmp_path / "weights.bin"
    file.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        load_model(file)


def test_unreachable_hub_id_names_what_was_tried(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(models.AutoConfig, "from_pretrained", offline)
    with pytest.raises(ValueError, match=r"cannot load model 'textattack/bert-base-SST-2'.*hub.*'demo'"):
        load_model("textattack/bert-base-SST-2", get_task("sst2"))


@pytest.mark.parametrize(("name", "make"), [("sentiment", lambda: tiny_bert(num_labels=2)),
                                             ("ner", lambda: tiny_bert_token(num_labels=21))])
def test_demo_aliases_use_their_demo_build(name, make, tmp_path, monkeypatch):
    demo = DEMOS[name]
    path = _save(make(), tmp_path / name)
    monkeypatch.setitem(DEMOS, name, dataclasses.replace(demo, ensure=lambda: path))
    model, _ = load_model(demo.model, get_task(demo.task))
    assert model.config.num_labels == get_task(demo.task).num_labels
    assert not models.is_compressed_dir(demo.model)


def test_trust_remote_code_is_passed_through_and_off_by_default(tmp_path, monkeypatch):
    path = _save(tiny_bert(num_labels=2), tmp_path / "m")
    seen = []
    original = models.AutoConfig.from_pretrained
    monkeypatch.setattr(models.AutoConfig, "from_pretrained",
                        lambda *a, **k: seen.append(k.get("trust_remote_code")) or original(*a, **k))
    load_model(path)
    assert seen and set(seen) == {False}
    seen.clear()
    load_model(path, trust_remote_code=True)
    assert seen and set(seen) == {True}
