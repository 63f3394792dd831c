"""CDL building blocks on hand-made tensors: prompt selection, matching loss, the attention-based
prompt mapping, the teacher prompt vector and where mapped prompts go, the CDL loss, the
accuracy-matrix summary, and the prompted tiny student."""

import math

import pytest
import torch
import yaml

import tiny
from distill.pipeline.config import ConfigError, load_config
from distill.pipeline.continual.loss import cdl_loss
from distill.pipeline.continual.prompts import MappedPrompts, PromptMapping, PromptPool, prompt_vector
from distill.pipeline.continual.student import ContinualStudent, insert_after_first
from distill.pipeline.continual.trainer import summarize
from distill.pipeline.kinds.classification.methods.base import TeacherBatch


def test_pool_picks_top_k_keys_by_cosine_and_pulls_only_those_keys():
    pool = PromptPool(size=4, length=2, top_k=2, dim=3, key_dim=2)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1., 0.], [0., 2.], [-1., 0.], [3., 4.]]))
        pool.prompts.copy_(torch.arange(24.).reshape(4, 2, 3))
    query = torch.tensor([[2., 0.], [0., 1.]], requires_grad=True)
    chosen = pool.select(query)
    # cosines: row 0 [1, 0, -1, 0.6] -> keys 0, 3; row 1 [0, 1, 0, 0.8] -> keys 1, 3
    torch.testing.assert_close(chosen.similarity, torch.tensor([[1., 0., -1., .6], [0., 1., 0., .8]]))
    assert chosen.indices.tolist() == [[0, 3], [1, 3]]
    # matching loss: mean over rows of sum(1 - cos) = ((0 + 0.4) + (0 + 0.2)) / 2
    assert chosen.match_loss.item() == pytest.approx(0.3)
    prompts, match = pool(query)
    assert prompts.shape == (2, 4, 3)
    torch.testing.assert_close(prompts[0], torch.cat([pool.prompts[0], pool.prompts[3]]))
    torch.testing.assert_close(prompts[1], torch.cat([pool.prompts[1], pool.prompts[3]]))
    match.backward()
    assert query.grad is None                       # the query encoder is frozen
    assert pool.keys.grad[2].abs().sum() == 0       # never selected: not pulled
    assert pool.keys.grad[3].abs().sum() > 0        # selected at cosine < 1: pulled


def test_pool_rejects_top_k_larger_than_the_pool():
    with pytest.raises(ValueError, match="top_k"):
        PromptPool(size=2, length=1, top_k=3, dim=2, key_dim=2)


def test_mapping_weights_components_by_cosine_of_attended_teacher_prompt_and_key():
    mapping = PromptMapping(teacher_dim=2, student_dim=1, components=3, length=2)
    with torch.no_grad():
        mapping.attention.copy_(torch.tensor([[1., 1.], [1., 0.], [2., 0.]]))
        mapping.keys.copy_(torch.tensor([[1., 2.], [0., 1.], [1., 1.]]))
        mapping.prompts.copy_(torch.tensor([[[1.], [2.]], [[10.], [20.]], [[100.], [200.]]]))
    v = torch.tensor([[1., 2.], [0., 1.]])
    # row 0: v*A = [1,2], [1,0], [2,0] -> cos with K = 1, 0, 1/sqrt(2)
    # row 1: v*A = [0,1], [0,0], [0,0] -> 2/sqrt(5), 0, 0
    alpha = torch.tensor([[1., 0., 1 / math.sqrt(2)], [2 / math.sqrt(5), 0., 0.]])
    torch.testing.assert_close(mapping.weights(v), alpha)
    out = mapping(v)
    assert out.shape == (2, 2, 1)
    torch.testing.assert_close(out[0, :, 0], torch.tensor([1 + 100 / math.sqrt(2), 2 + 200 / math.sqrt(2)]))
    torch.testing.assert_close(out[1, :, 0], torch.tensor([2 / math.sqrt(5), 4 / math.sqrt(5)]))


def test_prompt_vector_is_the_mean_of_the_selected_prompts_over_their_positions():
    pool = PromptPool(size=3, length=2, top_k=2, dim=2, key_dim=2)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1., 0.], [0., 1.], [-1., 0.]]))
        pool.prompts.copy_(torch.tensor([[[1., 2.], [3., 4.]], [[10., 20.], [30., 40.]],
                                         [[100., 200.], [300., 400.]]]))
    prompts, _ = pool(torch.tensor([[1., .5], [-1., 0.]]))   # row 0 picks 0, 1; row 1 picks 2, 1
    # CDL v1's v: the k x L selected prompt vectors averaged
    torch.testing.assert_close(prompt_vector(prompts), torch.tensor(
        [[(1 + 3 + 10 + 30) / 4, (2 + 4 + 20 + 40) / 4],
         [(100 + 300 + 10 + 30) / 4, (200 + 400 + 20 + 40) / 4]]))


def _mapped(student_dim: int = 1) -> MappedPrompts:
    """Teachers t (width 2, 2 prompts) and u (width 1, 2 prompts), 1 component each."""
    mapped = MappedPrompts(["t", "u"], [2, 1], student_dim, components=1, length=2)
    with torch.no_grad():
        for m in mapped.maps:
            m.attention.fill_(1.0)
            m.keys.fill_(1.0)
        mapped.maps[0].prompts.copy_(torch.tensor([[[1.], [2.]]]).expand(1, 2, student_dim))
        mapped.maps[1].prompts.copy_(torch.tensor([[[5.], [6.]]]).expand(1, 2, student_dim))
    return mapped


def test_mapped_prompts_one_mapping_per_teacher_side_by_side_missing_rows_masked():
    mapped = _mapped()
    # row 0: t's v = [1, 1] (cos 1), u's v = [-2] (cos -1); row 1: u's vector is missing (NaN)
    vectors = torch.tensor([[1., 1., -2.], [3., 0., float("nan")]])
    prompts, present = mapped(vectors)
    assert mapped.slots == 4 and prompts.shape == (2, 4, 1)
    torch.testing.assert_close(prompts[0, :, 0], torch.tensor([1., 2., -5., -6.]))
    c = 3 / math.sqrt(2) / 3                              # cos([3, 0], [1, 1])
    torch.testing.assert_close(prompts[1, :, 0], torch.tensor([c, 2 * c, 0., 0.]))
    assert present.tolist() == [[True] * 4, [True, True, False, False]]
    with pytest.raises(ValueError, match="width 2 given.*t 2, u 1"):
        mapped(vectors[:, :2])


def test_mapped_prompts_go_after_the_students_own_and_are_saved(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny.classifier(tmp_path / "m"))
    student = ContinualStudent(model, PromptPool(size=4, length=2, top_k=2, dim=32, key_dim=32),
                               _mapped(student_dim=32))
    inputs = tiny.tokenizer()(["cat runs fast", "the big red car"], padding=True, return_tensors="pt")
    vectors = torch.tensor([[1., 1., -2.], [3., 0., float("nan")]])
    seen = {}
    model.register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
    out = student(**inputs, teacher_prompts=vectors)
    own, _ = student.pool(student.query(inputs["input_ids"], inputs["attention_mask"]))
    mapped, present = student.mapped(vectors)
    embeds, mask = seen["inputs_embeds"], seen["attention_mask"]
    # [CLS], 4 own prompt vectors, 4 mapped ones, then the tokens
    torch.testing.assert_close(embeds[:, 1:5], own)
    torch.testing.assert_close(embeds[:, 5:9], mapped)
    torch.testing.assert_close(embeds[:, 9:], model.get_input_embeddings()(inputs["input_ids"][:, 1:]))
    assert mask[:, 1:9].tolist() == [[1] * 8, [1] * 6 + [0, 0]]     # row 1: teacher u missing
    torch.testing.assert_close(out.prompt_vector, own.mean(1))      # its own prompts only
    (out.logits.sum() + out.match_loss).backward()
    assert all(m.prompts.grad.abs().sum() > 0 for m in student.mapped.maps)    # the mapping learns
    assert {id(p) for p in student.mapped.parameters()} <= {id(p) for p in student.parameter_groups()[1]}
    with pytest.raises(ValueError, match="teacher_prompts are given exactly when.*maps: t, u"):
        student(**inputs)

    student.save(tmp_path / "saved", tiny.tokenizer())
    loaded = ContinualStudent.load(tmp_path / "saved").eval()
    assert loaded.mapped_teachers == ["t", "u"] and loaded.mapped.widths == [2, 1]
    student.eval()
    torch.testing.assert_close(loaded(**inputs, teacher_prompts=vectors).logits,
                               student(**inputs, teacher_prompts=vectors).logits)


def test_cdl_loss_uses_only_the_current_classes_and_valid_teacher_rows():
    # 4 student classes, current task = classes 2 and 3, T = 2; row 1's teacher row was skipped.
    teachers = TeacherBatch(logits=torch.tensor([[[9., 9., 2., 0.]], [[0., 0., -50., 50.]]]),
                            covered=torch.ones(1, 4, dtype=torch.bool),
                            valid=torch.tensor([[True], [False]]))
    student = torch.tensor([[5., 5., 0., 1.], [0., 0., 30., -30.]])
    loss, parts = cdl_loss(student, teachers, torch.tensor([2, 3]), temperature=2.0, ce_weight=0.5)
    e = math.e
    p = [e / (e + 1), 1 / (e + 1)]                       # softmax([2, 0] / 2); argmax = class 2
    q = [1 / (1 + math.exp(0.5)), math.exp(0.5) / (1 + math.exp(0.5))]   # softmax([0, 1] / 2)
    ce = math.log(1 + e)                                 # -log softmax([0, 1])[0]
    kl = 4 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert parts["ce"] == pytest.approx(ce, rel=1e-5) and parts["kl"] == pytest.approx(kl, rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * ce + 0.5 * kl, rel=1e-5)
    # a teacher that does not predict the task's classes gives no target at all
    teachers.covered[0, 3] = False
    loss, _ = cdl_loss(student, teachers, torch.tensor([2, 3]), temperature=2.0)
    assert loss.item() == 0.0


def test_summary_average_accuracy_and_forgetting():
    matrix = [[0.9, None, None], [0.7, 0.8, None], [0.5, 0.6, 0.9]]
    summary = summarize(matrix)
    assert summary["average_accuracy"] == pytest.approx((0.5 + 0.6 + 0.9) / 3)
    assert summary["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.6)) / 2)
    assert summarize([[0.8, 0.9]]) == {"average_accuracy": pytest.approx(0.85), "forgetting": None}


def test_prompts_go_right_after_cls():
    embeds = torch.tensor([[[1.], [2.], [3.]]])          # [CLS], a, b
    prompts = torch.tensor([[[7.], [8.]]])
    assert insert_after_first(embeds, prompts)[0, :, 0].tolist() == [1., 7., 8., 2., 3.]
    mask = torch.tensor([[1, 1, 0]])
    assert insert_after_first(mask, torch.ones(1, 2)).tolist() == [[1, 1, 1, 1, 0]]


def test_prompted_student_trains_pool_and_head_only(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny.classifier(tmp_path / "m"))
    student = ContinualStudent(model, PromptPool(size=4, length=2, top_k=2, dim=32, key_dim=32))
    inputs = tiny.tokenizer()(["cat runs fast", "the big red car"], padding=True, return_tensors="pt")
    out = student(**inputs)
    assert out.logits.shape == (2, 4) and out.match_loss.item() > 0
    (out.logits.sum() + out.match_loss).backward()
    body, new = student.parameter_groups()
    assert body == [] and {id(p) for p in new} == {id(model.classifier.weight), id(model.classifier.bias),
                                                   id(student.pool.keys), id(student.pool.prompts)}
    assert student.pool.prompts.grad.abs().sum() > 0 and student.pool.keys.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("classifier"))
    # the prompts change what the classifier reads: without the pool the logits differ
    plain = model(**inputs).logits
    assert not torch.allclose(plain, out.logits)
    student.save(tmp_path / "saved", tiny.tokenizer())
    loaded = ContinualStudent.load(tmp_path / "saved").eval()
    student.eval()
    torch.testing.assert_close(loaded(**inputs).logits, student(**inputs).logits)


def _raw(**changes):
    raw = {"tasks": [{"name": "t1", "corpus": {"path": "t1.jsonl"}, "labels": ["x", "y"]},
                     {"name": "t2", "corpus": {"path": "t2.jsonl"}, "labels": ["z"]}],
           "teachers": [{"name": "a", "model": "m"}]}
    raw.update(changes)
    return raw


@pytest.mark.parametrize("changes, message", [
    ({"tasks": [{"name": "t1", "corpus": {"path": "a"}, "labels": ["x", "y"]},
                {"name": "t2", "corpus": {"path": "b"}, "labels": ["y"]}]},
     r"tasks\[t2\].labels: 'y' is already a label of task 't1'; tasks need disjoint"),
    ({"tasks": [{"name": "t1", "corpus": {"path": "a"}, "labels": ["x"]},
                {"name": "t1", "corpus": {"path": "b"}, "labels": ["y"]}]}, "'t1' is used twice"),
    ({"corpus": {"path": "c.jsonl"}}, "corpus and tasks: give one"),
    ({"continual": {"pool_size": 2, "top_k": 3}}, r"continual.top_k \(3\) exceeds continual.pool_size"),
    ({"student": {"model": "s", "labels": ["x"]}}, "student.labels: leave it out with tasks"),
    ({"continual": {"mapping_length": 0}}, r"continual.mapping_length: Input should be greater"),
])
def test_task_config_errors_name_file_and_key(tmp_path, changes, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw(**changes)))
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_task_lookup_and_task_paths_resolve(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw()))
    config = load_config(path)
    assert config.for_task("t2").corpus.path == str(tmp_path / "t2.jsonl")
    with pytest.raises(ConfigError, match=r"no task named 't3' \(tasks: t1, t2\)"):
        config.task("t3")
